"""Synthetic COCO panoptic ground truth and perturbed predictions: the PQ test fixtures.

What real panoptic data looks like to an evaluator (stuff background, overlapping things,
crowd regions, void pixels, 24-bit ids) and predictions with the usual failure modes (shifted,
split, merged, relabelled, missing and spurious segments), so that the tests check equality
with panopticapi on the cases that matter. Kept apart from ``pq_speed`` so the tests import
the data without the timing code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from panoptic_ext.evaluation import OFFSET

__all__ = [
    "synthetic_categories",
    "random_gt",
    "perturb_prediction",
    "write_panoptic_dataset",
    "make_synthetic_dataset",
    "compare_results",
]


def synthetic_categories(n_things: int = 12, n_stuff: int = 8, extra: int = 2) -> list[dict]:
    """COCO-style categories with non-contiguous ids; ``extra`` thing categories are meant to
    appear only in predictions."""
    cats = []
    for i in range(n_things + extra):
        cats.append({"id": 1 + 2 * i, "name": f"thing{i}", "isthing": 1, "supercategory": "t"})
    for i in range(n_stuff):
        cats.append({"id": 100 + 3 * i, "name": f"stuff{i}", "isthing": 0, "supercategory": "s"})
    return cats


def _random_polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    n = int(rng.integers(5, 12))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.5, 1.0, n)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
    return np.round(pts).astype(np.int32)


def _unique_ids(rng: np.random.Generator, n: int, small: bool) -> np.ndarray:
    """n distinct non-zero ids: random 24-bit ones like COCO's RGB ids, or small ones."""
    if small:
        return rng.permutation(np.arange(1, 4 * n + 8))[:n].astype(np.int64)
    ids: list[int] = []
    seen: set[int] = set()
    while len(ids) < n:
        for v in rng.integers(1, OFFSET, size=n).tolist():
            if v not in seen and len(ids) < n:
                seen.add(v)
                ids.append(v)
    return np.asarray(ids, dtype=np.int64)


def random_gt(
    rng: np.random.Generator,
    categories: Sequence[Mapping[str, Any]],
    height: int = 480,
    width: int = 640,
    n_segments: tuple[int, int] = (10, 40),
    crowd_prob: float = 0.15,
    void_prob: float = 0.7,
    pred_only: Sequence[Any] = (),
    small_ids: bool = False,
) -> tuple[np.ndarray, list[dict]]:
    """Random ground truth: stuff bands, occluding thing polygons/ellipses, crowd, void."""
    things = [c["id"] for c in categories if c["isthing"] == 1 and c["id"] not in pred_only]
    stuff = [c["id"] for c in categories if c["isthing"] != 1 and c["id"] not in pred_only]
    total = int(rng.integers(n_segments[0], n_segments[1] + 1))
    scale = max(height, width) / 640  # shape sizes follow the image size
    labels = np.zeros((height, width), dtype=np.int32)  # index into seg_cats (1-based)
    seg_cats: list[Any] = []
    seg_crowd: list[int] = []

    n_stuff = min(len(stuff), max(0, int(rng.integers(0, min(6, total) + 1))))
    if n_stuff:
        chosen = rng.choice(len(stuff), size=n_stuff, replace=False)
        bounds = np.sort(rng.integers(0, height, size=n_stuff - 1))
        edges = [0, *bounds.tolist(), height]
        for k, ci in enumerate(chosen):
            seg_cats.append(stuff[int(ci)])
            seg_crowd.append(0)
            y0, y1 = edges[k], edges[k + 1]
            if y1 > y0:
                labels[y0:y1] = len(seg_cats)
            # wavy boundary with the next band
            poly = _random_polygon(rng, rng.uniform(0, width), (y0 + y1) / 2,
                                   scale * rng.uniform(20, 120))
            cv2.fillPoly(labels, [poly], len(seg_cats))
    for _ in range(max(0, total - n_stuff)):
        if not things:
            break
        cat = things[int(rng.integers(len(things)))]
        crowd = int(rng.random() < crowd_prob)
        seg_cats.append(cat)
        seg_crowd.append(crowd)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = scale * rng.uniform(8, 90) * (1.5 if crowd else 1.0)
        if rng.random() < 0.5:
            cv2.fillPoly(labels, [_random_polygon(rng, cx, cy, r)], len(seg_cats))
        else:
            axes = (int(r), int(r * rng.uniform(0.3, 1.0)))
            cv2.ellipse(labels, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360,
                        len(seg_cats), -1)
    if rng.random() < void_prob:  # void blobs and a void border, as around COCO objects
        for _ in range(int(rng.integers(1, 6))):
            poly = _random_polygon(rng, rng.uniform(0, width), rng.uniform(0, height),
                                   scale * rng.uniform(3, 40))
            cv2.fillPoly(labels, [poly], 0)
        if rng.random() < 0.5:
            labels[: int(rng.integers(1, 6))] = 0
    ids = np.concatenate([[0], _unique_ids(rng, len(seg_cats), small_ids)])
    id_map = ids[labels].astype(np.uint32)
    areas = np.bincount(labels.ravel(), minlength=len(seg_cats) + 1)
    segments = []
    for k, (cat, crowd) in enumerate(zip(seg_cats, seg_crowd, strict=True)):
        if areas[k + 1] == 0:
            continue
        segments.append({"id": int(ids[k + 1]), "category_id": cat, "iscrowd": crowd,
                         "area": int(areas[k + 1]), "bbox": [0, 0, 0, 0]})
    rng.shuffle(segments)
    return id_map, segments


