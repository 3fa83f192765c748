"""Deterministic synthetic panoptic dataset in the real COCO file formats.

It exists so the whole Panoptic FPN pipeline (loaders, id maps, training, the three
evaluators) can be exercised in minutes on a CPU without downloading COCO. Files are exactly
what Detectron2 expects from COCO, so the same code paths run.

Categories (ids are deliberately non-contiguous so dataset-id <-> contiguous-id maps are
exercised):

====  ========  =======  ===========================================
id    name      isthing  appearance
====  ========  =======  ===========================================
1     circle    1        filled disc, red hues
3     square    1        filled rotated square, green hues
5     triangle  1        filled triangle, magenta hues
7     sky       0        light-blue vertical gradient, top band
8     ground    0        brown blotchy texture
10    water     0        dark-blue horizontal stripes
====  ========  =======  ===========================================

Layout under ``<root>/synthetic_panoptic/`` (``S`` in {train, val})::

    S/<12-digit image id>.jpg           RGB images, JPEG quality 95
    panoptic_S.json, panoptic_S/*.png   COCO panoptic (id = R + 256 G + 256^2 B, 0 = void)
    instances_S.json                    COCO detection, thing segments only, RLE masks
    panoptic_stuff_S/*.png              things -> 0, sky/ground/water -> 1/2/3, void -> 255
    params.json                         generation parameters (used to skip or refuse reruns)
"""

from __future__ import annotations

import colorsys
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from ..formats import write_panoptic_png
from ..utils.io import atomic_write, atomic_write_json, read_json_or_none
from .metadata import panoptic_separated_metadata, panoptic_standard_metadata, semantic_label_map

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DIRNAME",
    "SPLITS",
    "MIN_SEGMENT_AREA",
    "FORMAT_VERSION",
    "SyntheticSample",
    "SyntheticDatasetMismatch",
    "render_sample",
    "generate_synthetic_dataset",
    "synthetic_metadata",
    "synthetic_split_paths",
]

logger = logging.getLogger(__name__)

SYNTHETIC_DIRNAME = "synthetic_panoptic"
SPLITS: tuple[str, ...] = ("train", "val")
MIN_SEGMENT_AREA = 30  # visible pixels; smaller segments become void, like unlabeled slivers
FORMAT_VERSION = 1  # bump when the rendering changes, so old folders are not mistaken as current

SYNTHETIC_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 40, 40], "supercategory": "shape"},
    {"id": 3, "name": "square", "isthing": 1, "color": [40, 180, 60], "supercategory": "shape"},
    {"id": 5, "name": "triangle", "isthing": 1, "color": [200, 40, 200], "supercategory": "shape"},
    {"id": 7, "name": "sky", "isthing": 0, "color": [135, 190, 235], "supercategory": "scene"},
    {"id": 8, "name": "ground", "isthing": 0, "color": [140, 100, 60], "supercategory": "scene"},
    {"id": 10, "name": "water", "isthing": 0, "color": [30, 70, 160], "supercategory": "scene"},
]
_CAT_BY_NAME = {c["name"]: c for c in SYNTHETIC_CATEGORIES}
_THING_NAMES = [c["name"] for c in SYNTHETIC_CATEGORIES if c["isthing"]]
# Class hue centre in degrees; the model must learn shape and colour from scratch quickly.
_THING_HUE = {"circle": 0.0, "square": 120.0, "triangle": 300.0}
# Stuff bands from top to bottom; sky is always on top when present, like a horizon.
_STUFF_LAYOUTS: list[tuple[str, ...]] = [
    ("sky", "ground"),
    ("sky", "water"),
    ("sky", "water", "ground"),
    ("sky", "ground", "water"),
    ("ground", "water"),
]
_SPLIT_CODE = {"train": 0, "val": 1}
_IMAGE_ID_OFFSET = {"train": 0, "val": 1_000_000}  # ids unique across splits


class SyntheticDatasetMismatch(FileExistsError):
    """The target folder holds something other than what was asked for; pass force to replace."""


