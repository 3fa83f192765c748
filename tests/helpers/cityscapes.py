"""A tiny Cityscapes download, in the real file formats, for the Cityscapes tests.

Each image is 64x128 (H x W): sky over buildings over road, a car and a person (instances),
a crowd of cars (no instance id, so iscrowd), and an ego-vehicle strip (ignoreInEval, void).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 64, 128
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
SKY, BUILDING, ROAD, PERSON, CAR, EGO = 23, 11, 7, 24, 26, 1


def _maps(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelIds uint8, instanceIds int) of image k; shapes move with k."""
    label = np.full((H, W), BUILDING, np.uint8)
    label[:16] = SKY
    label[40:] = ROAD
    label[60:] = EGO
    inst = label.astype(np.int32)
    x = 8 + 6 * k
    label[30:50, x:x + 30] = CAR
    inst[30:50, x:x + 30] = CAR * 1000 + 1
    label[20:52, 80:90] = PERSON
    inst[20:52, 80:90] = PERSON * 1000 + 1
    label[44:56, 100:124] = CAR  # a group of cars: label id only, no instance id
    inst[44:56, 100:124] = CAR
    return label, inst


def _polygons(label: np.ndarray) -> dict:
    names = {SKY: "sky", BUILDING: "building", ROAD: "road", PERSON: "person", CAR: "car",
             EGO: "ego vehicle"}
    objects = []
    for lid, name in names.items():
        ys, xs = np.nonzero(label == lid)
        if len(xs):
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
            objects.append({"label": name, "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]})
    return {"imgHeight": H, "imgWidth": W, "objects": objects}


def write_cityscapes_tree(root: Path, splits: tuple[str, ...] = ("train", "val"),
                          per_city: int = 2) -> list[Path]:
    """Write ``root/cityscapes/{leftImg8bit,gtFine}/<split>/<city>/...``; returns the
    instanceIds PNGs written."""
    rng = np.random.default_rng(0)
    written = []
    k = 0
    for split in splits:
        for city in CITIES[split]:
            img_dir = root / "cityscapes" / "leftImg8bit" / split / city
            gt_dir = root / "cityscapes" / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            for i in range(per_city):
                stem = f"{city}_{i:06d}_{19 + i:06d}"
                label, inst = _maps(k)
                k += 1
                Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
                    img_dir / f"{stem}_leftImg8bit.png")
                Image.fromarray(label).save(gt_dir / f"{stem}_gtFine_labelIds.png")
                Image.fromarray(inst.astype(np.uint16)).save(
                    gt_dir / f"{stem}_gtFine_instanceIds.png")
                with open(gt_dir / f"{stem}_gtFine_polygons.json", "w") as f:
                    json.dump(_polygons(label), f)
                written.append(gt_dir / f"{stem}_gtFine_instanceIds.png")
    return written


def touch_later(path: os.PathLike, seconds: float = 10.0) -> None:
    """Make ``path`` look modified after everything derived from it."""
    st = os.stat(path)
    os.utime(path, (st.st_atime + seconds, st.st_mtime + seconds))
