"""Convert COCO panoptic PNGs into the semantic PNGs that Panoptic FPN trains on.

Detectron2's "separated" COCO panoptic datasets read their semantic targets from
``coco/panoptic_stuff_{split}/``: one single-channel PNG per image in which every thing pixel
is 0, stuff categories are 1..K in ascending category-id order and void is 255. Those files
are not shipped with COCO, so this module derives them from the official panoptic
annotations. The label mapping is computed from the JSON's ``categories`` so any COCO-style
panoptic category set works, not only COCO's 80 things + 53 stuff.
"""

from __future__ import annotations

import json
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

__all__ = [
    "DEFAULT_SPLITS",
    "PanopticFormatError",
    "ConversionStats",
    "default_datasets_root",
    "id_to_rgb",
    "rgb_to_id",
    "semantic_label_map",
    "convert_panoptic_to_semantic",
    "prepare_coco_panoptic_fpn",
]

logger = logging.getLogger(__name__)

DEFAULT_SPLITS: tuple[str, ...] = ("train2017", "val2017")
THING_LABEL = 0
VOID_LABEL = 255


class PanopticFormatError(ValueError):
    """Raised when panoptic annotations are inconsistent; the message names the file."""


@dataclass
class ConversionStats:
    """Counts reported after converting one split, so the user sees what was (not) rewritten."""

    written: int = 0
    refreshed: int = 0
    up_to_date: int = 0

    @property
    def total(self) -> int:
        return self.written + self.refreshed + self.up_to_date


def default_datasets_root() -> str:
    """Same lookup as Detectron2's builtin datasets, so both find the same files."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Decode a COCO panoptic PNG (H, W, 3) into segment ids: id = R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Encode segment ids (< 2^24) as the RGB triplets COCO panoptic PNGs store."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("panoptic segment ids must be in [0, 2^24)")
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, (ids // 256) % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def semantic_label_map(categories: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Category id -> semantic label: things 0, stuff 1..K by ascending id (Detectron2's order).

    The order must match ``stuff_dataset_id_to_contiguous_id`` in the separated metadata, which
    Detectron2 builds from stuff categories sorted by id.
    """
    seen: set[int] = set()
    for cat in categories:
        if "id" not in cat or "isthing" not in cat:
            raise PanopticFormatError(f"category {cat!r} lacks 'id' or 'isthing'")
        if cat["id"] in seen:
            raise PanopticFormatError(f"category id {cat['id']} appears twice in 'categories'")
        seen.add(cat["id"])
    stuff_ids = sorted(int(c["id"]) for c in categories if not c["isthing"])
    if len(stuff_ids) >= VOID_LABEL:
        raise PanopticFormatError(
            f"{len(stuff_ids)} stuff categories do not fit in a uint8 PNG with 255 as void"
        )
    mapping = {int(c["id"]): THING_LABEL for c in categories if c["isthing"]}
    mapping.update({cid: i + 1 for i, cid in enumerate(stuff_ids)})
    return mapping


def _read_panoptic_png(path: str) -> np.ndarray:
    """Read a panoptic PNG as segment ids, turning PIL's many failure modes into one message."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: panoptic PNG listed in the JSON is missing; re-extract the COCO panoptic "
            "annotation archive"
        )
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except Exception as exc:  # PIL raises several unrelated types for corrupt files
        raise PanopticFormatError(
            f"{path}: cannot read panoptic PNG ({exc}); the file is corrupt or not a PNG, "
            "re-extract it from the COCO panoptic annotation archive"
        ) from exc
    if mode != "RGB" or arr.ndim != 3 or arr.shape[2] != 3:
        raise PanopticFormatError(
            f"{path}: panoptic PNG must be RGB (id = R + 256 G + 256^2 B), got mode {mode}"
        )
    return rgb_to_id(arr)


def _convert_one(task: tuple[str, str, dict[int, int], int, tuple[int, int] | None]) -> str:
    """Worker: convert one panoptic PNG; returns the output path."""
    src, dst, seg_to_label, image_id, expected_hw = task
    ids = _read_panoptic_png(src)
    if expected_hw is not None and ids.shape != expected_hw:
        raise PanopticFormatError(
            f"{src}: PNG is {ids.shape[1]}x{ids.shape[0]} (WxH) but the JSON image entry "
            f"{image_id} says {expected_hw[1]}x{expected_hw[0]}"
        )
    uniq, inverse = np.unique(ids, return_inverse=True)
    present = {int(u) for u in uniq}
    missing = sorted(set(seg_to_label) - present)
    if missing:
        raise PanopticFormatError(
            f"{src}: image {image_id} has segment id(s) {missing} in the JSON's segments_info "
            "but not in the PNG"
        )
    unknown = sorted(present - set(seg_to_label) - {0})
    if unknown:
        raise PanopticFormatError(
            f"{src}: image {image_id} has segment id(s) {unknown[:10]} in the PNG that the JSON's "
            "segments_info does not list"
        )
    lut = np.array([seg_to_label.get(int(u), VOID_LABEL) for u in uniq], dtype=np.uint8)
    sem = lut[inverse.reshape(-1)].reshape(ids.shape)
    tmp = f"{dst}.tmp{os.getpid()}"
    Image.fromarray(sem, mode="L").save(tmp, format="PNG")
    os.replace(tmp, dst)  # atomic: an interrupted run never leaves a truncated, "fresh" file
    return dst


def _build_tasks(
    json_data: dict[str, Any], json_path: str, panoptic_root: str, sem_seg_root: str
) -> list[tuple[str, str, dict[int, int], int, tuple[int, int] | None]]:
    for key in ("annotations", "categories"):
        if key not in json_data:
            raise PanopticFormatError(f"{json_path}: missing '{key}'; is it a COCO panoptic JSON?")
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
    try:
        with open(panoptic_json) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise PanopticFormatError(f"{panoptic_json}: not valid JSON ({exc})") from exc
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