@dataclass
class SyntheticSample:
    """One rendered image with its panoptic ground truth (segment order = draw order)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    panoptic: np.ndarray  # (H, W) uint32 segment ids, 0 = void
    segments: list[dict[str, Any]]  # {"id", "category_id", "iscrowd", "bbox", "area"}


def synthetic_split_paths(root: str | os.PathLike, split: str) -> dict[str, str]:
    """Paths of one split, in the keyword names Detectron2's panoptic registration uses."""
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
    base = Path(root) / SYNTHETIC_DIRNAME
    return {
        "image_root": str(base / split),
        "panoptic_root": str(base / f"panoptic_{split}"),
        "panoptic_json": str(base / f"panoptic_{split}.json"),
        "sem_seg_root": str(base / f"panoptic_stuff_{split}"),
        "instances_json": str(base / f"instances_{split}.json"),
    }


def synthetic_metadata(style: str = "separated") -> dict[str, Any]:
    """Detectron2 metadata for the synthetic categories ("separated" or "standard" style)."""
    if style == "separated":
        return panoptic_separated_metadata(SYNTHETIC_CATEGORIES)
    if style == "standard":
        return panoptic_standard_metadata(SYNTHETIC_CATEGORIES)
    raise ValueError(f"unknown metadata style {style!r}; use 'separated' or 'standard'")


# ----------------------------------------------------------------------------- rendering


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v), np.float32) * 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)


def _stuff_texture(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Full-image texture for one stuff class; it is later cut to the class's band."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if name == "sky":
        top = _hsv(rng.uniform(195, 215), rng.uniform(0.35, 0.6), rng.uniform(0.85, 1.0))
        low = _hsv(rng.uniform(190, 210), rng.uniform(0.1, 0.25), rng.uniform(0.9, 1.0))
        tex = top + (low - top) * yy[..., None]
        noise_std = 3.0
    elif name == "ground":
        base = _hsv(rng.uniform(25, 40), rng.uniform(0.4, 0.65), rng.uniform(0.35, 0.55))
        blotch = 0.25 * _smooth_noise(rng, size, 8) + 0.1 * _smooth_noise(rng, size, 24)
        tex = base * (1.0 + blotch[..., None])
        noise_std = 10.0
    elif name == "water":
        base = _hsv(rng.uniform(215, 235), rng.uniform(0.6, 0.85), rng.uniform(0.4, 0.6))
        freq = rng.uniform(10.0, 20.0) * 2 * np.pi
        wobble = 0.15 * np.sin(xx * rng.uniform(4.0, 9.0) + rng.uniform(0, 2 * np.pi))
        stripes = 0.25 * np.sin(freq * (yy + 0.05 * wobble) + rng.uniform(0, 2 * np.pi))
        tex = base * (1.0 + stripes[..., None])
        noise_std = 5.0
    else:
        raise ValueError(f"no texture for stuff class {name!r}")
    return tex + rng.normal(0.0, noise_std, tex.shape).astype(np.float32)


def _stuff_layout(rng: np.random.Generator, size: int) -> tuple[tuple[str, ...], np.ndarray]:
    """Pick 2-3 horizontal bands separated by wavy horizons; returns band names and band map."""
    names = _STUFF_LAYOUTS[rng.integers(len(_STUFF_LAYOUTS))]
    n = len(names)
    # Evenly spaced base heights, jittered, so each band keeps >= ~15% of the image.
    bases = (np.arange(1, n) / n + rng.uniform(-0.08, 0.08, n - 1)) * size
    xs = np.arange(size, dtype=np.float32)
    band = np.zeros((size, size), np.int64)
    ys = np.arange(size, dtype=np.float32)[:, None]
    for b in bases:
        amp = rng.uniform(0.0, 0.05) * size
        period = rng.uniform(0.5, 1.5) * size
        curve = b + amp * np.sin(2 * np.pi * xs / period + rng.uniform(0, 2 * np.pi))
        band += (ys >= curve[None, :]).astype(np.int64)
    return names, band


def _thing_mask(
    kind: str, rng: np.random.Generator, size: int, frac_range: tuple[float, float], inside: bool
) -> np.ndarray:
    """Filled shape of side/diameter ``frac_range`` x image size; ``inside`` avoids truncation."""
    s = rng.uniform(*frac_range) * size
    margin = s / 2 if inside else s / 4
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0.0, 360.0)
    mask = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel precision for polygon vertices
    if kind == "circle":
        center = (int(round(cx * 16)), int(round(cy * 16)))
        cv2.circle(mask, center, int(round(s / 2 * 16)), 1, -1, cv2.LINE_8, shift)
    elif kind == "square":
        pts = cv2.boxPoints(((float(cx), float(cy)), (float(s), float(s)), float(angle)))
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift)
    elif kind == "triangle":
        r = s / 2 * 1.15  # equal-area-ish with the square of the same nominal size
        th = np.deg2rad(angle + np.array([0.0, 120.0, 240.0]) + rng.uniform(-12, 12, 3))
        pts = np.stack([cx + r * np.cos(th), cy + r * np.sin(th)], axis=1)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    return mask.astype(bool)


