"""Your own COCO-panoptic folder as a Detectron2 dataset, in one call or one command-line flag.

A COCO-panoptic folder (images, panoptic PNGs, a panoptic JSON with its own categories: any
number, any ids) is all Panoptic FPN needs, but Detectron2's "separated" datasets also want a
COCO instances JSON and single-channel stuff PNGs. :func:`register_panoptic_dataset` derives
both from the panoptic PNGs and registers

* ``NAME``: "standard" panoptic dicts (``pan_seg_file_name`` + ``segments_info``);
* ``NAME_separated``: Panoptic FPN dicts (instance ``annotations`` + ``sem_seg_file_name``),
  the one to train and evaluate on.

Registration reads only the JSON's ``categories`` (cached by the JSON's size and mtime), so
class lists and id maps are in ``MetadataCatalog`` at once. The instance JSON and stuff PNGs are
derived on first ``DatasetCatalog.get`` (or with ``prepare=True``) into a cache folder: next
to the data (``<panoptic_root>_panoptic_ext/<json stem>/``) when that is writable, else under
``cache_dir`` (default ``$XDG_CACHE_HOME/panoptic_ext/datasets``, i.e.
``~/.cache/panoptic_ext/datasets``), one sub-folder per dataset. A stamp of the sources (JSON
size/mtime, PNG names/sizes/mtimes) decides when to rebuild; a file lock keeps concurrent
processes (DDP ranks) from deriving twice.

Command line (``tools/train_net.py --dataset NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT``) and
config (``DATASETS.PANOPTIC_FOLDERS``) go through :func:`configure_panoptic_folders`, which
also sizes both heads from the categories.
"""

from __future__ import annotations

import colorsys
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from .coco_prep import PanopticFormatError, convert_panoptic_to_semantic, rgb_to_id
from .datasets import panoptic_separated_metadata, panoptic_standard_metadata

__all__ = [
    "FOLDER_SPEC",
    "NO_THING_CLASS",
    "PanopticFolder",
    "configure_panoptic_folders",
    "default_dataset_cache_dir",
    "get_panoptic_folder",
    "parse_folder_spec",
    "prepare_cfg_folders",
    "prepare_panoptic_dataset",
    "register_panoptic_dataset",
    "register_panoptic_folders",
]

logger = logging.getLogger(__name__)

FOLDER_SPEC = "NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT"
NO_THING_CLASS = "(no thing class)"  # thing_classes of a stuff-only separated dataset
FORMAT_VERSION = 1  # bump when the derived files change, so old caches are rebuilt
_MAX_STUFF = 254  # stuff PNG labels 1..K in uint8, 0 = things, 255 = void
_MAX_REPORT = 10
_MIN_IMAGES_FOR_POOL = 64
_ROI_KEY = "MODEL.ROI_HEADS.NUM_CLASSES"
_SEM_KEY = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
_SCORE_KEY = "MODEL.ROI_HEADS.SCORE_THRESH_TEST"

_FOLDERS: dict[str, PanopticFolder] = {}  # registered name (both styles) -> its folder


@dataclass(frozen=True)
class PanopticFolder:
    """One registered COCO-panoptic folder: its sources, its cache and its categories."""

    name: str
    image_root: str
    panoptic_json: str
    panoptic_root: str
    cache: str
    categories: tuple[dict[str, Any], ...]  # normalized, sorted by id

    @property
    def instances_json(self) -> str:
        return os.path.join(self.cache, "instances.json")

    @property
    def sem_seg_root(self) -> str:
        return os.path.join(self.cache, "panoptic_stuff")

    @property
    def things(self) -> list[dict[str, Any]]:
        return [c for c in self.categories if c["isthing"]]

    @property
    def stuff(self) -> list[dict[str, Any]]:
        return [c for c in self.categories if not c["isthing"]]


# ----------------------------------------------------------------------------- small helpers


