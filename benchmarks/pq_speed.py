"""PQ speed: panopticapi's pq_compute and Detectron2's COCOPanopticEvaluator against ours.

The logic behind ``tools/benchmark_pq.py``: it generates data with ``benchmarks.pq_fixtures``
(unless the work folder already holds a matching set), checks that all give the same numbers
and times them on the same files, alternating, so load from elsewhere hits all alike. Ours
runs as each backend: our own code ("panoptic_ext") and, when installed, hotcoco behind our
API ("hotcoco"; what "auto" picks).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Any

import numpy as np

from panoptic_ext.evaluation import (
    PQStats,
    compute_stats_from_files,
    image_pq_stats,
    pq_compute,
    read_panoptic_png,
    summarize_pq,
)
from panoptic_ext.evaluation import (
    pq as pq_module,
)

from .pq_fixtures import compare_results, make_synthetic_dataset

__all__ = ["run_benchmark"]


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

    from panoptic_ext.evaluation import PanopticEvaluator

    name, inputs, outputs = _model_outputs(gt_json, pred_json, n)

    def run_ours(backend: str) -> tuple[float, dict, Any]:
        ours = PanopticEvaluator(name, backend=backend)
        # parse the GT json before the timed loop (the evaluator reads it on first use)
        ours.ground_truth.annotation(inputs[0])
        start = time.perf_counter()
        ours.reset()
        for inp, out in zip(inputs, outputs, strict=True):
            ours.process([inp], [out])
        res = ours.evaluate()
        return time.perf_counter() - start, res, ours

    t_ours, res, ours = run_ours("panoptic_ext")
    t_hot = None
    if pq_module.hotcoco_available():
        t_hot, res_hot, _ = run_ours("hotcoco")
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
    for label, got in (("panoptic_ext", res), ("hotcoco", res_hot if t_hot else None)):
        if got is None:
            continue
        for key, value in ref["panoptic_seg"].items():
            if abs(got["panoptic_seg"][key] - value) > 1e-7:
                raise AssertionError(f"evaluator ({label}) differs on {key}: "
                                     f"{got['panoptic_seg'][key]} vs {value}")
    timing = ours.timing
    return {
        "evaluator_images": n,
        "evaluator_ms_per_image": 1000 * ours.per_image_seconds,
        "evaluator_gt_read_ms_per_image": 1000 * timing["gt_read_seconds"] / n,
        "evaluator_stats_ms_per_image": 1000 * timing["stats_seconds"] / n,
        "evaluator_total_s": t_ours,
        "evaluator_hotcoco_total_s": t_hot,
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

    backends = ["panoptic_ext"] + (["hotcoco"] if pq_module.hotcoco_available() else [])
    t_refs: list[float] = []
    t_all: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(max(1, repeat)):  # alternate, so that load from elsewhere hits all
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ref = reference_pq_compute(gt_json, pred_json)
        t_refs.append(time.perf_counter() - start)
        for backend in backends:
            start = time.perf_counter()
            ours = pq_compute(gt_json, pred_json, workers=workers, backend=backend)
            t_all[backend].append(time.perf_counter() - start)
            compare_results(ours, ref)
    t_ref = min(t_refs)
    t_best = {b: min(v) for b, v in t_all.items()}
    t_ours, t_ours_all = t_best["panoptic_ext"], t_all["panoptic_ext"]
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
        "hotcoco_s": t_best.get("hotcoco"),
        "hotcoco_runs_s": t_all.get("hotcoco"),
        "hotcoco_speedup": t_ref / t_best["hotcoco"] if "hotcoco" in t_best else None,
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
    pooled = workers != 1 and n_images >= pq_module.MIN_IMAGES_FOR_POOL
    procs = f"{workers or os.cpu_count()} processes" if pooled else "in-process"
    log(f"panoptic_ext pq_compute, backend panoptic_ext ({procs}): {t_ours:.2f} s{runs}")
    if "hotcoco" in t_best:
        log(f"panoptic_ext pq_compute, backend hotcoco (all threads): {t_best['hotcoco']:.2f} s"
            f"{runs}")
    log("| `pq_compute` | time | vs panopticapi |")
    log("|---|---|---|")
    for label, t in [("panopticapi", t_ref), ("panoptic_ext (own code)", t_ours)] + (
            [("panoptic_ext (hotcoco backend, the default)", t_best["hotcoco"])]
            if "hotcoco" in t_best else []):
        log(f"| {label} | {t:.2f} s | {t_ref / t:.1f}x |")
    log(f"speedup: {t_ref / t_ours:.1f}x (own code), "
        + (f"{t_ref / t_best['hotcoco']:.1f}x (hotcoco backend); " if "hotcoco" in t_best
           else "hotcoco not installed; ")
        + f"results equal to 1e-9 "
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
        if report["evaluator_hotcoco_total_s"] is not None:
            log(f"PanopticEvaluator with backend hotcoco (PNGs written, scored at the end): "
                f"{report['evaluator_hotcoco_total_s']:.2f} s, same results")
    return report
