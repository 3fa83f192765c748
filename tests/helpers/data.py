"""Data the data-layer tests build: a user's COCO-panoptic folder, and the datasets/ scripts."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from panoptic_ext.data import id_to_rgb, render_sample
from tests.helpers.tools import REPO

FOLDER_SIZE = 64
# Synthetic category -> ours; square and triangle become one thing class, ground and water one
# stuff class (their segments are merged, as COCO has one segment per stuff class and image).
# Unusual ids on purpose: things 7 and 1000, stuff 42 and 3.
FOLDER_CATEGORIES: dict[int, dict[str, Any]] = {
    7: {"id": 7, "name": "disc", "isthing": 1},  # no colour: one is made up
    1000: {"id": 1000, "name": "block", "isthing": 1, "color": [10, 200, 10]},
    42: {"id": 42, "name": "sky", "isthing": 0, "color": [130, 190, 240]},
    3: {"id": 3, "name": "land", "isthing": 0, "color": [120, 90, 60]},
}
_REMAP = {1: 7, 3: 1000, 5: 1000, 7: 42, 8: 3, 10: 3}


def load_script(name: str) -> ModuleType:
    """``datasets/<name>.py`` as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "datasets", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_panoptic_folder(root: Path, split: str, n: int, keep_things: bool = True,
                          keep_stuff: bool = True) -> tuple[str, str, str]:
    """A user's COCO-panoptic folder: images/<split>/*.png, panoptic/<split>/*.png and
    <split>.json with :data:`FOLDER_CATEGORIES` (unsorted). Returns (image root, JSON, PNG root).
    """
    cats = [c for c in FOLDER_CATEGORIES.values()
            if (keep_things if c["isthing"] else keep_stuff)]
    img_dir, pan_dir = root / "images" / split, root / "panoptic" / split
    img_dir.mkdir(parents=True)
    pan_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        s = render_sample(5, "train" if split == "train" else "val", i, size=FOLDER_SIZE)
        pan = s.panoptic.copy()
        segments, stuff_seg = [], {}
        for seg in s.segments:
            cid = _REMAP[seg["category_id"]]
            if not any(c["id"] == cid for c in cats):
                pan[pan == seg["id"]] = 0  # category dropped: void
                continue
            if not FOLDER_CATEGORIES[cid]["isthing"] and cid in stuff_seg:
                pan[pan == seg["id"]] = stuff_seg[cid]  # one segment per stuff class
                continue
            if not FOLDER_CATEGORIES[cid]["isthing"]:
                stuff_seg[cid] = seg["id"]
            segments.append({"id": seg["id"], "category_id": cid, "iscrowd": 0})
        for seg in segments:
            m = pan == seg["id"]
            ys, xs = np.nonzero(m)
            seg["area"] = int(m.sum())
            seg["bbox"] = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        image_id = 100 + i
        stem = f"{split}_{i:03d}"
        Image.fromarray(s.image).save(img_dir / f"{stem}.png")  # not .jpg on purpose
        Image.fromarray(id_to_rgb(pan)).save(pan_dir / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.png", "height": FOLDER_SIZE,
                       "width": FOLDER_SIZE})
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                            "segments_info": segments})
    data = {"images": images, "annotations": annotations, "categories": cats[::-1]}
    (root / f"{split}.json").write_text(json.dumps(data))
    return str(img_dir), str(root / f"{split}.json"), str(pan_dir)


def panoptic_folders(base: Path) -> dict[str, dict[str, tuple[str, str, str]]]:
    """Three kinds of folder ("full", "stuffonly", "thingsonly"), each with a 4-image train
    and a 2-image val split; in full/train one thing segment is a crowd."""
    out = {}
    for kind, kw in (("full", {}), ("stuffonly", {"keep_things": False}),
                     ("thingsonly", {"keep_stuff": False})):
        root = base / kind
        root.mkdir()
        out[kind] = {split: write_panoptic_folder(root, split, n, **kw)
                     for split, n in (("train", 4), ("val", 2))}
    path = Path(out["full"]["train"][1])
    data = json.loads(path.read_text())
    segments = data["annotations"][0]["segments_info"]
    thing = next(s for s in segments if FOLDER_CATEGORIES[s["category_id"]]["isthing"])
    thing["iscrowd"] = 1
    path.write_text(json.dumps(data))
    return out


def edit_json(path: Path | str, fn: Any) -> None:
    """Apply ``fn`` to the JSON at ``path`` in place."""
    path = Path(path)
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def truncate(path: Path) -> None:
    """Cut a file in half, the commonest real corruption (an interrupted copy)."""
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
