"""Fast validation of registered Detectron2 datasets before training starts.

A corrupt JPEG or a panoptic PNG that disagrees with its JSON otherwise surfaces hours into a
run, inside a data-loader worker, as an error that names no file. :func:`validate_datasets`
reads every file a dataset points at once, up front, in parallel, and reports every problem
with the file it comes from.

Decoding is the expensive part, so what it learns about a file (decoded size, segment ids,
label values, or why it does not decode) is cached, keyed by the file's absolute path, size
and mtime. The consistency checks against the annotations are cheap and always re-run, so an
edited JSON is re-checked even when the PNGs are unchanged. The cache is one JSON file per
set of dataset names under :func:`default_cache_dir` (``$XDG_CACHE_HOME/panoptic_ext/validate``,
default ``~/.cache/panoptic_ext/validate``): a per-user location works for read-only dataset
folders shared between users, which a cache next to the data would not.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from tqdm import tqdm

from ..formats import (
    PanopticFormatError,
    describe_segment_mismatch,
    read_panoptic_png,
    segment_mismatch,
)
from ..utils.io import atomic_write_json, read_json_or_none
from ..utils.paths import user_cache_dir
from ..utils.pools import safe_pool

__all__ = [
    "DatasetValidationError",
    "ON_BAD_AREA_CHOICES",
    "ValidationReport",
    "check_on_bad_area",
    "segment_areas_and_boxes",
    "check_dataset_names",
    "default_cache_dir",
    "inspect_file",
    "unknown_dataset_message",
    "validate_datasets",
]

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: panoptic PNGs decoded by panoptic_ext.formats; 3: segment areas/boxes
# Below this many files to decode, a process pool costs more than it saves (its workers
# start from a fresh interpreter, see utils.pools: ~2-3 s for the first pool of a process).
_MIN_FILES_FOR_POOL = 256
# Instance boxes may exceed the image by this much (COCO boxes are floats, rounding happens).
_BOX_TOLERANCE = 1.0
_EXIF_ORIENTATION = 0x0112
_KINDS = ("image", "panoptic", "sem_seg")


class DatasetValidationError(ValueError):
    """Raised when a dataset has bad files; the message lists them, ``report`` has them all."""

    def __init__(self, message: str, report: ValidationReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class ValidationReport:
    """What a validation pass looked at and found; ``problems`` maps a file to its reasons."""

    datasets: list[str]
    num_samples: int = 0
    num_files: int = 0
    cache_hits: int = 0
    decoded: int = 0
    seconds: float = 0.0
    cache_file: str | None = None
    problems: dict[str, list[str]] = field(default_factory=dict)
    reported: int = field(default=0, repr=False)  # add() calls, duplicates included

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str, reason: str) -> None:
        self.reported += 1
        reasons = self.problems.setdefault(path, [])
        if reason not in reasons:  # datasets sharing files (standard + separated) report once
            reasons.append(reason)

    def format(self, max_report: int = 5) -> str:
        """Human-readable summary: the first ``max_report`` bad files, then a count of the rest."""
        names = ", ".join(self.datasets)
        if self.ok:
            return (
                f"Datasets {names}: {self.num_samples} samples, {self.num_files} files OK "
                f"({self.cache_hits} from cache, {self.seconds:.1f} s)"
            )
        lines = [
            f"Dataset validation failed for {names}: {len(self.problems)} bad file(s) "
            f"({self.num_files} files checked):"
        ]
        for path, reasons in list(self.problems.items())[: max(0, max_report)]:
            shown = "; ".join(reasons[:3])
            extra = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
            lines.append(f"  {path}: {shown}{extra}")
        rest = len(self.problems) - max(0, max_report)
        if rest > 0:
            lines.append(f"  ... and {rest} more bad file(s)")
        lines.append(
            "Fix or regenerate these files, or set DATALOADER.VALIDATE False to train anyway "
            "(DATALOADER.ON_BAD_SAMPLE skip then skips samples that fail to load)."
        )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- names


def unknown_dataset_message(name: str, key: str | None = None) -> str:
    """Error text for an unregistered dataset name, with the closest registered names."""
    registered = DatasetCatalog.list()
    close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
    where = f"{key} contains " if key else ""
    hint = (
        f"Did you mean {', '.join(repr(c) for c in close)}?"
        if close
        else f"Registered datasets: {', '.join(sorted(registered)[:20])}"
        + (" ..." if len(registered) > 20 else "")
    )
    return (
        f"{where}{name!r}, which is not a registered dataset. {hint} (Datasets are registered "
        "when their module is imported, e.g. panoptic_ext.data, or via register_panoptic.)"
    )


def check_dataset_names(
    cfg: Any, keys: Sequence[str] = ("DATASETS.TRAIN", "DATASETS.TEST")
) -> None:
    """Fail early, naming the config key, on a dataset name that is not registered.

    Detectron2 only logs a warning and then fails with a bare KeyError deep in the loader.
    """
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        names = [node] if isinstance(node, str) else list(node)
        for name in names:
            if name not in DatasetCatalog:
                raise KeyError(unknown_dataset_message(name, key))


# ----------------------------------------------------------------------------- file facts


def _decode_image(path: str) -> dict[str, Any]:
    with Image.open(path) as img:
        width, height = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # broken EXIF; Detectron2's reader ignores it too
            orientation = None
        if img.format == "JPEG":
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # still reads all data
        img.load()
    if orientation in (5, 6, 7, 8):  # Detectron2 applies EXIF rotation: sides swap
        width, height = height, width
    return {"size": [width, height]}


def segment_areas_and_boxes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted ids, pixel count of each, COCO box [x, y, w, h] of each) of an id map.

    What a segment's JSON ``area`` and ``bbox`` must say (panopticapi's converters count
    pixels; a box spans first to last pixel inclusive).
    """
    height, width = ids.shape
    values = np.unique(ids)
    k = values.size
    labels = np.searchsorted(values, ids).astype(np.int32)  # (H, W) index into values
    counts = np.bincount(labels.ravel(), minlength=k)
    # which rows / columns each id appears in: one bincount each, no per-id pass
    rows = np.bincount((labels * height + np.arange(height, dtype=np.int32)[:, None]).ravel(),
                       minlength=k * height).reshape(k, height) > 0
    cols = np.bincount((labels * width + np.arange(width, dtype=np.int32)[None, :]).ravel(),
                       minlength=k * width).reshape(k, width) > 0
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1 = height - 1 - rows[:, ::-1].argmax(axis=1)
    x1 = width - 1 - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)
    return values, counts, boxes