def default_dataset_cache_dir() -> Path:
    """Per-user cache for derived files of read-only dataset folders (XDG, like validation)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "panoptic_ext" / "datasets"


def _write_json_atomic(path: str, data: Any) -> None:
    """Temp file + rename: a reader (another rank) never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path), suffix=".tmp",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_json_or_none(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load_panoptic_json(path: str, name: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Dataset '{name}': panoptic JSON {path} does not exist; check the PANOPTIC_JSON "
            f"part of {FOLDER_SPEC}"
        ) from None
    except ValueError as exc:
        raise PanopticFormatError(f"{path}: not valid JSON ({exc}); re-export it") from exc
    if not isinstance(data, dict):
        raise PanopticFormatError(f"{path}: top level is not an object; not a COCO panoptic JSON")
    for key in ("annotations", "categories"):
        if key not in data:
            raise PanopticFormatError(f"{path}: missing '{key}'; is it a COCO panoptic JSON?")
    return data


def _color_for(cat_id: int) -> list[int]:
    """Stable, well-spread colour for a category without one (golden-ratio hue steps)."""
    h = (cat_id * 0.618033988749895) % 1.0
    s = 0.55 + 0.4 * ((zlib.crc32(str(cat_id).encode()) % 100) / 100)
    return [int(round(255 * v)) for v in colorsys.hsv_to_rgb(h, s, 0.9)]


def _normalize_categories(raw: Any, json_path: str) -> tuple[dict[str, Any], ...]:
    """Checked copy of the JSON's categories, sorted by id, each with id/name/isthing/color."""
    if not isinstance(raw, list) or not raw:
        raise PanopticFormatError(
            f"{json_path}: 'categories' must be a non-empty list of "
            "{'id', 'name', 'isthing'[, 'color']} objects"
        )
    cats: list[dict[str, Any]] = []
    ids: dict[int, str] = {}
    names: dict[str, int] = {}
    for i, c in enumerate(raw):
        where = f"{json_path}: categories[{i}] ({c!r:.80})"
        if not isinstance(c, dict) or not {"id", "name", "isthing"} <= set(c):
            raise PanopticFormatError(f"{where} needs 'id', 'name' and 'isthing'")
        if isinstance(c["id"], bool) or not isinstance(c["id"], int) or c["id"] <= 0:
            raise PanopticFormatError(
                f"{where}: id must be a positive integer (0 means void / the merged 'things' "
                "class); renumber it"
            )
        if not isinstance(c["name"], str) or not c["name"].strip():
            raise PanopticFormatError(f"{where}: name must be a non-empty string")
        if c["isthing"] not in (0, 1, True, False):
            raise PanopticFormatError(f"{where}: isthing must be 0 or 1, got {c['isthing']!r}")
        cid, name = int(c["id"]), c["name"]
        if cid in ids:
            raise PanopticFormatError(
                f"{json_path}: category id {cid} is used by both '{ids[cid]}' and '{name}'; "
                "give each category its own id"
            )
        if name in names:
            raise PanopticFormatError(
                f"{json_path}: category name '{name}' is used by ids {names[name]} and {cid}; "
                "names must be unique (per-class metrics are keyed by name)"
            )
        ids[cid], names[name] = name, cid
        color = c.get("color")
        if not (isinstance(color, list | tuple) and len(color) == 3):
            color = _color_for(cid)
        cat = {"id": cid, "name": name, "isthing": int(bool(c["isthing"])),
               "color": [int(v) for v in color]}
        if "supercategory" in c:
            cat["supercategory"] = c["supercategory"]
        cats.append(cat)
    n_stuff = sum(1 for c in cats if not c["isthing"])
    if n_stuff > _MAX_STUFF:
        raise PanopticFormatError(
            f"{json_path}: {n_stuff} stuff categories; at most {_MAX_STUFF} fit the uint8 stuff "
            "PNGs Panoptic FPN trains on"
        )
    return tuple(sorted(cats, key=lambda c: c["id"]))


def _cache_folder(panoptic_json: str, panoptic_root: str, cache_dir: str | os.PathLike | None
                  ) -> str:
    """Where derived files go: next to the data if writable (or ``cache_dir`` when given)."""
    stem = os.path.splitext(os.path.basename(panoptic_json))[0]
    candidates = []
    if cache_dir is None:
        candidates.append(os.path.join(f"{os.path.normpath(panoptic_root)}_panoptic_ext", stem))
    digest = hashlib.sha1(f"{panoptic_json}\0{panoptic_root}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:40]
    base = default_dataset_cache_dir() if cache_dir is None else Path(cache_dir)
    candidates.append(os.path.join(os.path.abspath(base), f"{readable}-{digest}"))
    errors = []
    for folder in candidates:
        try:
            # Created now (empty): the folder must exist for checks that run before loading.
            os.makedirs(os.path.join(folder, "panoptic_stuff"), exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
            errors.append(f"{folder} (not writable)")
        except OSError as exc:
            errors.append(f"{folder} ({exc.strerror or exc})")
    raise PermissionError(
        f"No writable folder for the files derived from {panoptic_json}: tried "
        f"{'; '.join(errors)}. Pass cache_dir=... (Python) or set XDG_CACHE_HOME to a writable "
        "folder."
    )


def _read_categories(panoptic_json: str, cache: str, name: str) -> tuple[dict[str, Any], ...]:
    """The JSON's categories; cached by the JSON's size and mtime so big JSONs parse once."""
    try:
        st = os.stat(panoptic_json)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Dataset '{name}': panoptic JSON {panoptic_json} does not exist; check the "
            f"PANOPTIC_JSON part of {FOLDER_SPEC}"
        ) from None
    source = [st.st_size, st.st_mtime_ns]
    cache_file = os.path.join(cache, "categories.json")
    cached = _read_json_or_none(cache_file)
    if isinstance(cached, dict) and cached.get("source") == source:
        raw = cached.get("categories")
    else:
        raw = _load_panoptic_json(panoptic_json, name)["categories"]
    cats = _normalize_categories(raw, panoptic_json)
    if not (isinstance(cached, dict) and cached.get("source") == source):
        try:
            _write_json_atomic(cache_file, {"source": source, "categories": list(cats)})
        except OSError as exc:  # only a speed-up
            logger.warning("Could not cache categories in %s (%s)", cache_file, exc)
    return cats


@contextlib.contextmanager
def _locked(folder: str) -> Iterator[None]:
    """Exclusive lock on the cache folder, so concurrent ranks derive once, one after another."""
    with open(os.path.join(folder, ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _source_stamp(folder: PanopticFolder) -> dict[str, Any]:
    """What the derived files depend on: JSON size/mtime, PNG names, sizes and mtimes."""
    st = os.stat(folder.panoptic_json)
    digest = hashlib.sha1()
    count = 0
    try:
        entries = sorted(
            (e.name, e.stat().st_size, e.stat().st_mtime_ns)
            for e in os.scandir(folder.panoptic_root)
            if e.name.lower().endswith(".png")
        )
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Dataset '{folder.name}': panoptic PNG folder {folder.panoptic_root} does not "
            f"exist; check the PANOPTIC_ROOT part of {FOLDER_SPEC}"
        ) from None
    for name, size, mtime in entries:
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
        count += 1
    return {
        "version": FORMAT_VERSION,
        "panoptic_json": [folder.panoptic_json, st.st_size, st.st_mtime_ns],
        "panoptic_root": folder.panoptic_root,
        "pngs": count,
        "png_digest": digest.hexdigest(),
    }


# ----------------------------------------------------------------------------- derivation


def _instances_of_image(task: tuple) -> dict[str, Any]:
    """Worker: one panoptic PNG -> its thing annotations (RLE, box, area) and its problems."""
    png, image_id, json_name, expected_hw, segments, names = task
    problems: list[str] = []
    out: dict[str, Any] = {"image_id": image_id, "annotations": [], "problems": problems}
    where = f"{png} (image {image_id})"
    if not os.path.isfile(png):
        problems.append(f"{where}: panoptic PNG listed in {json_name} is missing; add it or "
                        "drop the image's entry from the JSON")
        return out
    try:
        with Image.open(png) as img:
            img.load()
            mode, arr = img.mode, np.asarray(img)
    except Exception as exc:  # PIL raises many unrelated types for corrupt files
        problems.append(f"{where}: cannot read panoptic PNG ({exc}); re-export it")
        return out
    if mode != "RGB" or arr.ndim != 3 or arr.shape[2] != 3:
        problems.append(f"{where}: panoptic PNG must be RGB (id = R + 256 G + 256^2 B), got mode "
                        f"{mode}; re-export it as RGB")
        return out
    ids = rgb_to_id(arr)
    h, w = ids.shape
    out["height"], out["width"] = h, w
    if expected_hw is not None and tuple(expected_hw) != (h, w):
        problems.append(f"{where}: PNG is {w}x{h} (WxH) but {json_name} says "
                        f"{expected_hw[1]}x{expected_hw[0]}; fix the JSON's images entry")
    present = {int(v) for v in np.unique(ids)}
    listed = {sid for sid, _, _, _ in segments}
    for sid, cid, _, _ in segments:
        if sid not in present:
            problems.append(
                f"{where}: segment {sid} (category {cid} '{names.get(cid, '?')}') is listed in "
                f"{json_name} but has no pixels in the PNG; remove it from the image's "
                "segments_info or re-export the PNG"
            )
    extra = sorted(present - listed - {0})
    if extra:
        problems.append(
            f"{where}: segment id(s) {extra[:10]} are in the PNG but not in {json_name}'s "
            "segments_info for this image; list them with their category or paint them 0 (void)"
        )
    things = [(sid, cid, crowd) for sid, cid, crowd, isthing in segments
              if isthing and sid in present]
    if things:
        masks = np.stack([ids == sid for sid, _, _ in things], axis=-1)
        rles = mask_util.encode(np.asfortranarray(masks.astype(np.uint8)))
        boxes = mask_util.toBbox(rles)
        areas = mask_util.area(rles)
        for (_, cid, crowd), rle, box, area in zip(things, rles, boxes, areas, strict=True):
            out["annotations"].append({
                "image_id": image_id,
                "category_id": cid,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(area),
                "bbox": [float(v) for v in box],
                "iscrowd": crowd,
            })
    return out


def _plan_images(folder: PanopticFolder, data: dict[str, Any]
                 ) -> tuple[list[tuple], dict[Any, dict], list[str]]:
    """Per-image tasks for the worker, the JSON's image entries, and JSON-level problems."""
    json_name = folder.panoptic_json
    names = {c["id"]: c["name"] for c in folder.categories}
    isthing = {c["id"]: bool(c["isthing"]) for c in folder.categories}
    images = {img.get("id"): img for img in data.get("images", []) if isinstance(img, dict)}
    tasks, problems = [], []
    seen_files: set[str] = set()
    for ann in data["annotations"]:
        image_id = ann.get("image_id")
        file_name = ann.get("file_name")
        if file_name is None or not isinstance(ann.get("segments_info"), list):
            problems.append(f"{json_name}: annotation of image {image_id} lacks 'file_name' or "
                            "'segments_info'")
            continue
        if file_name in seen_files:
            problems.append(f"{json_name}: PNG {file_name} is used by two annotations")
            continue
        seen_files.add(file_name)
        img = images.get(image_id)
        if img is None or "file_name" not in img:
            problems.append(f"{json_name}: image {image_id} ({file_name}) has an annotation but "
                            "no entry with a file_name in 'images'; add {'id', 'file_name', "
                            "'height', 'width'}")
            continue
        segments, sids = [], set()
        for seg in ann["segments_info"]:
            sid, cid = seg.get("id"), seg.get("category_id")
            where = f"{json_name}: image {image_id} ({file_name}) segment {sid}"
            if not isinstance(sid, int) or sid <= 0:
                problems.append(f"{where}: segment id must be a positive integer (0 is void)")
                continue
            if sid in sids:
                problems.append(f"{where} is listed twice; give each segment its own id")
                continue
            sids.add(sid)
            if cid not in names:
                problems.append(f"{where} has category_id {cid}, which is not in 'categories' "
                                f"(known: {sorted(names)}); fix the segment or add the category")
                continue
            segments.append((sid, cid, int(seg.get("iscrowd", 0)), isthing[cid]))
        hw = (int(img["height"]), int(img["width"])) if "height" in img and "width" in img else None
        png = os.path.join(folder.panoptic_root, file_name)
        tasks.append((png, image_id, os.path.basename(json_name), hw, segments, names))
    return tasks, images, problems


def _sorted_by_id(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By image id like Detectron2's COCO loader (reproducible order); as given if ids mix types."""
    try:
        return sorted(images, key=lambda i: i["id"])
    except TypeError:
        return images


def _derive_instances(folder: PanopticFolder, data: dict[str, Any], workers: int | None,
                      progress: bool) -> dict[str, Any]:
    """COCO instances JSON (things only) from the panoptic PNGs; raises naming bad files."""
    tasks, images, problems = _plan_images(folder, data)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    bar = tqdm(total=len(tasks), desc=f"{folder.name}: instances", unit="img",
               disable=not progress)
    results = []
    with bar:
        if workers == 1 or len(tasks) < _MIN_IMAGES_FOR_POOL:
            for t in tasks:
                results.append(_instances_of_image(t))
                bar.update()
        else:
            with multiprocessing.Pool(min(workers, len(tasks))) as pool:
                for r in pool.imap(_instances_of_image, tasks, chunksize=16):
                    results.append(r)
                    bar.update()
    out_images, annotations = [], []
    for task, r in zip(tasks, results, strict=True):
        problems += r["problems"]
        if "height" not in r:
            continue
        src = images[r["image_id"]]
        out_images.append({
            "id": r["image_id"],
            "file_name": src["file_name"],
            "height": r["height"],
            "width": r["width"],
            "panoptic_file_name": os.path.relpath(task[0], folder.panoptic_root),
        })
        for ann in r["annotations"]:
            annotations.append({"id": len(annotations) + 1, **ann})
    if problems:
        shown = "\n  ".join(problems[:_MAX_REPORT])
        rest = len(problems) - _MAX_REPORT
        more = f"\n  ... and {rest} more" if rest > 0 else ""
        raise PanopticFormatError(
            f"Dataset '{folder.name}': {len(problems)} problem(s) in {folder.panoptic_json} and "
            f"{folder.panoptic_root}:\n  {shown}{more}\nFix the JSON or the PNGs; the derived "
            "files are rebuilt automatically on the next run."
        )
    return {
        "info": {"description": f"Derived by panoptic_ext from {folder.panoptic_json}"},
        "images": _sorted_by_id(out_images),
        "annotations": annotations,
        "categories": [dict(c) for c in folder.things],
    }


def prepare_panoptic_dataset(name: str, workers: int | None = None,
                             progress: bool | None = None) -> bool:
    """Derive (or refresh) the instance JSON and stuff PNGs of a registered folder now.

    Returns True when files were (re)built, False when the cache was up to date. Called by the
    loaders, so most code never needs it; use it to pay the cost (and see errors) up front.
    """
    folder = get_panoptic_folder(name)
    if progress is None:
        progress = sys.stderr.isatty()
    stamp_file = os.path.join(folder.cache, "stamp.json")
    with _locked(folder.cache):
        stamp = _source_stamp(folder)
        if (_read_json_or_none(stamp_file) == stamp and os.path.isfile(folder.instances_json)
                and os.path.isdir(folder.sem_seg_root)):
            return False
        logger.info("Dataset '%s': deriving instances and stuff PNGs from %s into %s",
                    folder.name, folder.panoptic_json, folder.cache)
        data = _load_panoptic_json(folder.panoptic_json, folder.name)
        if _normalize_categories(data["categories"], folder.panoptic_json) != folder.categories:
            raise PanopticFormatError(
                f"Dataset '{folder.name}': the categories in {folder.panoptic_json} changed "
                "after it was registered; register it again (restart the run) so the class "
                "lists and head sizes follow"
            )
        _write_json_atomic(folder.instances_json,
                           _derive_instances(folder, data, workers, progress))
        convert_panoptic_to_semantic(folder.panoptic_json, folder.panoptic_root,
                                     folder.sem_seg_root, workers=workers, progress=progress)
        _write_json_atomic(stamp_file, stamp)  # last: a crash before it means "rebuild"
    return True


# ----------------------------------------------------------------------------- loaders


def _load_standard(folder: PanopticFolder) -> list[dict]:
    """Standard dicts straight from the panoptic JSON (no derived file needed)."""
    data = _load_panoptic_json(folder.panoptic_json, folder.name)
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


def _load_separated(folder: PanopticFolder) -> list[dict]:
    """Panoptic FPN dicts from the derived files (derived first if missing or stale)."""
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


# ----------------------------------------------------------------------------- registration


def get_panoptic_folder(name: str) -> PanopticFolder:
    """The folder behind a name registered by :func:`register_panoptic_dataset` (either style)."""
    try:
        return _FOLDERS[name]
    except KeyError:
        raise KeyError(
            f"'{name}' was not registered with register_panoptic_dataset (registered: "
            f"{sorted(_FOLDERS)})"
        ) from None


def _replace(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


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
    (see the module docstring; ``cache_dir`` forces the cache there). Re-registering a name
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
    cache = _cache_folder(panoptic_json, panoptic_root, cache_dir)
    cats = _read_categories(panoptic_json, cache, name)
    folder = PanopticFolder(name, image_root, panoptic_json, panoptic_root, cache, cats)
    separated = f"{name}_separated"
    for n in (name, separated):
        _replace(n)
        _FOLDERS[n] = folder

    common = {"image_root": image_root, "panoptic_root": panoptic_root,
              "panoptic_json": panoptic_json, "evaluator_type": "coco_panoptic_seg",
              "ignore_label": 255}
    DatasetCatalog.register(name, functools.partial(_load_standard, folder))
    MetadataCatalog.get(name).set(label_divisor=1000, **common,
                                  **panoptic_standard_metadata(cats))
    DatasetCatalog.register(separated, functools.partial(_load_separated, folder))
    sep_meta = panoptic_separated_metadata(cats)
    sep_meta["sem_seg_root"] = folder.sem_seg_root
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


def configure_panoptic_folders(
    cfg: CfgNode,
    specs: Sequence[str] = (),
    opts: Sequence[str] = (),
    eval_only: bool = False,
) -> list[str]:
    """Register ``DATASETS.PANOPTIC_FOLDERS`` plus ``specs`` and size the heads to the
    categories of the datasets used (registered here or by :func:`register_panoptic_dataset`).

    ``specs`` (e.g. from ``--dataset``) are appended to ``DATASETS.PANOPTIC_FOLDERS`` so the
    saved config.yaml reproduces the run. When DATASETS.TRAIN (DATASETS.TEST if ``eval_only``)
    names such datasets, ROI_HEADS.NUM_CLASSES becomes #things and SEM_SEG_HEAD.NUM_CLASSES
    #stuff + 1, unless the key is in ``opts`` (the command line wins). A stuff-only dataset
    gets one placeholder thing class (Detectron2's minimum) and SCORE_THRESH_TEST 1.0, so it
    never predicts an instance. ``cfg`` must not be frozen; returns lines worth logging.
    """
    folders = [*cfg.DATASETS.get("PANOPTIC_FOLDERS", []), *specs]
    # Absolute paths, so the saved config.yaml works from any folder.
    folders = list(dict.fromkeys(
        ":".join([name, *(os.path.abspath(p) for p in paths)])
        for name, *paths in map(parse_folder_spec, folders)
    ))
    if folders:
        cfg.DATASETS.PANOPTIC_FOLDERS = folders
        register_panoptic_folders(folders)
    notes: list[str] = []
    key = "DATASETS.TEST" if eval_only else "DATASETS.TRAIN"
    used = [n for n in (cfg.DATASETS.TEST if eval_only else cfg.DATASETS.TRAIN) if n in _FOLDERS]
    if not used:
        return notes
    signatures = {n: get_panoptic_folder(n).categories for n in used}
    first = used[0]
    for n in used[1:]:
        if signatures[n] != signatures[first]:
            raise ValueError(
                f"{key} mixes '{first}' and '{n}', whose categories differ; the heads can only "
                "follow one category set: train/evaluate them separately or give them the same "
                "'categories'"
            )
    folder = get_panoptic_folder(first)
    n_things, n_stuff = len(folder.things), len(folder.stuff)
    explicit = {str(k) for k in list(opts)[0::2]}
    wanted = {_ROI_KEY: max(1, n_things), _SEM_KEY: n_stuff + 1}
    if n_things == 0:
        wanted[_SCORE_KEY] = 1.0  # scores are <= 1 and must exceed it: no instance, ever
    for k, value in wanted.items():
        node_path, leaf = k.rsplit(".", 1)
        node = cfg
        for part in node_path.split("."):
            node = node[part]
        if k in explicit:
            if node[leaf] != value and k != _SCORE_KEY:
                notes.append(f"{k}={node[leaf]} from the command line, although '{first}' has "
                             f"{n_things if k == _ROI_KEY else n_stuff + 1}")
            continue
        if node[leaf] != value:
            notes.append(f"{k}: {node[leaf]} -> {value} (categories of '{first}')")
        node[leaf] = value
    if n_things == 0:
        notes.append(f"'{first}' has no thing class: the ROI heads keep one placeholder class "
                     f"and {_SCORE_KEY}=1.0, so no instance is predicted")
    return notes


def prepare_cfg_folders(cfg: CfgNode, eval_only: bool = False) -> list[str]:
    """Derive now the files of the registered folders that DATASETS.TEST (and, unless
    ``eval_only``, DATASETS.TRAIN) name, so bad data fails at startup with our message.

    Safe in every DDP rank at once: the first derives, the others wait on the lock and find
    the cache fresh. Returns the names that were rebuilt.
    """
    names = [*([] if eval_only else cfg.DATASETS.TRAIN), *cfg.DATASETS.TEST]
    rebuilt = []
    for name in dict.fromkeys(n for n in names if n in _FOLDERS and n.endswith("_separated")):
        if prepare_panoptic_dataset(name):
            rebuilt.append(name)
    return rebuilt
