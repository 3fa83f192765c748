"""Convert COCO panoptic PNGs into the semantic PNGs that Panoptic FPN trains on.

Detectron2's "separated" COCO panoptic datasets read their semantic targets from
``coco/panoptic_stuff_{split}/``: one single-channel PNG per image in which every thing pixel
is 0, stuff categories are 1..K in ascending category-id order and void is 255. Those files
are not shipped with COCO, so this module derives them from the official panoptic
annotations. The label mapping is computed from the JSON's ``categories`` so any COCO-style
panoptic category set works, not only COCO's 80 things + 53 stuff.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..formats import (
    PanopticFormatError,
    describe_segment_mismatch,
    load_panoptic_json,
    read_panoptic_png,
    segment_mismatch,
)
from ..utils.io import atomic_writer
from .metadata import VOID_LABEL, default_datasets_root, semantic_label_map

__all__ = [
    "DEFAULT_SPLITS",
    "ConversionStats",
    "convert_panoptic_to_semantic",
    "prepare_coco_panoptic_fpn",
]

logger = logging.getLogger(__name__)

DEFAULT_SPLITS: tuple[str, ...] = ("train2017", "val2017")
_ARCHIVE_HINT = "re-extract it from the COCO panoptic annotation archive"


@dataclass
class ConversionStats:
    """Counts reported after converting one split, so the user sees what was (not) rewritten."""

    written: int = 0
    refreshed: int = 0
    up_to_date: int = 0

    @property
    def total(self) -> int:
        return self.written + self.refreshed + self.up_to_date


_Task = tuple[str, str, dict[int, int], Any, tuple[int, int] | None, str]  # one PNG to convert


def _convert_one(task: _Task) -> str:
    """Worker: convert one panoptic PNG; returns the output path."""
    src, dst, seg_to_label, image_id, expected_hw, json_name = task
    try:
        ids = read_panoptic_png(src, image_id, allow_alpha=False)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc} It is listed in the JSON; {_ARCHIVE_HINT}.") from None
    if expected_hw is not None and ids.shape != expected_hw:
        raise PanopticFormatError(
            f"{src}: PNG is {ids.shape[1]}x{ids.shape[0]} (WxH) but the JSON image entry "
            f"{image_id} says {expected_hw[1]}x{expected_hw[0]}"
        )
    uniq, inverse = np.unique(ids, return_inverse=True)
    problems = describe_segment_mismatch(*segment_mismatch(uniq, seg_to_label), json_name)
    if problems:
        raise PanopticFormatError(f"{src}: image {image_id}: " + "; ".join(problems))
    lut = np.array([seg_to_label.get(int(u), VOID_LABEL) for u in uniq], dtype=np.uint8)
    sem = lut[inverse.reshape(-1)].reshape(ids.shape)
    # Atomic: an interrupted run never leaves a truncated file that looks fresh by its mtime.
    with atomic_writer(dst, "wb") as f:
        Image.fromarray(sem).save(f, format="PNG")
    return dst


def _build_tasks(
    json_data: dict[str, Any], json_path: str, panoptic_root: str, sem_seg_root: str
) -> list[_Task]:
    cat_to_label = semantic_label_map(json_data["categories"])
    sizes = {
        img["id"]: (int(img["height"]), int(img["width"]))
        for img in json_data.get("images", [])
        if "height" in img and "width" in img
    }
    tasks = []
    out_names: set[str] = set()
    for ann in json_data["annotations"]:
        image_id = ann.get("image_id")
        file_name = ann.get("file_name")
        if file_name is None or "segments_info" not in ann:
            raise PanopticFormatError(
                f"{json_path}: annotation for image {image_id} lacks 'file_name' or 'segments_info'"
            )
        seg_to_label: dict[int, int] = {}
        for seg in ann["segments_info"]:
            sid, cid = int(seg["id"]), int(seg["category_id"])
            if sid == 0:
                raise PanopticFormatError(
                    f"{json_path}: image {image_id} uses segment id 0, which is reserved for void"
                )
            if sid in seg_to_label:
                raise PanopticFormatError(
                    f"{json_path}: image {image_id} lists segment id {sid} twice"
                )
            if cid not in cat_to_label:
                raise PanopticFormatError(
                    f"{json_path}: image {image_id} segment {sid} has category_id {cid}, "
                    "which is not in 'categories'"
                )
            seg_to_label[sid] = cat_to_label[cid]
        out_name = os.path.splitext(file_name)[0] + ".png"
        if out_name in out_names:
            raise PanopticFormatError(f"{json_path}: file_name {file_name} is used twice")
        out_names.add(out_name)
        tasks.append(
            (
                os.path.join(panoptic_root, file_name),
                os.path.join(sem_seg_root, out_name),
                seg_to_label,
                image_id,
                sizes.get(image_id),
                os.path.basename(json_path),
            )
        )
    return tasks


def _is_up_to_date(dst: str, sources: Iterable[str]) -> bool:
    try:
        out_mtime = os.path.getmtime(dst)
    except OSError:
        return False
    return all(out_mtime >= os.path.getmtime(s) for s in sources if os.path.exists(s))


def convert_panoptic_to_semantic(
    panoptic_json: str | os.PathLike,
    panoptic_root: str | os.PathLike,
    sem_seg_root: str | os.PathLike,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> ConversionStats:
    """Write one Panoptic-FPN semantic PNG per annotation of ``panoptic_json``.

    Outputs newer than both their source PNG and the JSON are kept (cheap re-runs); stale
    ones are rewritten and counted; files in ``sem_seg_root`` that no annotation produces are
    never touched. ``force`` rewrites every output.
    """
    panoptic_json, panoptic_root, sem_seg_root = map(
        os.fspath, (panoptic_json, panoptic_root, sem_seg_root)
    )
    data = load_panoptic_json(panoptic_json)
    tasks = _build_tasks(data, panoptic_json, panoptic_root, sem_seg_root)
    if os.path.exists(sem_seg_root) and not os.path.isdir(sem_seg_root):
        raise FileExistsError(f"{sem_seg_root} exists and is not a folder; move it away")
    os.makedirs(sem_seg_root, exist_ok=True)

    stats = ConversionStats()
    todo = []
    for task in tasks:
        src, dst = task[0], task[1]
        if not force and _is_up_to_date(dst, (src, panoptic_json)):
            stats.up_to_date += 1
        elif os.path.exists(dst):
            stats.refreshed += 1
            todo.append(task)
        else:
            stats.written += 1
            todo.append(task)

    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    desc = f"panoptic->semantic {os.path.basename(sem_seg_root)}"
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    with bar:
        if workers == 1 or len(todo) < 2:
            for task in todo:
                _convert_one(task)
                bar.update()
        else:
            with multiprocessing.Pool(min(workers, len(todo))) as pool:
                for _ in pool.imap_unordered(_convert_one, todo, chunksize=8):
                    bar.update()
    logger.info(
        "%s: %d written, %d refreshed (older than source), %d already up to date",
        sem_seg_root,
        stats.written,
        stats.refreshed,
        stats.up_to_date,
    )
    return stats


def prepare_coco_panoptic_fpn(
    root: str | os.PathLike | None = None,
    splits: Sequence[str] = DEFAULT_SPLITS,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, ConversionStats]:
    """Create ``coco/panoptic_stuff_{split}/`` for every split present under ``root``.

    A split with neither its JSON nor its PNG folder is reported and skipped (people often
    download only val); a split with just one of the two is an error, since that is a broken
    download rather than a choice. Returns stats for the converted splits.
    """
    coco = Path(default_datasets_root() if root is None else root) / "coco"
    results: dict[str, ConversionStats] = {}
    for split in splits:
        pan_json = coco / "annotations" / f"panoptic_{split}.json"
        pan_root = coco / f"panoptic_{split}"
        has_json, has_root = pan_json.is_file(), pan_root.is_dir()
        if not has_json and not has_root:
            logger.warning("Skipping split %s: neither %s nor %s exists", split, pan_json, pan_root)
            continue
        if not (has_json and has_root):
            missing = pan_root if has_json else pan_json
            raise FileNotFoundError(
                f"{missing} is missing but the rest of split {split} is there; extract the COCO "
                f"panoptic annotations (annotations/panoptic_{split}.json and the "
                f"panoptic_{split}.zip inside it) into {coco}"
            )
        results[split] = convert_panoptic_to_semantic(
            pan_json, pan_root, coco / f"panoptic_stuff_{split}", workers, force, progress
        )
    return results