def _decode_panoptic(path: str) -> dict[str, Any]:
    try:  # the reader every consumer uses: RGB only, as Detectron2's loaders expect
        ids = read_panoptic_png(path, allow_alpha=False)
    except PanopticFormatError as exc:
        return {"error": str(exc)}
    values, counts, boxes = segment_areas_and_boxes(ids)
    return {"size": [ids.shape[1], ids.shape[0]], "values": values.tolist(),
            "areas": counts.tolist(), "boxes": boxes.tolist()}


def _decode_sem_seg(path: str) -> dict[str, Any]:
    with Image.open(path) as img:
        img.load()
        mode, arr = img.mode, np.asarray(img)
    if mode != "L":  # Detectron2 reads it with convert("L"): other modes give wrong labels
        return {"error": f"stuff PNG must be single-channel 8-bit (mode L), got mode {mode}"}
    return {"size": [arr.shape[1], arr.shape[0]], "values": [int(v) for v in np.unique(arr)]}


_DECODERS = {"image": _decode_image, "panoptic": _decode_panoptic, "sem_seg": _decode_sem_seg}


def inspect_file(kind: str, path: str) -> dict[str, Any]:
    """Decode one file: ``{"size": [w, h], "values": [...]}``, or ``{"error": reason}``.

    ``kind`` is "image", "panoptic" or "sem_seg". Never raises for a bad file, so a pool of
    these keeps going and one pass reports every problem.
    """
    if kind not in _DECODERS:
        raise ValueError(f"unknown file kind {kind!r}; expected one of {_KINDS}")
    if not os.path.isfile(path):
        return {"error": "file is missing", "missing": True}
    try:
        return _DECODERS[kind](path)
    except Exception as exc:  # PIL raises many unrelated types for corrupt files
        return {"error": f"cannot decode ({type(exc).__name__}: {exc})"}


