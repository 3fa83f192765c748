"""Register your own COCO-panoptic folder as Detectron2 datasets, from Python or a spec string.

A COCO-panoptic folder (images, panoptic PNGs, a panoptic JSON with its own categories: any
number, any ids) is all Panoptic FPN needs. :func:`register_panoptic_dataset` registers

* ``NAME``: "standard" panoptic dicts (``pan_seg_file_name`` + ``segments_info``);
* ``NAME_separated``: Panoptic FPN dicts (instance ``annotations`` + ``sem_seg_file_name``),
  the one to train and evaluate on; its instance JSON and stuff PNGs are derived (see
  :mod:`.derive`).

Registration reads only the JSON's ``categories`` (cached by the JSON's size and mtime), so
class lists and id maps are in ``MetadataCatalog`` at once; files are derived on first
``DatasetCatalog.get`` (or with ``prepare=True``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ...formats import PanopticFormatError
from ..builtin import unregister_dataset
from ..metadata import panoptic_separated_metadata, panoptic_standard_metadata
from .categories import read_categories
from .derive import cache_folder, prepare_panoptic_dataset
from .folder import (
    FOLDER_SPEC,
    NO_THING_CLASS,
    PanopticFolder,
    load_folder_json,
    remember_folder,
)

__all__ = [
    "load_separated_dicts",
    "load_standard_dicts",
    "parse_folder_spec",
    "register_panoptic_dataset",
    "register_panoptic_folders",
]

logger = logging.getLogger(__name__)


def load_standard_dicts(folder: PanopticFolder) -> list[dict]:
    """A folder's standard panoptic dicts straight from its JSON (no derived file needed)."""
    data = load_folder_json(folder.panoptic_json, folder.name)
    meta = panoptic_standard_metadata(folder.categories)
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    images = {img.get("id"): img for img in data.get("images", []) if isinstance(img, dict)}
    dicts = []
    for ann in data["annotations"]:
        image_id = ann.get("image_id")
        img = images.get(image_id, {})
        stem = os.path.splitext(ann["file_name"])[0]
        segments = []
        for seg in ann["segments_info"]:
            seg = dict(seg)
            cid = seg.get("category_id")
            if cid not in thing_map and cid not in stuff_map:
                raise PanopticFormatError(
                    f"{folder.panoptic_json}: image {image_id} segment {seg.get('id')} has "
                    f"category_id {cid}, which is not in 'categories'"
                )
            seg["isthing"] = cid in thing_map
            seg["category_id"] = thing_map[cid] if seg["isthing"] else stuff_map[cid]
            segments.append(seg)
        d = {
            "file_name": os.path.join(folder.image_root, img.get("file_name", stem + ".jpg")),
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(folder.panoptic_root, ann["file_name"]),
            "segments_info": segments,
        }
        if "height" in img and "width" in img:
            d["height"], d["width"] = int(img["height"]), int(img["width"])
        dicts.append(d)
    return dicts