def perturb_prediction(
    rng: np.random.Generator,
    gt_map: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    strength: float = 1.0,
    small_ids: bool = False,
) -> tuple[np.ndarray, list[dict]]:
    """A prediction derived from the ground truth with typical errors.

    Per segment: keep, shift, dilate/erode, relabel to a random category, split in two,
    merge into a same-category neighbour, or drop (to void or to a neighbour); plus spurious
    blobs (also of categories only predictions use) and void pixels.
    """
    h, w = gt_map.shape
    scale = max(h, w) / 640
    all_cats = [c["id"] for c in categories]
    segs = list(gt_segments)
    out = np.zeros((h, w), dtype=np.int64)  # temporary labels: 1-based index into cats
    cats: list[Any] = []
    # stuff first so that things are painted over them, as a model would
    isthing = {c["id"]: c["isthing"] == 1 for c in categories}
    order = sorted(range(len(segs)), key=lambda k: isthing.get(segs[k]["category_id"], True))
    merge_target: dict = {}
    for k in order:
        seg = segs[k]
        mask = gt_map == seg["id"]
        if not mask.any():
            continue
        action = rng.random() / max(strength, 1e-6)
        cat = seg["category_id"]
        if action < 0.08:  # dropped
            continue
        if action < 0.16:  # shifted
            reach = max(1, round(12 * scale))
            dy, dx = rng.integers(-reach, reach + 1, size=2)
            mask = np.roll(mask, (int(dy), int(dx)), axis=(0, 1))
        elif action < 0.24:  # dilated / eroded
            kernel = np.ones((int(rng.integers(2, max(3, round(12 * scale)))),) * 2, np.uint8)
            op = cv2.dilate if rng.random() < 0.5 else cv2.erode
            mask = op(mask.astype(np.uint8), kernel).astype(bool)
        elif action < 0.30:  # wrong category
            cat = all_cats[int(rng.integers(len(all_cats)))]
        if action < 0.36 and action >= 0.30 and mask.sum() > 20:  # split in two
            ys, xs = np.nonzero(mask)
            cut = np.median(xs)
            left = mask.copy()
            left[:, int(cut):] = False
            cats.append(cat)
            out[left] = len(cats)
            mask = mask & ~left
        elif action < 0.42 and action >= 0.36 and cat in merge_target:  # merged
            out[mask] = merge_target[cat]
            continue
        cats.append(cat)
        out[mask] = len(cats)
        merge_target.setdefault(cat, len(cats))
    for _ in range(int(rng.integers(0, 4 * strength + 1))):  # spurious segments
        cats.append(all_cats[int(rng.integers(len(all_cats)))])
        poly = _random_polygon(rng, rng.uniform(0, w), rng.uniform(0, h),
                               scale * rng.uniform(5, 60))
        tmp = np.zeros((h, w), np.uint8)
        cv2.fillPoly(tmp, [poly], 1)
        out[tmp.astype(bool)] = len(cats)
    if rng.random() < 0.5 * strength:  # void in the prediction
        poly = _random_polygon(rng, rng.uniform(0, w), rng.uniform(0, h),
                               scale * rng.uniform(5, 50))
        tmp = np.zeros((h, w), np.uint8)
        cv2.fillPoly(tmp, [poly], 1)
        out[tmp.astype(bool)] = 0
    counts = np.bincount(out.ravel(), minlength=len(cats) + 1)
    present = np.flatnonzero(counts[1:]) + 1
    ids = _unique_ids(rng, len(present), small_ids)
    remap = np.zeros(len(cats) + 1, dtype=np.int64)
    remap[present] = ids
    pred_map = remap[out].astype(np.uint32)
    segments = [
        {"id": int(i), "category_id": cats[int(p) - 1], "area": int(counts[p]), "iscrowd": 0}
        for p, i in zip(present.tolist(), ids.tolist(), strict=True)
    ]
    rng.shuffle(segments)
    return pred_map, segments