def _inspect_task(task: tuple[str, str]) -> tuple[str, str, dict[str, Any]]:
    kind, path = task
    return kind, path, inspect_file(kind, path)


def default_cache_dir() -> Path:
    """Per-user cache folder (XDG), usable even when the dataset folder is read-only."""
    return user_cache_dir("validate")


def _cache_path(cache_dir: str | os.PathLike, names: Sequence[str]) -> Path:
    digest = hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", "+".join(sorted(names)))[:60]
    return Path(cache_dir) / f"{readable}-{digest}.json"


def _load_cache(path: Path) -> dict[str, Any]:
    data = read_json_or_none(path)
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _save_cache(path: Path, entries: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: concurrent runs never read half a cache.
        atomic_write_json(path, {"version": CACHE_VERSION, "entries": entries})
    except OSError as exc:
        logger.warning("Could not write validation cache %s (%s); continuing without", path, exc)


def _inspect_all(
    files: Iterable[tuple[str, str]],
    report: ValidationReport,
    workers: int | None,
    cache_file: Path | None,
    progress: bool,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Facts for every (kind, path), from the cache when the file's size and mtime match."""
    cached = _load_cache(cache_file) if cache_file is not None else {}
    facts: dict[tuple[str, str], dict[str, Any]] = {}
    entries: dict[str, Any] = {}
    todo: list[tuple[str, str]] = []
    stamps: dict[tuple[str, str], list[int]] = {}
    for kind, path in files:
        try:
            st = os.stat(path)
        except OSError:
            facts[(kind, path)] = {"error": "file is missing", "missing": True}
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        key = f"{kind}:{path}"
        hit = cached.get(key)
        if isinstance(hit, list) and len(hit) == 2 and hit[0] == stamp:
            facts[(kind, path)] = hit[1]
            entries[key] = hit
            report.cache_hits += 1
        else:
            stamps[(kind, path)] = stamp
            todo.append((kind, path))
    report.num_files = len(facts) + len(todo)
    report.decoded = len(todo)

    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    bar = tqdm(total=len(todo), desc="validate datasets", unit="file", disable=not progress)
    with bar:
        if workers == 1 or len(todo) < _MIN_FILES_FOR_POOL:
            results: Iterable[tuple[str, str, dict[str, Any]]] = map(_inspect_task, todo)
            for kind, path, fact in results:
                facts[(kind, path)] = fact
                bar.update()
        else:
            chunk = max(1, min(64, len(todo) // (workers * 8)))
            # never a fork: the trainer's process may already run OpenCV/torch threads
            with safe_pool(min(workers, len(todo)), preload=(__name__,)) as pool:
                for kind, path, fact in pool.imap_unordered(_inspect_task, todo, chunksize=chunk):
                    facts[(kind, path)] = fact
                    bar.update()
    for kind, path in todo:
        if not facts[(kind, path)].get("missing"):
            entries[f"{kind}:{path}"] = [stamps[(kind, path)], facts[(kind, path)]]
    if cache_file is not None and (todo or len(entries) != len(cached)):
        _save_cache(cache_file, entries)
    return facts


# ----------------------------------------------------------------------------- planning


@dataclass
class _Sample:
    """One dataset dict reduced to what is checked; paths are absolute."""

    index: int
    image: str
    size: tuple[int, int] | None = None  # (w, h) the annotations claim
    sem_seg: str | None = None
    panoptic: str | None = None
    pan_entry: dict[str, Any] | None = None  # raw panoptic JSON annotation
    pan_size: tuple[int, int] | None = None  # (w, h) of the panoptic JSON's image entry
    annotations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Plan:
    """What to check for one dataset: its samples and the rules from its metadata."""

    name: str
    samples: list[_Sample]
    num_things: int | None
    sem_values: set[int] | None  # allowed stuff-PNG values
    ignore_label: int
    known_categories: set[int] | None  # raw ids allowed in the panoptic JSON
    panoptic_json: str | None
    instances_json: str | None
    load_error: str | None = None
    found: int = 0  # problems found while planning (e.g. by the fallback reader)
    # ON_BAD_AREA "fix": (image_id, segment id) -> (pixel count, box), written to a copy
    fix_areas: dict[tuple, tuple] | None = None


def _abs(path: str) -> str:
    return os.path.abspath(os.fspath(path))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _read_json(path: str, report: ValidationReport) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        report.add(_abs(path), "annotation JSON is missing")
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        report.add(_abs(path), f"cannot read JSON ({exc})")
        return None
    if not isinstance(data, dict):
        report.add(_abs(path), "JSON top level is not an object")
        return None
    return data


def _stuff_hint(meta: Any, sem_root: str) -> str:
    """The command that creates a missing stuff-PNG folder: the dataset's own (metadata
    ``prepare_hint``), COCO's script, else the function."""
    hint = getattr(meta, "prepare_hint", None)
    if hint:
        return hint
    sem_root = os.path.normpath(sem_root)
    parent = os.path.dirname(sem_root)
    if os.path.basename(parent) == "coco" and os.path.basename(sem_root).startswith(
        "panoptic_stuff_"
    ):
        root = os.path.dirname(parent) or "."
        return f"Create it with `python datasets/prepare_panoptic_fpn.py --root {root}`."
    pan_json = getattr(meta, "panoptic_json", None)
    pan_root = getattr(meta, "panoptic_root", None)
    if pan_json and pan_root:
        return (
            "Create it with `python -c \"from panoptic_ext.data import "
            f"convert_panoptic_to_semantic; convert_panoptic_to_semantic({pan_json!r}, "
            f"{pan_root!r}, {sem_root!r})\"`."
        )
    return (
        "Create it with panoptic_ext.data.convert_panoptic_to_semantic(panoptic_json, "
        "panoptic_root, sem_seg_root) from the panoptic annotations."
    )


def _fallback_dicts(meta: Any, report: ValidationReport) -> list[dict] | None:
    """Dataset dicts read straight from the JSON, for when Detectron2's loader itself fails.

    Detectron2 fails on the first inconsistency (e.g. a missing stuff PNG is a KeyError in
    ``merge_to_panoptic``); reading the JSON leniently still lets every bad file be listed.
    """
    image_root = getattr(meta, "image_root", None)
    json_file = getattr(meta, "json_file", None)
    sem_root = getattr(meta, "sem_seg_root", None)
    pan_json = getattr(meta, "panoptic_json", None)
    pan_root = getattr(meta, "panoptic_root", None)
    if image_root and json_file and (sem_root or not pan_json):
        data = _read_json(json_file, report)
        if data is None:
            return []
        thing_map = getattr(meta, "thing_dataset_id_to_contiguous_id", {}) or {}
        by_image: dict[Any, list[dict]] = {}
        for ann in data.get("annotations", []):
            cid = ann.get("category_id")
            if cid not in thing_map:
                img = ann.get("image_id")
                report.add(
                    _abs(json_file),
                    f"annotation {ann.get('id')} (image {img}) has category_id {cid}, "
                    f"which the dataset's metadata does not know (known: {sorted(thing_map)})",
                )
                continue
            by_image.setdefault(ann.get("image_id"), []).append(
                {"bbox": ann.get("bbox"), "bbox_mode": BoxMode.XYWH_ABS,
                 "category_id": thing_map[cid]}
            )
        dicts = []
        for img in data.get("images", []):
            d = {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": img.get("height"),
                "width": img.get("width"),
                "annotations": by_image.get(img.get("id"), []),
            }
            if sem_root:
                d["sem_seg_file_name"] = os.path.join(sem_root, _stem(img["file_name"]) + ".png")
            dicts.append(d)
        return dicts
    if image_root and pan_json and pan_root:
        data = _read_json(pan_json, report)
        if data is None:
            return []
        return [
            {
                "file_name": os.path.join(image_root, _stem(a["file_name"]) + ".jpg"),
                "pan_seg_file_name": os.path.join(pan_root, a["file_name"]),
            }
            for a in data.get("annotations", [])
            if "file_name" in a
        ]
    return None


def _panoptic_index(
    meta: Any, report: ValidationReport
) -> tuple[dict[tuple, dict], dict[Any, tuple[int, int]]] | None:
    """Panoptic JSON entries by ("id", image_id) and by ("stem", file stem), and sizes.

    An image is paired by its id first (what the evaluator does; Cityscapes' image and PNG
    names differ), else by file stem (how Detectron2 pairs COCO's)."""
    pan_json = getattr(meta, "panoptic_json", None)
    if not pan_json or not getattr(meta, "panoptic_root", None):
        return None
    data = _read_json(pan_json, report)
    if data is None:
        return None
    sizes = {
        img.get("id"): (int(img["width"]), int(img["height"]))
        for img in data.get("images", [])
        if "width" in img and "height" in img
    }
    entries = {}
    for ann in data.get("annotations", []):
        if "file_name" not in ann or "segments_info" not in ann:
            report.add(
                _abs(pan_json),
                f"annotation for image {ann.get('image_id')} lacks 'file_name' or 'segments_info'",
            )
            continue
        entries[("stem", _stem(ann["file_name"]))] = ann
        entries.setdefault(("id", ann.get("image_id")), ann)
    _check_unique_image_ids(
        getattr(meta, "name", "?"),
        [{"image_id": a.get("image_id"), "file_name": a.get("file_name")}
         for a in data.get("annotations", [])], pan_json, report)
    return entries, sizes


def _plan_dataset(name: str, report: ValidationReport) -> _Plan:
    before = report.reported
    plan = _make_plan(name, report)
    plan.found = report.reported - before
    return plan


def _make_plan(name: str, report: ValidationReport) -> _Plan:
    meta = MetadataCatalog.get(name)
    sem_root = getattr(meta, "sem_seg_root", None)
    stuff = getattr(meta, "stuff_classes", None)
    things = getattr(meta, "thing_classes", None)
    known = None
    if getattr(meta, "panoptic_json", None):
        known = set(getattr(meta, "thing_dataset_id_to_contiguous_id", {}) or {})
        known |= set(getattr(meta, "stuff_dataset_id_to_contiguous_id", {}) or {})
        if sem_root:
            known.discard(0)  # separated metadata maps the merged "things" label 0 -> 0
    plan = _Plan(
        name=name,
        samples=[],
        num_things=len(things) if things is not None else None,
        sem_values=(
            set(range(len(stuff))) | {int(getattr(meta, "ignore_label", 255))}
            if stuff is not None
            else None
        ),
        known_categories=known,
        ignore_label=int(getattr(meta, "ignore_label", 255)),
        panoptic_json=getattr(meta, "panoptic_json", None),
        instances_json=getattr(meta, "json_file", None),
    )
    if sem_root and not os.path.isdir(sem_root):
        report.add(
            _abs(sem_root),
            f"stuff PNG folder of dataset '{name}' is missing. {_stuff_hint(meta, sem_root)}",
        )
        return plan

    try:
        dicts = DatasetCatalog.get(name)
    except Exception as exc:  # any loader failure: fall back and find the files behind it
        plan.load_error = f"DatasetCatalog.get('{name}') failed: {type(exc).__name__}: {exc}"
        dicts = _fallback_dicts(meta, report)
        if dicts is None:
            report.add(name, plan.load_error)
            return plan
    if not isinstance(dicts, list):
        logger.warning("Dataset '%s' is not a list of dicts; its files are not validated", name)
        return plan

    pan = _panoptic_index(meta, report)
    pan_root = getattr(meta, "panoptic_root", None)
    for i, d in enumerate(dicts):
        w, h = d.get("width"), d.get("height")
        s = _Sample(
            index=i,
            image=_abs(d["file_name"]),
            size=(int(w), int(h)) if w is not None and h is not None else None,
            sem_seg=_abs(d["sem_seg_file_name"]) if d.get("sem_seg_file_name") else None,
            annotations=list(d.get("annotations", [])),
        )
        if d.get("pan_seg_file_name"):
            s.panoptic = _abs(d["pan_seg_file_name"])
        if pan is not None:
            entries, sizes = pan
            entry = entries.get(("id", d.get("image_id"))) or entries.get(
                ("stem", _stem(d["file_name"])))
            if entry is None:
                report.add(s.image, f"has no entry in {plan.panoptic_json}")
            else:
                s.pan_entry = entry
                s.pan_size = sizes.get(entry.get("image_id"))
                if s.panoptic is None:
                    s.panoptic = _abs(os.path.join(pan_root, entry["file_name"]))
        plan.samples.append(s)
    if pan is None:  # a panoptic JSON's own ids are checked in _panoptic_index
        _check_unique_image_ids(name, dicts, plan.instances_json, report)
    return plan


def _check_unique_image_ids(name: str, dicts: list[dict], source: str | None,
                            report: ValidationReport) -> None:
    """Two images with one ``image_id`` make evaluation score one and drop the other
    ("processed twice"); name the id, its files and the JSON to fix."""
    files: dict[Any, list[str]] = {}
    for d in dicts:
        if d.get("image_id") is not None:
            files.setdefault(d["image_id"], []).append(os.path.basename(str(d.get("file_name"))))
    where = _abs(source) if source else name
    for image_id, names in files.items():
        if len(names) > 1:
            report.add(where, f"image_id {image_id!r} is used by {len(names)} images of dataset "
                       f"'{name}' ({', '.join(names[:4])}); give each image its own id")


# ----------------------------------------------------------------------------- checks


def _fmt_ids(ids: Sequence[int], limit: int = 10) -> str:
    ids = sorted(ids)
    return str(ids[:limit])[:-1] + (", ...]" if len(ids) > limit else "]")


def _check_file(
    report: ValidationReport, fact: dict[str, Any], path: str, what: str
) -> dict[str, Any] | None:
    if "error" in fact:
        report.add(path, f"{what}: {fact['error']}")
        return None
    return fact


def _check_sample(
    plan: _Plan,
    s: _Sample,
    facts: dict[tuple[str, str], dict[str, Any]],
    report: ValidationReport,
) -> None:
    image = _check_file(report, facts[("image", s.image)], s.image, "image")
    img_size = tuple(image["size"]) if image else None
    if img_size and s.size and img_size != s.size:
        report.add(
            s.image,
            f"image is {img_size[0]}x{img_size[1]} (WxH) but its annotations say "
            f"{s.size[0]}x{s.size[1]}",
        )
    ref = img_size or s.size

    if s.sem_seg:
        sem = _check_file(report, facts[("sem_seg", s.sem_seg)], s.sem_seg, "stuff PNG")
        if sem:
            if ref and tuple(sem["size"]) != ref:
                report.add(
                    s.sem_seg,
                    f"stuff PNG is {sem['size'][0]}x{sem['size'][1]} but its image "
                    f"{os.path.basename(s.image)} is {ref[0]}x{ref[1]}",
                )
            bad = set(sem["values"]) - plan.sem_values if plan.sem_values is not None else set()
            if bad:
                top = max(plan.sem_values - {plan.ignore_label}, default=-1)
                report.add(
                    s.sem_seg,
                    f"label value(s) {_fmt_ids(bad)} outside 0..{top} (stuff classes) and "
                    f"{plan.ignore_label} (ignore)",
                )

    if s.panoptic:
        pan = _check_file(report, facts[("panoptic", s.panoptic)], s.panoptic, "panoptic PNG")
        if pan:
            size = tuple(pan["size"])
            if ref and size != ref:
                report.add(
                    s.panoptic,
                    f"panoptic PNG is {size[0]}x{size[1]} but its image "
                    f"{os.path.basename(s.image)} is {ref[0]}x{ref[1]}",
                )
            if s.pan_size and size != s.pan_size:
                report.add(
                    s.panoptic,
                    f"panoptic PNG is {size[0]}x{size[1]} but {plan.panoptic_json} says "
                    f"{s.pan_size[0]}x{s.pan_size[1]}",
                )
        if s.pan_entry is not None:
            _check_segments(plan, s, pan, report)

    _check_instances(plan, s, ref, report)


def _check_segments(
    plan: _Plan, s: _Sample, pan: dict[str, Any] | None, report: ValidationReport
) -> None:
    json_name = os.path.basename(plan.panoptic_json or "the panoptic JSON")
    ids: list[int] = []
    for seg in s.pan_entry["segments_info"]:
        sid, cid = int(seg.get("id", 0)), seg.get("category_id")
        ids.append(sid)
        if plan.known_categories is not None and cid not in plan.known_categories:
            report.add(
                s.panoptic,
                f"segment {sid} in {json_name} has category_id {cid}, which the dataset's "
                f"metadata does not know (known: {sorted(plan.known_categories)})",
            )
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        report.add(s.panoptic, f"{json_name} lists segment id(s) {_fmt_ids(dup)} twice")
    if 0 in ids:
        report.add(s.panoptic, f"{json_name} uses segment id 0, which is reserved for void")
    if pan is None:
        return
    for problem in describe_segment_mismatch(*segment_mismatch(pan["values"], ids), json_name):
        report.add(s.panoptic, problem)
    _check_areas(plan, s, pan, json_name, report)


def _check_areas(plan: _Plan, s: _Sample, pan: dict[str, Any], json_name: str,
                 report: ValidationReport) -> None:
    """Each segment's JSON ``area`` (and ``bbox``) against its pixels: PQ puts the JSON area
    in the IoU, so a wrong one gives wrong (even impossible, > 100) SQ and PQ."""
    if "areas" not in pan:  # decoded by an older version: nothing to compare with
        return
    pixels = dict(zip(pan["values"], zip(pan["areas"], pan["boxes"], strict=True), strict=True))
    image_id = s.pan_entry.get("image_id")
    for seg in s.pan_entry["segments_info"]:
        sid = seg.get("id")
        if sid not in pixels or sid == 0:
            continue  # reported above (no pixels / void)
        count, box = pixels[sid]
        area = seg.get("area")
        bbox = seg.get("bbox")
        bad_area = area is not None and area != count
        bad_box = (bbox is not None and len(bbox) == 4
                   and any(abs(float(a) - b) > 0.5 for a, b in zip(bbox, box, strict=True)))
        if not (bad_area or bad_box):
            continue
        if plan.fix_areas is not None:
            plan.fix_areas[(image_id, sid)] = (count, box)
            continue
        if bad_area:
            report.add(s.panoptic, f"segment {sid} of image {image_id} in {json_name}: JSON area "
                       f"{area} but {count} pixels in the PNG (PQ would use the JSON area)")
        if bad_box:
            report.add(s.panoptic, f"segment {sid} of image {image_id} in {json_name}: JSON bbox "
                       f"{list(bbox)} but the PNG's pixels span {box}")


def _check_instances(
    plan: _Plan, s: _Sample, ref: tuple[int, int] | None, report: ValidationReport
) -> None:
    src = f" ({os.path.basename(plan.instances_json)})" if plan.instances_json else ""
    for ann in s.annotations:
        cid = ann.get("category_id")
        if plan.num_things is not None and not (
            isinstance(cid, int | np.integer) and 0 <= cid < plan.num_things
        ):
            report.add(
                s.image,
                f"instance annotation{src} has contiguous category_id {cid}, outside "
                f"0..{plan.num_things - 1}",
            )
        bbox = ann.get("bbox")
        if bbox is None or ref is None:
            continue
        try:
            x0, y0, x1, y1 = BoxMode.convert(list(bbox), ann["bbox_mode"], BoxMode.XYXY_ABS)
        except Exception as exc:
            report.add(s.image, f"instance box {bbox}{src} is malformed ({exc})")
            continue
        t = _BOX_TOLERANCE
        if x1 < x0 or y1 < y0 or x0 < -t or y0 < -t or x1 > ref[0] + t or y1 > ref[1] + t:
            report.add(
                s.image,
                f"instance box {[round(float(v), 1) for v in bbox]}{src} is not inside the "
                f"{ref[0]}x{ref[1]} image",
            )


# ----------------------------------------------------------------------------- entry point


ON_BAD_AREA_CHOICES = ("error", "fix")


def check_on_bad_area(value: str, key: str = "DATALOADER.ON_BAD_AREA") -> str:
    """The mode, or a ValueError naming ``key`` and the allowed values."""
    if value not in ON_BAD_AREA_CHOICES:
        raise ValueError(f"{key}={value!r}; expected one of {list(ON_BAD_AREA_CHOICES)}")
    return value


def _write_fixed_json(plan: _Plan, cache_dir: str | os.PathLike) -> str:
    """A copy of the dataset's panoptic JSON with pixel-true areas/boxes, used from now on
    (the metadata's ``panoptic_json`` points to it: what the evaluator reads)."""
    source = _abs(plan.panoptic_json)
    with open(source) as f:
        data = json.load(f)
    fixed = 0
    examples = []
    for ann in data["annotations"]:
        for seg in ann.get("segments_info", []):
            hit = plan.fix_areas.get((ann.get("image_id"), seg.get("id")))
            if hit is None:
                continue
            count, box = hit
            if len(examples) < 3:
                examples.append(f"image {ann.get('image_id')} segment {seg['id']}: area "
                                f"{seg.get('area')} -> {count}")
            if "area" in seg:
                seg["area"] = int(count)
            if "bbox" in seg:
                seg["bbox"] = [int(v) for v in box]
            fixed += 1
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    path = Path(cache_dir) / "fixed" / f"{_stem(source)}-{digest}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
    logger.warning(
        "DATALOADER.ON_BAD_AREA fix: %d segment(s) of %s had a JSON area/bbox unlike their "
        "pixels (%s%s); dataset '%s' now reads the corrected copy %s",
        fixed, source, "; ".join(examples), ", ..." if fixed > 3 else "", plan.name, path)
    return str(path)


def validate_datasets(
    names: Sequence[str],
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    max_report: int = 5,
    use_cache: bool = True,
    on_bad_area: str = "error",
) -> ValidationReport:
    """Check every file of the registered datasets ``names``; raise if any is bad.

    Images must exist and decode (at the size the annotations give); panoptic PNGs must match
    their image and their JSON entry (segment ids both ways, known category ids); stuff PNGs
    must exist, match the image size and hold only stuff labels or the ignore label; instance
    annotations need in-range category ids and boxes inside the image. Raises
    :class:`DatasetValidationError` listing the first ``max_report`` bad files; returns the
    report when all is well. Decoding results are cached (see the module docstring);
    ``workers`` defaults to all cores. Every panoptic segment's JSON ``area``/``bbox`` must
    match its pixels; ``on_bad_area="fix"`` instead writes a corrected copy of the JSON
    (under ``cache_dir``) and points the dataset's metadata at it, with a warning.
    """
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    for name in names:
        if name not in DatasetCatalog:
            raise KeyError(unknown_dataset_message(name))
    start = time.perf_counter()
    report = ValidationReport(datasets=names)
    check_on_bad_area(on_bad_area, "on_bad_area")
    plans = [_plan_dataset(name, report) for name in names]
    if on_bad_area == "fix":
        for plan in plans:
            if plan.panoptic_json:
                plan.fix_areas = {}

    files: dict[tuple[str, str], None] = {}
    for plan in plans:
        for s in plan.samples:
            files[("image", s.image)] = None
            if s.sem_seg:
                files[("sem_seg", s.sem_seg)] = None
            if s.panoptic:
                files[("panoptic", s.panoptic)] = None
    cache_file = None
    if use_cache:
        cache_file = _cache_path(default_cache_dir() if cache_dir is None else cache_dir, names)
        report.cache_file = str(cache_file)
    facts = _inspect_all(files, report, workers, cache_file, progress)

    for plan in plans:
        before = report.reported
        for s in plan.samples:
            _check_sample(plan, s, facts, report)
        report.num_samples += len(plan.samples)
        if plan.load_error and not plan.found and report.reported == before:
            report.add(plan.name, plan.load_error)  # nothing found explains it: show it as is
    report.seconds = time.perf_counter() - start
    if not report.ok:
        raise DatasetValidationError(report.format(max_report), report)
    fixed: dict[str, str] = {}  # one corrected copy per JSON, shared by its datasets
    for plan in plans:
        if plan.fix_areas:
            source = _abs(plan.panoptic_json)
            if source not in fixed:
                fixed[source] = _write_fixed_json(
                    plan, default_cache_dir() if cache_dir is None else cache_dir)
            # Detectron2's Metadata refuses to change a set value; this is a deliberate
            # redirect to the same data with pixel-true areas
            SimpleNamespace.__setattr__(MetadataCatalog.get(plan.name), "panoptic_json",
                                        fixed[source])
    logger.info(report.format())
    return report