def load_separated_dicts(folder: PanopticFolder) -> list[dict]:
    """A folder's Panoptic FPN dicts from its derived files (derived first if missing or
    stale)."""
    prepare_panoptic_dataset(folder.name)
    with open(folder.instances_json) as f:
        data = json.load(f)
    thing_map = {c["id"]: i for i, c in enumerate(folder.things)}
    by_image: dict[Any, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append({
            "iscrowd": ann["iscrowd"],
            "bbox": ann["bbox"],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": thing_map[ann["category_id"]],
            "segmentation": ann["segmentation"],
        })
    dicts = []
    for img in data["images"]:
        stem = os.path.splitext(img["panoptic_file_name"])[0]
        dicts.append({
            "file_name": os.path.join(folder.image_root, img["file_name"]),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "annotations": by_image.get(img["id"], []),
            "sem_seg_file_name": os.path.join(folder.sem_seg_root, stem + ".png"),
        })
    return dicts


def register_panoptic_dataset(
    name: str,
    image_root: str | os.PathLike,
    panoptic_json: str | os.PathLike,
    panoptic_root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    prepare: bool = False,
) -> list[str]:
    """Register a COCO-panoptic folder as ``name`` (standard) and ``name + "_separated"``.

    Only the JSON's categories are read now, so metadata is complete at once; the instance
    JSON and stuff PNGs are derived on first load (or now with ``prepare=True``) and cached
    (see :mod:`.derive`; ``cache_dir`` forces the cache there). Re-registering a name
    replaces it. A stuff-only folder gives a separated dataset without thing categories (its
    instance JSON has no annotations; ``thing_classes`` is one placeholder, ``NO_THING_CLASS``,
    matching the ROI heads' one-class minimum); a things-only one has just the "things" stuff
    class.
    Returns the registered names.
    """
    if not name or ":" in name or name.endswith("_separated"):
        raise ValueError(
            f"dataset name {name!r} must be non-empty, without ':' and not end in '_separated' "
            "(that suffix is added for the Panoptic FPN version)"
        )
    image_root, panoptic_json, panoptic_root = (
        os.path.abspath(os.fspath(p)) for p in (image_root, panoptic_json, panoptic_root)
    )
    for path, part in ((image_root, "IMAGE_ROOT"), (panoptic_root, "PANOPTIC_ROOT")):
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"Dataset '{name}': folder {path} does not exist; check the {part} part of "
                f"{FOLDER_SPEC}"
            )
    if not os.path.isfile(panoptic_json):
        raise FileNotFoundError(
            f"Dataset '{name}': panoptic JSON {panoptic_json} does not exist; check the "
            f"PANOPTIC_JSON part of {FOLDER_SPEC}"
        )
    cache = cache_folder(panoptic_json, panoptic_root, cache_dir)
    cats = read_categories(panoptic_json, cache, name)
    folder = PanopticFolder(name, image_root, panoptic_json, panoptic_root, cache, cats)
    separated = f"{name}_separated"
    for n in (name, separated):
        unregister_dataset(n)
        remember_folder(n, folder)

    common = {"image_root": image_root, "panoptic_root": panoptic_root,
              "panoptic_json": panoptic_json, "evaluator_type": "coco_panoptic_seg",
              "ignore_label": 255}
    DatasetCatalog.register(name, functools.partial(load_standard_dicts, folder))
    MetadataCatalog.get(name).set(label_divisor=1000, **common,
                                  **panoptic_standard_metadata(cats))
    DatasetCatalog.register(separated, functools.partial(load_separated_dicts, folder))
    sep_meta = panoptic_separated_metadata(cats)
    sep_meta["sem_seg_root"] = folder.sem_seg_root
    sep_meta["mask_format"] = "bitmask"  # the derived instance masks are RLE
    if folder.things:
        sep_meta["json_file"] = folder.instances_json
    else:
        # No thing class: one placeholder, like the ROI heads' minimum of one class (Detectron2's
        # loaders divide by the class count); no dataset id maps to it, so no annotation or
        # prediction uses it. No json_file: COCOEvaluator (box/mask AP) needs a category.
        sep_meta["thing_classes"] = [NO_THING_CLASS]
        sep_meta["thing_colors"] = [[0, 0, 0]]
    MetadataCatalog.get(separated).set(**common, **sep_meta)
    logger.info("Registered %s and %s: %d thing, %d stuff classes; derived files in %s",
                name, separated, len(folder.things), len(folder.stuff), cache)
    if prepare:
        prepare_panoptic_dataset(name)
    return [name, separated]


def parse_folder_spec(spec: str) -> tuple[str, str, str, str]:
    """``NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT`` -> its four parts (paths without ':')."""
    parts = spec.split(":")
    if len(parts) != 4 or not all(p.strip() for p in parts):
        raise ValueError(
            f"dataset spec {spec!r} must be {FOLDER_SPEC} (four non-empty parts separated by "
            f"':', got {len(parts)}), e.g. mine_train:data/train:data/panoptic_train.json:"
            "data/panoptic_train"
        )
    name, image_root, panoptic_json, panoptic_root = (p.strip() for p in parts)
    return name, image_root, panoptic_json, panoptic_root


def register_panoptic_folders(specs: Sequence[str], cache_dir: str | os.PathLike | None = None
                              ) -> list[str]:
    """Register every ``NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT`` spec; returns all names."""
    names: list[str] = []
    for spec in specs:
        name, image_root, panoptic_json, panoptic_root = parse_folder_spec(spec)
        names += register_panoptic_dataset(name, image_root, panoptic_json, panoptic_root,
                                           cache_dir=cache_dir)
    return names
