"""Side-by-side inference benchmark: PanopticFPNExt against Detectron2's own PanopticFPN.

Both models are built from one config and one set of weights, run on the same images in one
process, alternating (so machine load hits both alike), after a warm-up. Reports per-stage and
end-to-end latency of each, their ratio, per image the detections and panoptic segments of
each (post-processing cost follows them), and how far our panoptic output agrees with
Detectron2's (pixel agreement of the segment category, and PQ taking Detectron2's output as
ground truth). The logic behind tools/benchmark.py; not part of the installed package.

Images are either generated (`load_images`: noise, or the test set's first images, resized to
one fixed size and returned at that size, so no output resize) or files (`load_input_files`:
read and resized as Detectron2's DefaultPredictor does, outputs at the original size), the
protocol of real use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import panoptic_fpn as d2_panoptic_fpn

from panoptic_ext.deploy.runtime import attach_runtime
from panoptic_ext.engine.weights import load_weights, trust_weights_file
from panoptic_ext.modeling import meta_arch as ext_meta_arch

__all__ = [
    "STAGES",
    "BenchImage",
    "InputError",
    "StageTimer",
    "build_models",
    "compare_panoptic",
    "load_images",
    "load_input_files",
    "run_benchmark",
    "format_report",
    "run_combine_benchmark",
    "format_combine_report",
    "conv_peak",
    "side_by_side_rows",
    "stage_hooks",
    "stage_macs",
    "tame_random_weights",
    "limit_report",
]

logger = logging.getLogger(__name__)

STAGES = (
    "backbone+FPN",
    "semantic head",
    "RPN",
    "ROI heads",
    "mask paste/postprocess",
    "semantic postprocess",
    "combine",
    "other",
)


# ----------------------------------------------------------------------------------------------
# Models and inputs
# ----------------------------------------------------------------------------------------------


def tame_random_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Random init with unit-scale batch norm saturates activations into one detection; smaller
    norm scales and RPN deltas let many varied detections through every stage."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if w is not None and type(m).__name__ in ("FrozenBatchNorm2d", "BatchNorm2d"):
                w.copy_(torch.rand(w.shape, generator=gen) * 0.3 + 0.2)
        model.proposal_generator.rpn_head.anchor_deltas.weight.mul_(0.01)


def build_models(cfg: CfgNode, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(ours, Detectron2's PanopticFPN, weights description), in eval mode with equal weights.

    With MODEL.WEIGHTS empty the weights are random (tamed) and the score thresholds are
    lowered so that detections reach mask pasting and the merge: random class scores sit near
    1 / (classes + 1), so the detector keeps those above 1.5 times that (a threshold of 0 would
    mostly time NMS over every class of every proposal) and the merge takes all of them.
    """
    cfg = cfg.clone()
    cfg.defrost()
    if not cfg.MODEL.WEIGHTS:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1.5 / (cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1)
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    d2_cfg = cfg.clone()
    d2_cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
    d2_cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    torch.manual_seed(seed)
    d2 = build_model(d2_cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(d2, cfg.MODEL.WEIGHTS, purpose="the benchmark",  # never runs its code
                     trust_file=trust_weights_file(cfg))
        source = cfg.MODEL.WEIGHTS
    else:
        tame_random_weights(d2, seed)
        source = (f"random (tamed); detector score threshold "
                  f"{cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST:.3g}, merge threshold 0")
    ours = attach_runtime(build_model(cfg), cfg)  # TEST.RUNTIME, as the tools run it
    ours.load_state_dict(d2.state_dict(), strict=True)
    return ours.eval(), d2.eval(), source


@dataclass
class BenchImage:
    """One input as both models get it: the CHW float network input and the output size
    ("height"/"width": a file's original size, as DefaultPredictor passes it; a generated
    image's own size). `name` says in the report which input it was."""

    name: str
    image: torch.Tensor
    height: int
    width: int

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def model_input(self) -> dict[str, Any]:
        return {"image": self.image, "height": self.height, "width": self.width}

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description, enough to reproduce the input."""
        return {"name": self.name, "input_size": list(self.input_size),
                "output_size": [self.height, self.width]}


class InputError(ValueError):
    """An --input that is missing, matches nothing or is not a readable image (names it)."""


def load_images(
    cfg: CfgNode, num: int, size: tuple[int, int], seed: int = 0
) -> tuple[list[BenchImage], str]:
    """`num` generated inputs of `size` (the test set's first images stretched to it, else
    uniform noise), returned at that size: the model does no output resize on them."""
    import cv2

    height, width = size
    images: list[BenchImage] = []
    source = "random"
    with contextlib.suppress(Exception):
        from detectron2.data import DatasetCatalog
        from detectron2.data.detection_utils import read_image

        dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])
        for d in dicts[:num]:
            img = read_image(d["file_name"], format=cfg.INPUT.FORMAT)
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
            chw = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
            images.append(BenchImage(os.path.basename(d["file_name"]), chw, height, width))
        if images:
            source = f"{cfg.DATASETS.TEST[0]} resized to {height}x{width}"
    gen = torch.Generator().manual_seed(seed)
    while len(images) < num:
        noise = torch.randint(0, 256, (3, height, width), generator=gen).float()
        images.append(BenchImage(f"random #{len(images)}", noise, height, width))
    return images[:num], source


def load_input_files(cfg: CfgNode, patterns: Sequence[str]) -> list[BenchImage]:
    """Image files, folders or glob patterns, each read as Detectron2's demo reads it
    (`read_image`, BGR, EXIF upright) and prepared as DefaultPredictor does (INPUT.FORMAT,
    ResizeShortestEdge to INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, outputs at the original size):
    the figure then is the one a user of the predictor sees. Raises InputError naming the path
    that is missing, matches nothing or cannot be read as an image."""
    from detectron2.data.detection_utils import read_image

    from panoptic_ext.apps.demo import collect_inputs
    from panoptic_ext.deploy.export import preprocess_like_predictor

    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        raise InputError(f"--input needs INPUT.FORMAT BGR or RGB (as DefaultPredictor), got "
                         f"{cfg.INPUT.FORMAT!r}")
    files, problems = collect_inputs(patterns)
    if problems:
        raise InputError("--input " + "; ".join(problems))
    images = []
    for path in files:
        try:
            bgr = read_image(path, format="BGR")
        except Exception as e:  # noqa: BLE001 - PIL raises several kinds for a bad file
            raise InputError(f"--input {path}: cannot read it as an image "
                             f"({type(e).__name__}: {e})") from e
        chw, (height, width) = preprocess_like_predictor(cfg, bgr)
        images.append(BenchImage(path, chw, int(height), int(width)))
    return images


# ----------------------------------------------------------------------------------------------
# Stage timing
# ----------------------------------------------------------------------------------------------


class StageTimer:
    """Accumulates wall time per stage; a stage entered inside another one is not counted
    separately (its time belongs to the outer stage)."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.times: dict[str, float] = {}
        self._stack: list[tuple[str, float]] = []
        self._sync = sync or (lambda: None)

    def reset(self) -> None:
        self.times = {}
        self._stack = []

    def start(self, name: str) -> None:
        self._sync()
        self._stack.append((name, time.perf_counter()))

    def stop(self) -> None:
        self._sync()
        name, t0 = self._stack.pop()
        if not self._stack:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.start(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stop()

        return timed


class _TimedCombine:
    """Proxy for a merge strategy object that times its calls."""

    def __init__(self, inner: Any, timer: StageTimer):
        self._inner = inner
        self._timer = timer

    def __call__(self, *args, **kwargs):
        return self._timer.wrap("combine", self._inner)(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


MODULE_STAGES = (("backbone", "backbone+FPN"), ("sem_seg_head", "semantic head"),
                 ("proposal_generator", "RPN"), ("roi_heads", "ROI heads"))


def stage_hooks(model: torch.nn.Module, timer: StageTimer) -> list[Any]:
    """Forward hooks timing each of `model`'s parts (MODULE_STAGES) as its stage; the caller
    removes the returned handles."""
    handles = []
    for attr, name in MODULE_STAGES:
        part = getattr(model, attr)
        handles.append(part.register_forward_pre_hook(lambda *_, n=name: timer.start(n)))
        handles.append(part.register_forward_hook(lambda *_: timer.stop()))
    return handles


@contextlib.contextmanager
def instrument(model: torch.nn.Module, timer: StageTimer) -> Iterator[None]:
    """Time the stages of either model while inside the context."""
    handles = stage_hooks(model, timer)
    with contextlib.ExitStack() as stack:
        if isinstance(model, ext_meta_arch.PanopticFPNExt):
            mod = ext_meta_arch
            # TEST.RUNTIME: one graph for backbone, heads of RPN/sem
            engine = getattr(model.dense_runner, "engine", None)
            if engine is not None:
                stack.enter_context(_patched(engine, "dense",
                                             timer.wrap("backbone+FPN", engine.dense)))
            head = model.sem_seg_head
            if hasattr(head, "layers"):
                stack.enter_context(_patched(head, "layers",
                                             timer.wrap("semantic head", head.layers)))
            stack.enter_context(_patched(model, "_upsample",
                                         timer.wrap("semantic head", model._upsample)))
            stack.enter_context(_patched(model, "_sem_postprocess", timer.wrap(
                "semantic postprocess", model._sem_postprocess)))
            stack.enter_context(_patched(mod, "semantic_argmax", timer.wrap(
                "semantic postprocess", mod.semantic_argmax)))
            stack.enter_context(_patched(mod, "paste_for_combine", timer.wrap(
                "mask paste/postprocess", mod.paste_for_combine)))
            stack.enter_context(_patched(model, "combine", _TimedCombine(model.combine, timer)))
        else:
            mod = d2_panoptic_fpn
            stack.enter_context(_patched(mod, "sem_seg_postprocess", timer.wrap(
                "semantic postprocess", mod.sem_seg_postprocess)))
            stack.enter_context(_patched(mod, "combine_semantic_and_instance_outputs",
                                         timer.wrap("combine",
                                                    mod.combine_semantic_and_instance_outputs)))
        stack.enter_context(_patched(mod, "detector_postprocess", timer.wrap(
            "mask paste/postprocess", mod.detector_postprocess)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            # instance attributes set by _patched shadow methods: drop them again
            for attr in ("layers", "_upsample", "_sem_postprocess"):
                for owner in (model, model.sem_seg_head):
                    owner.__dict__.pop(attr, None)


# ----------------------------------------------------------------------------------------------
# Output agreement
# ----------------------------------------------------------------------------------------------


def _category_map(pan: torch.Tensor, segments: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Per-pixel category key (things k -> k, stuff s -> 100000 + s, void -> -1) and segments
    in COCO form with those keys."""
    lut = np.full(max([s["id"] for s in segments], default=0) + 1, -1, dtype=np.int64)
    coco = []
    for s in segments:
        key = int(s["category_id"]) + (0 if s["isthing"] else 100000)
        lut[s["id"]] = key
        coco.append({"id": s["id"], "category_id": key, "iscrowd": 0})
    ids = pan.cpu().numpy().astype(np.int64)
    areas = np.bincount(ids.ravel(), minlength=lut.size)
    for seg in coco:
        seg["area"] = int(areas[seg["id"]])
    return lut[ids], coco


def compare_panoptic(ours: Sequence[tuple], ref: Sequence[tuple]) -> dict[str, float]:
    """Pixel agreement of the segment category/isthing and PQ (x100) of `ours` with `ref`
    (Detectron2's output) as ground truth, over all images."""
    from panoptic_ext.evaluation import PQStats, image_pq_stats, summarize_pq

    stats = PQStats()
    agree = total = 0
    categories: dict[int, dict] = {}
    for (pan_o, seg_o), (pan_r, seg_r) in zip(ours, ref, strict=True):
        cat_o, coco_o = _category_map(pan_o, seg_o)
        cat_r, coco_r = _category_map(pan_r, seg_r)
        agree += int((cat_o == cat_r).sum())
        total += cat_o.size
        for s in coco_o + coco_r:
            categories[s["category_id"]] = {"isthing": int(s["category_id"] < 100000)}
        stats.merge(image_pq_stats(pan_r.cpu().numpy(), coco_r, pan_o.cpu().numpy(), coco_o,
                                   categories))
    pq = summarize_pq(stats, categories)
    return {
        "pixel_agreement": agree / max(total, 1),
        "pq": 100.0 * pq["All"]["pq"],
        "pq_things": 100.0 * pq["Things"]["pq"],
        "pq_stuff": 100.0 * pq["Stuff"]["pq"],
        "segments_ours": sum(len(s) for _, s in ours),
        "segments_detectron2": sum(len(s) for _, s in ref),
    }


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _d2_first(k: int, n: int) -> bool:
    """Whether Detectron2 runs first on timed image `k` of a cycle of `n` inputs: the order
    flips image by image and, for an even `n`, also round by round, so that every input is
    timed in both orders alike (with 2 files cycled, a plain flip would give each file one
    fixed order, and the second model the first one's warm caches)."""
    return (k + (k // n if n % 2 == 0 else 0)) % 2 == 0


def _segment_counts(out: dict[str, Any]) -> dict[str, int | None]:
    """Detections (None when "instances" was not returned) and panoptic thing / stuff segments
    of one output: what mask pasting and the merge work through, so what their cost follows."""
    segments = out["panoptic_seg"][1]
    things = sum(bool(s["isthing"]) for s in segments)
    return {"detections": len(out["instances"]) if "instances" in out else None,
            "things": things, "stuff": len(segments) - things}


def _mean_macs(d2: torch.nn.Module, images: Sequence[BenchImage], detections: int
               ) -> dict[str, float]:
    """`stage_macs` at each timed image's input size, averaged over the timed images (files
    of several sizes), with the RPN's post-NMS proposals and `detections` through the heads."""
    proposals = int(d2.proposal_generator.post_nms_topk[False])
    by_size = {size: stage_macs(d2, size, proposals, detections)
               for size in dict.fromkeys(b.input_size for b in images)}
    if len(by_size) == 1:
        return next(iter(by_size.values()))
    return {key: statistics.fmean(by_size[b.input_size][key] for b in images)
            for key in next(iter(by_size.values()))}


def run_benchmark(
    cfg: CfgNode,
    num_images: int = 3,
    size: tuple[int, int] = (800, 1333),
    warmup: int = 1,
    seed: int = 0,
    outputs: Sequence[str] | None = None,
    arithmetic_limit: bool = True,
    peak_size: tuple[int, int] = (200, 336),
    inputs: Sequence[BenchImage] | None = None,
) -> dict[str, Any]:
    """Time both models on the same images, alternating which goes first (`_d2_first`), and
    compare their panoptic outputs.

    `inputs` (`load_input_files`): time these, cycled up to `num_images`, instead of
    `num_images` generated ones of `size`. First `warmup` untimed rounds run each model once
    on every distinct input (generated ones share one size: the first), so one-time costs
    (our runtime's export and compile, a new shape's setup) stay out of both models' times.
    `outputs` is passed to our model's inference (e.g. ("panoptic_seg",)).
    `arithmetic_limit`: also measure a 3x3-conv peak (256 channels at `peak_size`) and count
    the stages' multiply-adds, for each stage's "x of the arithmetic limit"."""
    from panoptic_ext.deploy.runtime import resolve_runtime

    if inputs is not None and not inputs:
        raise ValueError("inputs: an empty list (leave it None for generated images)")
    ours, d2, weights = build_models(cfg, seed)
    if inputs is not None:
        distinct = list(inputs[:num_images])
        images = [distinct[k % len(distinct)] for k in range(num_images)]
        image_source = (f"{len(distinct)} file(s), cycled; resized as DefaultPredictor "
                        f"(INPUT.MIN_SIZE_TEST {cfg.INPUT.MIN_SIZE_TEST}, MAX_SIZE_TEST "
                        f"{cfg.INPUT.MAX_SIZE_TEST}), outputs at the original size")
        warm = distinct
    else:
        images, image_source = load_images(cfg, num_images, size, seed)
        distinct, warm = images, images[:1]
    device = ours.device
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    timer = StageTimer(sync)

    def run(model: torch.nn.Module, b: BenchImage) -> tuple[float, dict, Any]:
        inp = [b.model_input()]
        timer.reset()
        with torch.no_grad(), instrument(model, timer):
            if sync:
                sync()
            t0 = time.perf_counter()
            if model is ours and outputs is not None:
                out = model.inference(inp, outputs=outputs)
            else:
                out = model(inp)
            if sync:
                sync()
            total = time.perf_counter() - t0
        stages = dict(timer.times)
        stages["other"] = total - sum(stages.values())
        return total, stages, out[0]

    for _ in range(warmup):
        for b in warm:
            for model in (d2, ours):
                run(model, b)

    results: dict[str, dict[str, list]] = {n: {"total": [], "stages": []} for n in ("ours", "d2")}
    pans: dict[str, list] = {"ours": [], "d2": []}
    per_image = []
    for k, b in enumerate(images):
        d2_first = _d2_first(k, len(distinct))
        order = (("d2", d2), ("ours", ours)) if d2_first else (("ours", ours), ("d2", d2))
        counts = {}
        for name, model in order:
            total, stages, out = run(model, b)
            results[name]["total"].append(total)
            results[name]["stages"].append(stages)
            pans[name].append(out["panoptic_seg"])
            counts[name] = _segment_counts(out)
        per_image.append({**b.describe(), "d2_first": d2_first, **counts})
    instances = [r["d2"]["detections"] for r in per_image]

    report: dict[str, Any] = {
        "weights": weights,
        "images": image_source,
        "num_images": num_images,
        "size": list(size) if inputs is None else None,
        "inputs": [b.describe() for b in distinct],
        "warmup_rounds": warmup,
        "warmup_inputs": [b.name for b in warm] if warmup else [],
        "precision": cfg.TEST.PRECISION,
        "precision_peak": "bf16" if cfg.TEST.PRECISION.lower() == "bf16" else "fp32",
        "runtime": resolve_runtime(cfg.TEST.RUNTIME, device.type),
        "fast_inference": bool(cfg.MODEL.PANOPTIC_EXT.FAST_INFERENCE),
        "channels_last": bool(cfg.MODEL.PANOPTIC_EXT.CHANNELS_LAST),
        "outputs": list(outputs or cfg.MODEL.PANOPTIC_EXT.INFERENCE_OUTPUTS),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "per_image": per_image,
        "detections_per_image": instances,
        "things_in_panoptic_d2": [r["d2"]["things"] for r in per_image],
    }
    for name in ("d2", "ours"):
        r = results[name]
        report[name] = {
            "total": _summary(r["total"]),
            "stages": {s: statistics.median(st.get(s, 0.0) for st in r["stages"])
                       for s in STAGES},
            "stage_summary": {s: _summary([st.get(s, 0.0) for st in r["stages"]])
                              for s in STAGES},
        }
    report["ratio_median"] = report["ours"]["total"]["median"] / report["d2"]["total"]["median"]
    report["ratio_per_image"] = [o / d for o, d in
                                 zip(results["ours"]["total"], results["d2"]["total"],
                                     strict=True)]
    report["agreement"] = compare_panoptic(pans["ours"], pans["d2"])
    if arithmetic_limit and device.type == "cpu":
        peaks = {p: conv_peak(p, size=peak_size)
                 for p in sorted({"fp32", report["precision_peak"]})}
        macs = _mean_macs(d2, images, int(statistics.median(instances)))
        report["limit"] = limit_report(report, macs, peaks,
                                       getattr(ours.dense_runner, "engine", None) is not None)
        report["limit"]["input_sizes"] = [list(x) for x in
                                          dict.fromkeys(b.input_size for b in images)]
    return report


def _hxw(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def _protocol_lines(report: dict[str, Any]) -> list[str]:
    """Which inputs were timed, at which sizes, after which warm-up: what a reader needs to
    reproduce the figure and to compare it with another one."""
    if report["warmup_rounds"]:
        names = ", ".join(os.path.basename(n) for n in report["warmup_inputs"])
        lines = [f"warm-up (untimed): {report['warmup_rounds']} round(s) of each model on "
                 f"{names}; one-time costs (our runtime's export and compile, new shapes) "
                 "fall there"]
    else:
        lines = ["warm-up: none, so the first timed run of each model holds its one-time costs "
                 "(for ours, a compiled TEST.RUNTIME's graph export and compile)"]
    if report["size"] is None:
        lines.append("inputs (network input HxW <- original HxW, the output size):")
        lines += [f"- {i['name']}: {_hxw(i['input_size'])} <- {_hxw(i['output_size'])}"
                  for i in report["inputs"]]
    return lines


def _per_image_lines(report: dict[str, Any]) -> list[str]:
    """Per timed image: who ran first, detections and panoptic segments of each model (the
    post-processing work, which differs between noise and photos) and the ratio."""
    rows = report["per_image"]
    width = max(12, *(len(os.path.basename(r["name"])) + 2 for r in rows))
    lines = [f"{'#':<4}{'input':<{width}}{'first':<6}{'detections D2/ours':>20}"
             f"{'segments things+stuff D2 / ours':>34}{'ratio':>8}"]
    for k, (r, ratio) in enumerate(zip(rows, report["ratio_per_image"], strict=True)):
        d2, ours = r["d2"], r["ours"]
        det = f"{d2['detections']}/{'-' if ours['detections'] is None else ours['detections']}"
        seg = f"{d2['things']}+{d2['stuff']} / {ours['things']}+{ours['stuff']}"
        lines.append(f"{'#' + str(k + 1):<4}{os.path.basename(r['name']):<{width}}"
                     f"{'D2' if r['d2_first'] else 'ours':<6}{det:>20}{seg:>34}{ratio:>8.3f}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """Plain-text table of a `run_benchmark` report."""
    if report["size"] is None:
        images = f"{report['num_images']} timed ({report['images']})"
    else:
        images = (f"{report['num_images']} x {_hxw(report['size'])} ({report['images']}; "
                  "outputs at that size, no resize)")
    lines = [
        f"weights: {report['weights']}",
        f"images: {images}, device {report['device']}, {report['threads']} threads",
        f"ours: runtime {report['runtime']}, precision {report['precision']}, "
        f"fast_inference {report['fast_inference']}, "
        f"channels_last {report['channels_last']}, outputs {report['outputs']}",
        *_protocol_lines(report),
        "",
        f"{'stage (median, ms)':<26}{'Detectron2':>12}{'ours':>12}{'ratio':>8}"
        f"{'Detectron2 min-max':>22}{'ours min-max':>20}",
    ]

    def span(name: str, stage: str) -> str:
        st = report[name]["stage_summary"][stage]
        return f"{st['min'] * 1000:.1f}-{st['max'] * 1000:.1f}"

    lines += side_by_side_rows(report, STAGES, 26, "end-to-end",
                               lambda s: f"{span('d2', s):>22}{span('ours', s):>20}")
    ag = report["agreement"]
    lines += [
        "",
        f"ratio ours/Detectron2 (median of totals): {report['ratio_median']:.3f}; per image: "
        + ", ".join(f"{r:.3f}" for r in report["ratio_per_image"]),
        f"panoptic agreement with Detectron2: pixels {100 * ag['pixel_agreement']:.3f}%, "
        f"PQ {ag['pq']:.2f} (things {ag['pq_things']:.2f}, stuff {ag['pq_stuff']:.2f}), "
        f"segments {ag['segments_ours']} vs {ag['segments_detectron2']}",
        "",
        *_per_image_lines(report),
    ]
    if "limit" in report:
        lines += ["", *_format_limit(report["limit"])]
    return "\n".join(lines)


def side_by_side_rows(report: dict[str, Any], stages: Sequence[str], width: int, total: str,
                      extra: Callable[[str], str] | None = None) -> list[str]:
    """Rows "stage, Detectron2 ms, ours ms, ratio" of a report's median stage times, then the
    total's median, min and max (`report[side]["stages"]`, `report[side]["total"]`)."""
    rows = []
    for s in stages:
        a = report["d2"]["stages"][s] * 1000
        b = report["ours"]["stages"][s] * 1000
        ratio = f"{b / a:8.2f}" if a > 0.05 else f"{'-':>8}"
        rows.append(f"{s:<{width}}{a:12.1f}{b:12.1f}{ratio}{extra(s) if extra else ''}")
    for stat in ("median", "min", "max"):
        a = report["d2"]["total"][stat] * 1000
        b = report["ours"]["total"][stat] * 1000
        rows.append(f"{total + ' ' + stat:<{width}}{a:12.1f}{b:12.1f}{b / a:8.2f}")
    return rows


def _format_limit(lim: dict[str, Any]) -> list[str]:
    peaks = ", ".join(f"{2 * v / 1e9:.0f} GFLOP/s {k}" for k, v in lim["peak_macs_per_s"].items())
    lines = [f"arithmetic limit: 3x3-conv peak {peaks} (256 channels, channels_last, this run); "
             f"{lim['total_macs'] / 1e9:.1f} G multiply-adds (fvcore"
             f"{_macs_sizes(lim.get('input_sizes', []))})",
             f"{'x of the limit':<26}{'Detectron2':>12}{'ours':>12}{'G mult-adds':>14}"]
    macs = dict(lim["macs"])
    macs["ROI heads"] = macs.pop("box head") + macs.pop("mask head")
    for s in ("backbone+FPN", "semantic head", "RPN", "ROI heads", "end-to-end"):
        d2 = lim["d2"].get(s)
        ours = lim["ours"].get(s)
        m = lim["total_macs"] if s == "end-to-end" else macs.get(s, 0.0)
        lines.append(f"  {s:<24}{_x(d2):>12}{_x(ours):>12}{m / 1e9:>14.2f}")
    if lim["compiled_dense"]:
        lines.append("(ours: one compiled graph, its backbone+FPN row holds the semantic and "
                     "RPN heads)")
    return lines


def _macs_sizes(sizes: Sequence[Sequence[int]]) -> str:
    if len(sizes) > 1:
        return ", mean over the timed images at " + ", ".join(_hxw(x) for x in sizes)
    return f" at {_hxw(sizes[0])}" if sizes else ""


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# ----------------------------------------------------------------------------------------------
# The merge alone
# ----------------------------------------------------------------------------------------------


def _combine_case(num: int, size: tuple[int, int], num_stuff: int, gen: torch.Generator):
    """Detector-like instances (boxes of varied size, filled ellipses, overlapping) and a
    blocky semantic map, as the merge sees them after pasting."""
    from detectron2.structures import Boxes, Instances

    h, w = size
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    masks = torch.zeros((num, h, w), dtype=torch.bool)
    boxes = torch.zeros((num, 4))
    for i in range(num):
        bh = int(torch.randint(h // 16, h // 2, (1,), generator=gen))
        bw = int(torch.randint(w // 16, w // 2, (1,), generator=gen))
        y0 = int(torch.randint(0, h - bh, (1,), generator=gen))
        x0 = int(torch.randint(0, w - bw, (1,), generator=gen))
        cy, cx = y0 + bh / 2, x0 + bw / 2
        masks[i] = ((ys - cy) / (bh / 2)) ** 2 + ((xs - cx) / (bw / 2)) ** 2 <= 1
        boxes[i] = torch.tensor([x0, y0, x0 + bw, y0 + bh])
    inst = Instances((h, w))
    inst.scores = torch.rand(num, generator=gen)
    inst.pred_classes = torch.randint(0, 80, (num,), generator=gen)
    inst.pred_boxes = Boxes(boxes)
    inst.pred_masks = masks
    cell = 32
    sem = torch.randint(0, num_stuff + 1, (-(-h // cell), -(-w // cell)), generator=gen)
    sem = sem.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:h, :w].contiguous()
    return inst, sem


def run_combine_benchmark(
    instance_counts: Sequence[int] = (10, 50, 100),
    size: tuple[int, int] = (800, 1333),
    device: str = "cpu",
    repeats: int = 5,
    seed: int = 0,
    num_stuff: int = 53,
) -> list[dict[str, Any]]:
    """The merge alone: Detectron2's `combine_semantic_and_instance_outputs` against our
    `HeuristicCombine` (full-size masks, as with all outputs requested), same inputs, median
    of `repeats` alternating runs, and whether the outputs are identical."""
    from panoptic_ext.modeling.combine import HeuristicCombine

    thresholds = {"overlap_thresh": 0.5, "stuff_area_thresh": 4096, "score_thresh": 0.0}
    ours = HeuristicCombine(**thresholds)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = []
    for num in instance_counts:
        inst, sem = _combine_case(num, size, num_stuff, torch.Generator().manual_seed(seed + num))
        inst, sem = inst.to(dev), sem.to(dev)

        def d2_merge(inst=inst, sem=sem):
            return d2_panoptic_fpn.combine_semantic_and_instance_outputs(
                inst, sem, thresholds["overlap_thresh"], thresholds["stuff_area_thresh"],
                thresholds["score_thresh"])

        def our_merge(inst=inst, sem=sem):
            return ours(inst, sem)

        times: dict[str, list[float]] = {"d2": [], "ours": []}
        outs = {}
        for k in range(repeats + 1):  # the first round warms up
            for name, fn in (("d2", d2_merge), ("ours", our_merge))[:: 1 if k % 2 else -1]:
                sync()
                t0 = time.perf_counter()
                outs[name] = fn()
                sync()
                if k:
                    times[name].append(time.perf_counter() - t0)
        d2_ms = statistics.median(times["d2"]) * 1000
        our_ms = statistics.median(times["ours"]) * 1000
        rows.append({
            "instances": num,
            "thing_segments": sum(s["isthing"] for s in outs["d2"][1]),
            "d2_ms": d2_ms,
            "ours_ms": our_ms,
            "speedup": d2_ms / our_ms,
            "identical": bool(torch.equal(outs["d2"][0], outs["ours"][0])
                              and outs["d2"][1] == outs["ours"][1]),
            "size": list(size),
            "device": str(dev),
        })
    return rows


def format_combine_report(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of `run_combine_benchmark` rows."""
    if not rows:
        return ""
    lines = [f"merge alone, {rows[0]['size'][0]}x{rows[0]['size'][1]}, device {rows[0]['device']}"
             f", {torch.get_num_threads()} threads (median ms)",
             f"{'instances':>10}{'kept':>6}{'Detectron2':>12}{'ours':>10}{'speedup':>9}"
             f"{'identical':>11}"]
    for r in rows:
        lines.append(f"{r['instances']:>10}{r['thing_segments']:>6}{r['d2_ms']:>12.2f}"
                     f"{r['ours_ms']:>10.2f}{r['speedup']:>9.1f}{str(r['identical']):>11}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The arithmetic limit
# ----------------------------------------------------------------------------------------------


def conv_peak(
    precision: str = "fp32", channels: int = 256, size: tuple[int, int] = (200, 336),
    repeats: int = 3,
) -> float:
    """Multiply-adds per second of one 3x3 convolution (`channels` in and out, channels_last,
    oneDNN), best of `repeats` after a warm-up: the rate the model's convolutions can reach on
    this machine, measured in the same run as the model so both see the same load."""
    from panoptic_ext.modeling.inference_opts import autocast

    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(1, channels, *size).contiguous(memory_format=torch.channels_last)
    macs = channels * channels * 9 * size[0] * size[1]
    best = float("inf")
    with torch.no_grad(), autocast("cpu", precision):
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            conv(x)
            if k:
                best = min(best, time.perf_counter() - t0)
    return macs / best


class _SemLayers(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head.layers(features) if hasattr(self.head, "layers") else \
            self.head(features)[0]


class _BoxHead(torch.nn.Module):
    def __init__(self, head: torch.nn.Module, predictor: torch.nn.Module):
        super().__init__()
        self.head, self.predictor = head, predictor

    def forward(self, x: torch.Tensor):
        return self.predictor(self.head(x))


class _MaskLayers(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.layers(x)


def _count(module: torch.nn.Module, inputs: tuple) -> float:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return float(analysis.total())


def stage_macs(
    model: torch.nn.Module, size: tuple[int, int], proposals: int, detections: int
) -> dict[str, float]:
    """fvcore multiply-adds of the dense parts at input `size` (padded as the model pads),
    with `proposals` boxes through the box head and `detections` through the mask head:
    {"backbone+FPN", "semantic head", "RPN" (its head), "box head", "mask head"}."""
    div = max(int(model.backbone.size_divisibility), 1)
    h, w = (-(-s // div) * div for s in size)
    x = torch.zeros(1, 3, h, w)
    rh = model.roi_heads
    with torch.no_grad():
        features = model.backbone(x)
        rpn_in = [features[f] for f in model.proposal_generator.in_features]
        channels = features[rh.box_in_features[0]].shape[1]
        out = {
            "backbone+FPN": _count(model.backbone, (x,)),
            "semantic head": _count(_SemLayers(model.sem_seg_head), (features,)),
            "RPN": _count(model.proposal_generator.rpn_head, (rpn_in,)),
            "box head": _count(_BoxHead(rh.box_head, rh.box_predictor),
                               (torch.zeros(max(proposals, 1), channels,
                                            *rh.box_pooler.output_size),)),
            "mask head": 0.0,
        }
        if getattr(rh, "mask_on", False) and detections > 0:
            out["mask head"] = _count(_MaskLayers(rh.mask_head), (
                torch.zeros(detections, channels, *rh.mask_pooler.output_size),))
        if proposals == 0:
            out["box head"] = 0.0
    return out


def limit_report(
    report: dict[str, Any], macs: dict[str, float], peaks: dict[str, float], compiled: bool
) -> dict[str, Any]:
    """Per stage and end to end, "x of the arithmetic limit": the time over (multiply-adds /
    3x3-conv peak). For ours with a compiled runtime the dense graph is one stage
    ("backbone+FPN" then holds the semantic and RPN heads too)."""
    per_stage = {"backbone+FPN": macs["backbone+FPN"], "semantic head": macs["semantic head"],
                 "RPN": macs["RPN"], "ROI heads": macs["box head"] + macs["mask head"]}
    ours_stage = dict(per_stage)
    if compiled:
        ours_stage["backbone+FPN"] += ours_stage.pop("semantic head") + ours_stage.pop("RPN")
    total_macs = sum(per_stage.values())
    out: dict[str, Any] = {"peak_macs_per_s": peaks, "macs": macs, "total_macs": total_macs,
                           "compiled_dense": compiled}
    for name, stages, peak in (("d2", per_stage, peaks["fp32"]),
                               ("ours", ours_stage, peaks[report["precision_peak"]])):
        times = report[name]["stages"]
        out[name] = {s: times[s] / (m / peak) for s, m in stages.items() if m > 0}
        out[name]["end-to-end"] = report[name]["total"]["median"] / (total_macs / peak)
    return out