def _thing_color(kind: str, rng: np.random.Generator) -> np.ndarray:
    hue = _THING_HUE[kind] + rng.uniform(-15.0, 15.0)
    return _hsv(hue, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0))


def _bbox(mask: np.ndarray) -> list[int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def _unique_ids(rng: np.random.Generator, n: int) -> list[int]:
    """Random 24-bit segment ids like COCO's, so all three PNG channels are exercised."""
    ids: list[int] = []
    while len(ids) < n:
        cand = int(rng.integers(1, 256**3))
        if cand not in ids:
            ids.append(cand)
    return ids


def render_sample(seed: int, split: str, index: int, size: int = 128) -> SyntheticSample:
    """Render image ``index`` of ``split``; identical arguments always give identical output.

    Each image has its own random stream derived from (seed, split, index), so results do not
    depend on worker count or scheduling.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))

    names, band = _stuff_layout(rng, size)
    img = np.zeros((size, size, 3), np.float32)
    for i, name in enumerate(names):
        sel = band == i
        img[sel] = _stuff_texture(name, rng, size)[sel]

    # Things, painter's order: later shapes occlude earlier ones.
    owner = np.full((size, size), -1, np.int64)  # index into `kinds`, -1 = stuff
    kinds: list[str] = []

    def draw(frac_range: tuple[float, float], inside: bool) -> None:
        kind = _THING_NAMES[rng.integers(len(_THING_NAMES))]
        mask = _thing_mask(kind, rng, size, frac_range, inside)
        color = _thing_color(kind, rng)
        shade = 1.0 + 0.12 * _smooth_noise(rng, size, 3)[..., None]
        tex = color * shade + rng.normal(0.0, 6.0, (size, size, 3)).astype(np.float32)
        img[mask] = tex[mask]
        owner[mask] = len(kinds)
        kinds.append(kind)

    for _ in range(int(rng.integers(1, 7))):
        draw((0.10, 0.45), inside=False)

    # Void: an occasional dark frame and a few noise specks (unlabeled pixels, label 0).
    void = np.zeros((size, size), bool)
    if rng.random() < 0.25:
        w = int(rng.integers(1, 3))
        void[:w, :] = void[-w:, :] = void[:, :w] = void[:, -w:] = True
        img[void] = rng.uniform(0, 30, (int(void.sum()), 3))
    if rng.random() < 0.25:
        for _ in range(int(rng.integers(1, 4))):
            h, w = rng.integers(2, 5, 2)
            y, x = rng.integers(0, size - 4, 2)
            speck = np.zeros_like(void)
            speck[y : y + h, x : x + w] = True
            img[speck] = rng.uniform(0, 255, (int(speck.sum()), 3))
            void |= speck

    def visible_things() -> list[int]:
        return [k for k in range(len(kinds)) if ((owner == k) & ~void).sum() >= MIN_SEGMENT_AREA]

    # Detectron2's training loader drops images without instances; guarantee at least one.
    for _ in range(20):
        if visible_things():
            break
        draw((0.25, 0.45), inside=True)
    else:  # pragma: no cover - needs a pathological size
        raise RuntimeError(f"could not place a visible thing in a {size}px image")

    # Collect final visible segments: things first (draw order), then stuff bands.
    regions: list[tuple[int, np.ndarray]] = []
    for k, kind in enumerate(kinds):
        regions.append((_CAT_BY_NAME[kind]["id"], (owner == k) & ~void))
    for i, name in enumerate(names):
        regions.append((_CAT_BY_NAME[name]["id"], (band == i) & (owner < 0) & ~void))
    kept = [(cid, m) for cid, m in regions if int(m.sum()) >= MIN_SEGMENT_AREA]
    ids = _unique_ids(rng, len(kept))
    panoptic = np.zeros((size, size), np.uint32)
    segments = []
    for sid, (cid, m) in zip(ids, kept, strict=True):
        panoptic[m] = sid
        segments.append(
            {"id": sid, "category_id": cid, "iscrowd": 0, "bbox": _bbox(m), "area": int(m.sum())}
        )
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return SyntheticSample(image=image, panoptic=panoptic, segments=segments)


# ----------------------------------------------------------------------------- writing

_SEMANTIC_LABEL = semantic_label_map(SYNTHETIC_CATEGORIES)
_THING_IDS = {c["id"] for c in SYNTHETIC_CATEGORIES if c["isthing"]}


def _write_one(task: tuple[str, str, int, int, int]) -> dict[str, Any]:
    """Worker: render one image and write its three files; returns its JSON entries."""
    out_dir, split, index, seed, size = task
    cv2.setNumThreads(1)
    sample = render_sample(seed, split, index, size)
    image_id = _IMAGE_ID_OFFSET[split] + index + 1
    stem = f"{image_id:012d}"
    base = Path(out_dir)
    Image.fromarray(sample.image).save(base / split / f"{stem}.jpg", quality=95)
    write_panoptic_png(str(base / f"panoptic_{split}" / f"{stem}.png"), sample.panoptic)
    sem = np.full((size, size), 255, np.uint8)
    instances = []
    for seg in sample.segments:
        m = sample.panoptic == seg["id"]
        sem[m] = _SEMANTIC_LABEL[seg["category_id"]]
        if seg["category_id"] in _THING_IDS:
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            instances.append(
                {
                    "image_id": image_id,
                    "category_id": seg["category_id"],
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                    "area": seg["area"],
                    "bbox": [float(v) for v in seg["bbox"]],
                    "iscrowd": 0,
                }
            )
    Image.fromarray(sem, mode="L").save(base / f"panoptic_stuff_{split}" / f"{stem}.png")
    return {
        "image": {"id": image_id, "file_name": f"{stem}.jpg", "height": size, "width": size},
        "panoptic": {
            "image_id": image_id,
            "file_name": f"{stem}.png",
            "segments_info": sample.segments,
        },
        "instances": instances,
    }


def _params(seed: int, num_train: int, num_val: int, size: int) -> dict[str, int]:
    return {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
    }


def _looks_complete(dataset_dir: Path, params: dict[str, int]) -> bool:
    for split, n in (("train", params["num_train"]), ("val", params["num_val"])):
        paths = synthetic_split_paths(dataset_dir.parent, split)
        for key in ("panoptic_json", "instances_json"):
            if not os.path.isfile(paths[key]):
                return False
        folders = (("image_root", ".jpg"), ("panoptic_root", ".png"), ("sem_seg_root", ".png"))
        for key, ext in folders:
            folder = paths[key]
            if not os.path.isdir(folder):
                return False
            if sum(1 for f in os.listdir(folder) if f.endswith(ext)) != n:
                return False
    return True


def _write_split(
    out_dir: Path, split: str, n: int, seed: int, size: int, workers: int, progress: bool
) -> None:
    for sub in (split, f"panoptic_{split}", f"panoptic_stuff_{split}"):
        (out_dir / sub).mkdir(parents=True)
    tasks = [(str(out_dir), split, i, seed, size) for i in range(n)]
    bar = dict(total=n, desc=f"synthetic {split}", unit="img", disable=not progress)
    if workers <= 1 or n < 8:
        results = [_write_one(t) for t in tqdm(tasks, **bar)]
    else:
        with multiprocessing.Pool(min(workers, n)) as pool:
            results = list(tqdm(pool.imap(_write_one, tasks, chunksize=4), **bar))
    images = [r["image"] for r in results]
    annotations = [r["panoptic"] for r in results]
    instances = [a for r in results for a in r["instances"]]
    for i, ann in enumerate(instances):
        ann["id"] = i + 1
    thing_cats = [
        {k: c[k] for k in ("id", "name", "supercategory")}
        for c in SYNTHETIC_CATEGORIES
        if c["isthing"]
    ]
    info = {"description": "panoptic_ext synthetic shapes", "version": str(FORMAT_VERSION)}
    panoptic = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in SYNTHETIC_CATEGORIES],
    }
    detection = {"info": info, "images": images, "annotations": instances, "categories": thing_cats}
    atomic_write_json(out_dir / f"panoptic_{split}.json", panoptic)
    atomic_write_json(out_dir / f"instances_{split}.json", detection)


def generate_synthetic_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    num_train: int = 300,
    num_val: int = 50,
    size: int = 128,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Create ``<root>/synthetic_panoptic``; returns (its path, whether anything was written).

    An existing folder made with the same parameters is kept as is (cheap re-runs); anything
    else there is only replaced with ``force`` so nobody's data is overwritten by accident.
    Files are built in a temporary sibling folder and moved in at the end, so an interrupted
    run never leaves a half-written dataset that later looks complete.
    """
    for name, value, low in (
        ("seed", seed, 0),
        ("num_train", num_train, 1),
        ("num_val", num_val, 1),
        ("size", size, 64),
    ):
        if not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    root = Path(root)
    dataset_dir = root / SYNTHETIC_DIRNAME
    params = _params(int(seed), int(num_train), int(num_val), int(size))
    stamp = dataset_dir / "params.json"

    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise SyntheticDatasetMismatch(f"{dataset_dir} exists and is not a folder; move it away")
    if dataset_dir.exists():
        old = read_json_or_none(stamp)
        if old == params and _looks_complete(dataset_dir, params):
            logger.info("%s already holds this dataset (%s); nothing to do", dataset_dir, params)
            return dataset_dir, False
        if not force:
            if old is None:
                why = "it has no readable params.json (not made by this tool, or interrupted)"
            elif old == params:
                why = "files are missing or extra compared with params.json"
            else:
                diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
                why = "it was made with different parameters (existing, requested): " + ", ".join(
                    f"{k}={a!r}->{b!r}" for k, (a, b) in diff.items()
                )
            raise SyntheticDatasetMismatch(
                f"{dataset_dir} exists but {why}. Re-run with --force (force=True) to replace it, "
                "or choose another --root."
            )

    root.mkdir(parents=True, exist_ok=True)
    workers = (os.cpu_count() or 1) if workers is None else workers
    tmp = Path(tempfile.mkdtemp(prefix=f".{SYNTHETIC_DIRNAME}.tmp-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
    try:
        for split, n in (("train", num_train), ("val", num_val)):
            _write_split(tmp, split, n, int(seed), int(size), workers, progress)
        atomic_write(tmp / "params.json", json.dumps(params, indent=2) + "\n")
        if dataset_dir.exists():
            logger.warning("Replacing %s (force)", dataset_dir)
            shutil.rmtree(dataset_dir)
        os.replace(tmp, dataset_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Wrote synthetic panoptic dataset to %s (%s)", dataset_dir, params)
    return dataset_dir, True
