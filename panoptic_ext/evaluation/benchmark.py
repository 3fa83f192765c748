"""Synthetic COCO panoptic ground truth and perturbed predictions, plus PQ timing.

Used by ``tools/benchmark_pq.py`` and by the tests: the generator produces what real
panoptic data looks like to the evaluator (stuff background, overlapping things, crowd
regions, void pixels, 24-bit ids) and predictions with the usual failure modes (shifted,
split, merged, relabelled, missing and spurious segments), so equality with panopticapi
is checked on the cases that matter.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from .pq import (
    OFFSET,
    PQStats,
    compute_stats_from_files,
    image_pq_stats,
    pq_compute,
    read_panoptic_png,
    summarize_pq,
)

__all__ = [
    "synthetic_categories",
    "random_gt",
    "perturb_prediction",
    "write_panoptic_dataset",
    "make_synthetic_dataset",
    "compare_results",
    "run_benchmark",
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


def _time_in_memory(gt_json: str, pred_json: str, n: int) -> tuple[float, int]:
    """Mean seconds of ``image_pq_stats`` on already decoded maps (no PNG I/O)."""
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    cats = {c["id"]: c for c in gt["categories"]}
    gt_dir, pred_dir = gt_json[:-5], pred_json[:-5]
    items = []
    for ann in gt["annotations"][:n]:
        p = pred[ann["image_id"]]
        items.append((read_panoptic_png(os.path.join(gt_dir, ann["file_name"])),
                      ann["segments_info"],
                      read_panoptic_png(os.path.join(pred_dir, p["file_name"])),
                      p["segments_info"]))
    stats = PQStats()
    for it in items[:3]:  # warm up the lookup table pages
        image_pq_stats(*it, cats)
    start = time.perf_counter()
    for k, it in enumerate(items):
        stats.merge(image_pq_stats(*it, cats, image_id=k))
    elapsed = time.perf_counter() - start
    summarize_pq(stats, cats)
    return elapsed / max(1, len(items)), len(items)


def _time_single_process(gt_json: str, pred_json: str, n: int) -> tuple[float, float]:
    """CPU seconds per image of panopticapi's and our per-image loop, in this process.

    Wall-clock times on a shared machine move with everything else running there; CPU time
    of the same loop on one core is the steadier measure of the work each one does.
    """
    from panopticapi.evaluation import pq_compute_single_core

    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    cats = {c["id"]: c for c in gt["categories"]}
    pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"][:n]]
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        pq_compute_single_core(0, pairs, gt_json[:-5], pred_json[:-5], cats)
    t_ref = time.process_time() - start
    start = time.process_time()
    compute_stats_from_files(pairs, gt_json[:-5], pred_json[:-5], cats, workers=1)
    t_ours = time.process_time() - start
    return t_ref / len(pairs), t_ours / len(pairs)


def _model_outputs(gt_json: str, pred_json: str, n: int) -> tuple[str, list, list]:
    """Register the generated data as a Detectron2 dataset; model-like inputs/outputs."""
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import register_coco_panoptic

    with open(gt_json) as f:
        gt = json.load(f)
    cats = gt["categories"]
    with open(pred_json) as f:
        preds = json.load(f)["annotations"][:n]
    if len(gt["annotations"]) > n:  # Detectron2's evaluator needs every GT image predicted
        keep = {a["image_id"] for a in preds}
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
        gt_folder = gt_json[:-5]
        gt_json = os.path.join(os.path.dirname(gt_json), f"gt_first_{n}.json")
        with open(gt_json, "w") as f:
            json.dump(gt, f)
    else:
        gt_folder = gt_json[:-5]
    things = {c["id"]: i for i, c in enumerate(cats) if c["isthing"] == 1}
    stuff = {c["id"]: i for i, c in enumerate(cats) if c["isthing"] != 1}
    name = f"pq_benchmark_{os.getpid()}_{time.monotonic_ns()}"
    meta = {"thing_classes": [c["name"] for c in cats], "stuff_classes": [c["name"] for c in cats],
            "thing_dataset_id_to_contiguous_id": things,
            "stuff_dataset_id_to_contiguous_id": stuff}
    root = os.path.dirname(gt_json)
    register_coco_panoptic(name, meta, os.path.join(root, "images"), gt_folder, gt_json)
    assert MetadataCatalog.get(name).panoptic_json == gt_json
    inputs, outputs = [], []
    for ann in preds:
        ids = read_panoptic_png(os.path.join(pred_json[:-5], ann["file_name"]))
        lut = {s["id"]: k + 1 for k, s in enumerate(ann["segments_info"])}
        keys = np.array([0, *lut], dtype=np.int64)
        order = np.argsort(keys)
        small = np.array([0, *lut.values()], dtype=np.int32)[order][
            np.searchsorted(keys[order], ids)]
        segs = [{"id": lut[s["id"]], "isthing": s["category_id"] in things,
                 "category_id": (things if s["category_id"] in things else stuff)[
                     s["category_id"]]} for s in ann["segments_info"]]
        inputs.append({"image_id": ann["image_id"], "file_name": os.path.join(
            root, "images", os.path.splitext(ann["file_name"])[0] + ".jpg")})
        outputs.append({"panoptic_seg": (torch.from_numpy(small), segs)})
    return name, inputs, outputs


def _time_evaluators(gt_json: str, pred_json: str, n: int) -> dict:
    """Per-image overhead and end-to-end time of PanopticEvaluator vs COCOPanopticEvaluator."""
    import copy

    from detectron2.evaluation import COCOPanopticEvaluator

    from .panoptic_evaluator import PanopticEvaluator

    name, inputs, outputs = _model_outputs(gt_json, pred_json, n)
    ours = PanopticEvaluator(name)
    ours._load_gt()  # parse the GT json outside the timed loop, as D2 does at evaluate()
    start = time.perf_counter()
    ours.reset()
    for inp, out in zip(inputs, outputs, strict=True):
        ours.process([inp], [out])
    res = ours.evaluate()
    t_ours = time.perf_counter() - start
    d2_outputs = [{"panoptic_seg": (o["panoptic_seg"][0].clone(),
                                    copy.deepcopy(o["panoptic_seg"][1]))} for o in outputs]
    d2 = COCOPanopticEvaluator(name)
    start = time.perf_counter()
    d2.reset()
    for inp, out in zip(inputs, d2_outputs, strict=True):
        d2.process([inp], [out])
    with contextlib.redirect_stdout(io.StringIO()):
        ref = d2.evaluate()
    t_d2 = time.perf_counter() - start
    for key, value in ref["panoptic_seg"].items():
        if abs(res["panoptic_seg"][key] - value) > 1e-7:
            raise AssertionError(f"evaluators differ on {key}: {res['panoptic_seg'][key]} "
                                 f"vs {value}")
    timing = ours.timing
    return {
        "evaluator_images": n,
        "evaluator_ms_per_image": 1000 * ours.per_image_seconds,
        "evaluator_gt_read_ms_per_image": 1000 * timing["gt_read_seconds"] / n,
        "evaluator_stats_ms_per_image": 1000 * timing["stats_seconds"] / n,
        "evaluator_total_s": t_ours,
        "detectron2_evaluator_total_s": t_d2,
    }


def run_benchmark(
    workdir: str,
    n_images: int = 500,
    seed: int = 0,
    workers: int | None = None,
    height: int = 480,
    width: int = 640,
    regenerate: bool = False,
    evaluators: bool = True,
    repeat: int = 1,
    log: Any = print,
) -> dict:
    """Generate data (unless present), time panopticapi and ours on the same files.

    With ``repeat`` > 1 both run that many times, alternating, and the fastest run of each
    is reported (the machine may be shared).
    """
    from panopticapi.evaluation import pq_compute as reference_pq_compute

    gt_json = os.path.join(workdir, "gt.json")
    pred_json = os.path.join(workdir, "pred.json")
    params_file = os.path.join(workdir, "benchmark_params.json")
    params = {"images": n_images, "seed": seed, "height": height, "width": width}
    fresh = regenerate or not os.path.exists(params_file)
    if not fresh:
        with open(params_file) as f:
            fresh = json.load(f) != params
    if fresh:
        start = time.perf_counter()
        make_synthetic_dataset(workdir, n_images, seed, height, width)
        with open(params_file, "w") as f:
            json.dump(params, f)
        log(f"generated {n_images} images of {width}x{height} in "
            f"{time.perf_counter() - start:.1f} s under {workdir}")
    with open(gt_json) as f:
        segs = [len(a["segments_info"]) for a in json.load(f)["annotations"]]
    log(f"segments per image: mean {np.mean(segs):.1f}, min {min(segs)}, max {max(segs)}")

    t_refs, t_ours_all = [], []
    for _ in range(max(1, repeat)):  # alternate, so that load from elsewhere hits both
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ref = reference_pq_compute(gt_json, pred_json)
        t_refs.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = pq_compute(gt_json, pred_json, workers=workers)
        t_ours_all.append(time.perf_counter() - start)
        compare_results(ours, ref)
    t_ref, t_ours = min(t_refs), min(t_ours_all)
    per_image, n_mem = _time_in_memory(gt_json, pred_json, min(n_images, 200))
    cpu_ref, cpu_ours = _time_single_process(gt_json, pred_json, min(n_images, 100))
    report = {
        "images": n_images,
        "cpu_count": os.cpu_count(),
        "panopticapi_s": t_ref,
        "ours_s": t_ours,
        "panopticapi_runs_s": t_refs,
        "ours_runs_s": t_ours_all,
        "speedup": t_ref / t_ours,
        "single_process_cpu_ms_per_image_panopticapi": 1000 * cpu_ref,
        "single_process_cpu_ms_per_image_ours": 1000 * cpu_ours,
        "single_process_cpu_ratio": cpu_ref / cpu_ours,
        "in_memory_ms_per_image": 1000 * per_image,
        "in_memory_images": n_mem,
        "PQ": 100 * ours["All"]["pq"],
        "PQ_th": 100 * ours["Things"]["pq"],
        "PQ_st": 100 * ours["Stuff"]["pq"],
    }
    runs = f" (best of {len(t_refs)})" if len(t_refs) > 1 else ""
    log(f"panopticapi pq_compute ({os.cpu_count()} processes): {t_ref:.2f} s{runs}")
    log(f"panoptic_ext pq_compute ({workers or os.cpu_count()} processes): {t_ours:.2f} s{runs}")
    log(f"speedup: {t_ref / t_ours:.1f}x; results equal to 1e-9 "
        f"(PQ {report['PQ']:.3f}, PQ_th {report['PQ_th']:.3f}, PQ_st {report['PQ_st']:.3f})")
    log(f"one process, CPU time per image (read both PNGs + stats): panopticapi "
        f"{1000 * cpu_ref:.1f} ms, ours {1000 * cpu_ours:.2f} ms ({cpu_ref / cpu_ours:.1f}x)")
    log(f"in-memory image_pq_stats: {report['in_memory_ms_per_image']:.2f} ms per "
        f"{width}x{height} image (mean of {n_mem}, single thread, decoded maps)")
    if evaluators:
        report.update(_time_evaluators(gt_json, pred_json, n_mem))
        log(f"PanopticEvaluator.process: {report['evaluator_ms_per_image']:.2f} ms per image "
            f"(GT PNG read {report['evaluator_gt_read_ms_per_image']:.2f} ms, stats "
            f"{report['evaluator_stats_ms_per_image']:.2f} ms); process+evaluate of {n_mem} "
            f"images: {report['evaluator_total_s']:.2f} s vs Detectron2's "
            f"COCOPanopticEvaluator {report['detectron2_evaluator_total_s']:.2f} s "
            f"({report['detectron2_evaluator_total_s'] / report['evaluator_total_s']:.1f}x), "
            "same results")
    return report
