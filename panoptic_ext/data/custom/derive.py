"""Files derived from a user's COCO-panoptic folder: a COCO instances JSON and stuff PNGs.

Detectron2's "separated" datasets (what Panoptic FPN trains on) need both, and user folders have
neither. They are derived from the panoptic PNGs into a cache folder: next to the data
(``<panoptic_root>_panoptic_ext/<json stem>/``) when that is writable, else under ``cache_dir``
(default :func:`default_dataset_cache_dir`, ``$XDG_CACHE_HOME/panoptic_ext/datasets``), one
sub-folder per dataset. A stamp of the sources (JSON size/mtime, PNG names/sizes/mtimes) decides
when to rebuild; a file lock keeps concurrent processes (DDP ranks) from deriving twice.

Instance masks are written as RLE (exact, and what the PNGs give for free), so training needs
``INPUT.MASK_FORMAT bitmask``; :mod:`.config` sets it.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from tqdm import tqdm

from ...formats import (
    PanopticFormatError,
    describe_segment_mismatch,
    read_panoptic_png,
    segment_mismatch,
)
from ...utils.io import atomic_write_json, read_json_or_none
from ...utils.locks import file_lock
from ...utils.paths import user_cache_dir
from ..coco_prep import convert_panoptic_to_semantic
from .categories import normalize_categories
from .folder import FOLDER_SPEC, PanopticFolder, get_panoptic_folder, load_folder_json

__all__ = [
    "FORMAT_VERSION",
    "cache_folder",
    "default_dataset_cache_dir",
    "prepare_panoptic_dataset",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the derived files change, so old caches are rebuilt
_MAX_REPORT = 10
_MIN_IMAGES_FOR_POOL = 64


def default_dataset_cache_dir() -> Path:
    """Per-user cache for derived files of read-only dataset folders (XDG, like validation)."""
    return user_cache_dir("datasets")


def cache_folder(panoptic_json: str, panoptic_root: str, cache_dir: str | os.PathLike | None
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
        ids = read_panoptic_png(png, image_id, allow_alpha=False)
    except PanopticFormatError as exc:  # names the file and the image already
        problems.append(str(exc))
        return out
    h, w = ids.shape
    out["height"], out["width"] = h, w
    if expected_hw is not None and tuple(expected_hw) != (h, w):
        problems.append(f"{where}: PNG is {w}x{h} (WxH) but {json_name} says "
                        f"{expected_hw[1]}x{expected_hw[0]}; fix the JSON's images entry")
    present = np.unique(ids)
    missing, extra = segment_mismatch(present, (sid for sid, _, _, _ in segments))
    labels = {sid: names.get(cid, "?") for sid, cid, _, _ in segments}  # "4242 ('block')"
    problems += [f"{where}: {p}"
                 for p in describe_segment_mismatch(missing, extra, json_name, labels)]
    drawn = set(present.tolist())
    things = [(sid, cid, crowd) for sid, cid, crowd, isthing in segments
              if isthing and sid in drawn]
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
    with file_lock(folder.cache):  # the first rank derives; the others wait, then find it fresh
        stamp = _source_stamp(folder)
        if (read_json_or_none(stamp_file) == stamp and os.path.isfile(folder.instances_json)
                and os.path.isdir(folder.sem_seg_root)):
            return False
        logger.info("Dataset '%s': deriving instances and stuff PNGs from %s into %s",
                    folder.name, folder.panoptic_json, folder.cache)
        data = load_folder_json(folder.panoptic_json, folder.name)
        if normalize_categories(data["categories"], folder.panoptic_json) != folder.categories:
            raise PanopticFormatError(
                f"Dataset '{folder.name}': the categories in {folder.panoptic_json} changed "
                "after it was registered; register it again (restart the run) so the class "
                "lists and head sizes follow"
            )
        atomic_write_json(folder.instances_json,
                          _derive_instances(folder, data, workers, progress))
        convert_panoptic_to_semantic(folder.panoptic_json, folder.panoptic_root,
                                     folder.sem_seg_root, workers=workers, progress=progress)
        atomic_write_json(stamp_file, stamp)  # last: a crash before it means "rebuild"
    return True