def _write_png(path: str, id_map: np.ndarray) -> None:
    ids = id_map.astype(np.uint32)
    bgr = np.stack([(ids >> 16) & 255, (ids >> 8) & 255, ids & 255], axis=-1).astype(np.uint8)
    if not cv2.imwrite(path, bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def write_panoptic_dataset(
    root: str,
    name: str,
    images: Sequence[Mapping[str, Any]],
    annotations: Sequence[tuple[np.ndarray, Mapping[str, Any]]],
    categories: Sequence[Mapping[str, Any]],
) -> str:
    """Write ``root/name.json`` and PNGs under ``root/name/``; returns the json path.

    ``annotations`` holds (id map, annotation without PNG) pairs; the annotation's
    ``file_name`` names the PNG.
    """
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    anns = []
    for id_map, ann in annotations:
        _write_png(os.path.join(folder, ann["file_name"]), id_map)
        anns.append(dict(ann))
    path = os.path.join(root, name + ".json")
    with open(path, "w") as f:
        json.dump({"images": list(images), "annotations": anns,
                   "categories": list(categories)}, f)
    return path


def make_synthetic_dataset(
    root: str,
    n_images: int,
    seed: int = 0,
    height: int = 480,
    width: int = 640,
    n_segments: tuple[int, int] = (10, 40),
    strength: float = 1.0,
    small_ids: bool = False,
) -> tuple[str, str]:
    """Generate gt.json + gt/ and pred.json + pred/ under ``root``; returns both json paths."""
    rng = np.random.default_rng(seed)
    cats = synthetic_categories()
    pred_only = [c["id"] for c in cats if c["name"] in ("thing12", "thing13")]
    images, gts, preds = [], [], []
    for i in range(n_images):
        image_id = 1000 + i
        stem = f"{image_id:012d}"
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": height,
                       "width": width})
        gt_map, gt_segs = random_gt(rng, cats, height, width, n_segments,
                                    pred_only=pred_only, small_ids=small_ids)
        pred_map, pred_segs = perturb_prediction(rng, gt_map, gt_segs, cats, strength,
                                                 small_ids=small_ids)
        gts.append((gt_map, {"image_id": image_id, "file_name": stem + ".png",
                             "segments_info": gt_segs}))
        preds.append((pred_map, {"image_id": image_id, "file_name": stem + ".png",
                                 "segments_info": pred_segs}))
    gt_json = write_panoptic_dataset(root, "gt", images, gts, cats)
    pred_json = write_panoptic_dataset(root, "pred", images, preds, cats)
    return gt_json, pred_json


def compare_results(ours: Mapping[str, Any], ref: Mapping[str, Any], tol: float = 1e-9) -> None:
    """Raise AssertionError unless every number (incl. per_class) agrees within ``tol``."""
    for group in ("All", "Things", "Stuff"):
        if ours[group]["n"] != ref[group]["n"]:
            raise AssertionError(f"{group} n: {ours[group]['n']} != {ref[group]['n']}")
        for k in ("pq", "sq", "rq"):
            if abs(ours[group][k] - ref[group][k]) > tol:
                raise AssertionError(f"{group} {k}: {ours[group][k]!r} != {ref[group][k]!r}")
    if set(ours["per_class"]) != set(ref["per_class"]):
        raise AssertionError("per_class categories differ")
    for cat, r in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            if abs(ours["per_class"][cat][k] - r[k]) > tol:
                raise AssertionError(
                    f"per_class[{cat}] {k}: {ours['per_class'][cat][k]!r} != {r[k]!r}")
