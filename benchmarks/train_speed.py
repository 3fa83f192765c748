"""Side-by-side training-step benchmark: our trainer's step against Detectron2's.

Both sides start from the same random weights and take the same batches, in one process,
alternating which goes first at each step (machine load hits both alike), after a warm-up.
Ours is `PanopticTrainLoop` on `PanopticFPNExt` (the config's precision and layout), the
reference Detectron2's `SimpleTrainer` on its own `PanopticFPN` (fp32: Detectron2's AMP needs
CUDA). Each step is split into stages by module hooks, its multiply-adds are counted from the
convolutions and linear layers it ran (forward, and backward where weights or inputs need a
gradient), and set against a 3x3-conv peak measured in the same run. The logic behind
tools/benchmark_train.py; not part of the installed package.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, SimpleTrainer
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from torch import nn

from benchmarks.model_speed import (
    MODULE_STAGES,
    StageTimer,
    conv_peak,
    side_by_side_rows,
    stage_hooks,
    tame_random_weights,
)
from panoptic_ext.engine.train_loop import PanopticTrainLoop
from panoptic_ext.engine.trainer import Trainer, autocast_dtype_for
from panoptic_ext.engine.weights import load_weights, trust_weights_file

__all__ = ["TRAIN_STAGES", "count_step_macs", "format_train_report", "resize_batch",
           "run_train_benchmark"]

TRAIN_STAGES = ("data", "backbone+FPN", "semantic head", "RPN", "ROI heads", "backward",
                "optimizer", "other")


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def resize_batch(batch: list[dict], size: tuple[int, int]) -> list[dict]:
    """`batch` (mapped training inputs) at `size` (H, W): image bilinear, semantic labels and
    masks nearest, boxes scaled. For timing at a config's training size (e.g. COCO's 800x1333)
    on the small generated images."""
    out = []
    for d in batch:
        h0, w0 = d["image"].shape[-2:]
        sy, sx = size[0] / h0, size[1] / w0
        image = F.interpolate(d["image"][None].float(), size=size, mode="bilinear",
                              align_corners=False)[0].round().clamp(0, 255).to(d["image"].dtype)
        sem = F.interpolate(d["sem_seg"][None, None].float(), size=size,
                            mode="nearest")[0, 0].to(d["sem_seg"].dtype)
        inst = d["instances"]
        new = Instances(size)
        boxes = inst.gt_boxes.tensor * torch.tensor([sx, sy, sx, sy])
        new.gt_boxes = Boxes(boxes)
        new.gt_classes = inst.gt_classes
        masks = inst.gt_masks
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks, h0, w0)
        bits = F.interpolate(masks.tensor[None].float(), size=size, mode="nearest")[0] > 0.5
        new.gt_masks = BitMasks(bits)
        out.append({**d, "image": image, "sem_seg": sem, "instances": new,
                    "height": size[0], "width": size[1]})
    return out


def _loaders(cfg: CfgNode) -> dict[str, Any]:
    """Each trainer's own training loader on `cfg` (ours: resumable sampler, panoptic-safe
    augmentation; Detectron2's: its DatasetMapper)."""
    return {"ours": Trainer.build_train_loader(cfg), "d2": DefaultTrainer.build_train_loader(cfg)}


# ----------------------------------------------------------------------------------------------
# Multiply-adds of a step
# ----------------------------------------------------------------------------------------------


def _macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if isinstance(module, nn.Conv2d):
        k = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
        return float(y.numel() * k)
    if isinstance(module, nn.ConvTranspose2d):
        k = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
        return float(x.numel() * k)
    if isinstance(module, nn.Linear):
        return float(y.numel() * module.in_features)
    return 0.0


@contextlib.contextmanager
def count_step_macs(model: nn.Module, counts: dict[str, dict[str, float]]) -> Iterator[None]:
    """While inside, add the multiply-adds of every convolution and linear layer `model` runs
    to `counts[stage]["forward"]`, and those its backward pass will run to
    `counts[stage]["backward"]`: once for the weight gradient (trainable weights) and once for
    the input gradient (inputs that need one)."""
    handles = []

    def hook(stage: str):
        def run(module, inputs, output):
            x = inputs[0]
            fwd = _macs(module, x, output)
            c = counts.setdefault(stage, {"forward": 0.0, "backward": 0.0})
            c["forward"] += fwd
            if torch.is_grad_enabled():
                c["backward"] += fwd * (int(module.weight.requires_grad)
                                        + int(x.requires_grad))
        return run

    for attr, stage in MODULE_STAGES:
        part = getattr(model, attr, None)
        if part is None:
            continue
        for m in part.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                handles.append(m.register_forward_hook(hook(stage)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------------------------
# Timed steps
# ----------------------------------------------------------------------------------------------


class _Batches:
    """An endless loader over fixed batches, one after the other."""

    def __init__(self, batches: Sequence[list[dict]]):
        self._it = itertools.cycle(batches)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)


@contextlib.contextmanager
def _timed_stages(model: nn.Module, optimizer: torch.optim.Optimizer,
                  timer: StageTimer) -> Iterator[dict[str, float]]:
    """Forward stages by module hooks; "backward" from the end of the model's forward to the
    optimizer step (losses summed and checked, gradients); "optimizer" its step."""
    marks: dict[str, float] = {}
    handles = stage_hooks(model, timer)
    handles.append(model.register_forward_hook(
        lambda *_: marks.__setitem__("forward_end", time.perf_counter())))
    step = optimizer.step

    def timed_step(*args, **kwargs):
        t0 = time.perf_counter()
        timer.times["backward"] = t0 - marks["forward_end"]
        try:
            return step(*args, **kwargs)
        finally:
            timer.times["optimizer"] = time.perf_counter() - t0

    optimizer.step = timed_step
    try:
        yield marks
    finally:
        del optimizer.step
        for h in handles:
            h.remove()


def _loss_values(storage: EventStorage) -> dict[str, float]:
    return {k: v.latest() for k, v in storage.histories().items()
            if k.startswith("loss_") and not k.startswith("loss_weight")}


def run_train_benchmark(
    cfg: CfgNode,
    steps: int = 5,
    warmup: int = 2,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    arithmetic_limit: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Time `steps` training steps of each side (after `warmup`), alternating, on the same
    batches of `cfg`'s training set (resized to `size` when given). Returns per-stage medians,
    step totals, the first step's losses of each side, multiply-adds and the limit."""
    from tqdm import tqdm

    loaders = _loaders(cfg)
    batches = []
    iters = {k: iter(v) for k, v in loaders.items()}
    data_times: dict[str, list[float]] = {"ours": [], "d2": []}
    for k in range(max(2, steps + warmup)):  # every step its own batch, as in training
        for name in (("ours", "d2") if k % 2 == 0 else ("d2", "ours")):
            t0 = time.perf_counter()
            batch = next(iters[name])
            data_times[name].append(time.perf_counter() - t0)
            if name == "ours":
                batches.append(resize_batch(batch, size) if size else batch)
    torch.manual_seed(seed)
    d2_cfg = cfg.clone()
    d2_cfg.defrost()
    d2_cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
    d2_cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    d2 = build_model(d2_cfg)
    frozen = any(type(m).__name__ == "FrozenBatchNorm2d" for m in d2.modules())
    if cfg.MODEL.WEIGHTS:  # trained weights: the steady state, where far more proposals match
        # the ground truth than at a random start, so the mask head gets many more ROIs
        load_weights(d2, cfg.MODEL.WEIGHTS, purpose="the benchmark",
                     trust_file=trust_weights_file(cfg))
    elif frozen:  # random weights through frozen identity norms explode (first losses in the
        tame_random_weights(d2, seed)  # hundreds): tame them
    ours = build_model(cfg)
    ours.load_state_dict(d2.state_dict(), strict=True)
    amp = autocast_dtype_for(cfg)
    trainers = {
        "d2": SimpleTrainer(d2, _Batches(batches), DefaultTrainer.build_optimizer(d2_cfg, d2)),
        "ours": PanopticTrainLoop(ours, _Batches(batches), Trainer.build_optimizer(cfg, ours),
                                  device_type=ours.device.type, autocast_dtype=amp),
    }
    timer = StageTimer()
    results: dict[str, dict[str, list]] = {n: {"total": [], "stages": []} for n in trainers}
    first_losses: dict[str, dict[str, float]] = {}
    macs: dict[str, dict[str, float]] = {}
    bar = tqdm(total=warmup + steps, desc="training steps (both sides)", disable=not progress)
    for k in range(warmup + steps):
        order = ("d2", "ours") if k % 2 == 0 else ("ours", "d2")
        for name in order:
            trainer = trainers[name]
            trainer.iter = k
            torch.manual_seed(seed + 1000 + k)  # the same proposal and ROI sampling
            timer.reset()
            counting = (count_step_macs(trainer.model, macs)
                        if name == "d2" and k == 0 else contextlib.nullcontext())
            with EventStorage(k) as storage, counting, \
                    _timed_stages(trainer.model, trainer.optimizer, timer):
                t0 = time.perf_counter()
                trainer.run_step()
                total = time.perf_counter() - t0
            if k == 0:
                first_losses[name] = _loss_values(storage)
            if k >= warmup:
                stages = dict(timer.times)
                stages["other"] = total - sum(stages.values())
                results[name]["total"].append(total)
                results[name]["stages"].append(stages)
        bar.update(1)
    bar.close()
    report: dict[str, Any] = {
        "steps": steps, "warmup": warmup,
        "batch": len(batches[0]),
        "image_size": list(batches[0][0]["image"].shape[-2:]),
        "threads": torch.get_num_threads(),
        "ours_precision": "bf16" if amp == torch.bfloat16 else "fp32",
        # what ran: CHANNELS_LAST, except NCHW on CPUs without AVX-512 convolutions
        "channels_last": bool(getattr(ours, "training_channels_last", lambda: False)()),
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "first_losses": first_losses,
    }
    for name in ("d2", "ours"):
        r = results[name]
        data = statistics.median(data_times[name][1:] or data_times[name])
        totals = [t + data for t in r["total"]]
        stages = {s: statistics.median(st.get(s, 0.0) for st in r["stages"])
                  for s in TRAIN_STAGES if s != "data"}
        report[name] = {"total": _spread(totals), "stages": {"data": data, **stages},
                        "compute": _spread(r["total"])}
    report["ratio"] = report["ours"]["total"]["median"] / report["d2"]["total"]["median"]
    report["ratio_per_step"] = [o / d for o, d in zip(results["ours"]["total"],
                                                       results["d2"]["total"], strict=True)]
    common = set(first_losses["d2"]) & set(first_losses["ours"])
    report["first_loss_max_rel_diff"] = max(
        (abs(first_losses["ours"][k] - first_losses["d2"][k]) / max(abs(first_losses["d2"][k]),
                                                                     1e-12) for k in common),
        default=float("nan"))
    if arithmetic_limit and ours.device.type == "cpu":
        peaks = {"fp32": conv_peak("fp32")}
        if report["ours_precision"] == "bf16":
            peaks["bf16"] = conv_peak("bf16")
        report["limit"] = _limit(report, macs, peaks)
    return report


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _limit(report: dict[str, Any], macs: dict[str, dict[str, float]],
           peaks: dict[str, float]) -> dict[str, Any]:
    """Per stage and for the whole step: time over (multiply-adds / peak)."""
    fwd = {s: c["forward"] for s, c in macs.items()}
    bwd = sum(c["backward"] for c in macs.values())
    total = sum(fwd.values()) + bwd
    out: dict[str, Any] = {"peak_macs_per_s": peaks, "forward_macs": fwd, "backward_macs": bwd,
                           "total_macs": total}
    for name, peak in (("d2", peaks["fp32"]), ("ours", peaks[report["ours_precision"]])):
        st = report[name]["stages"]
        x = {s: st[s] / (m / peak) for s, m in fwd.items() if m > 0}
        x["backward"] = st["backward"] / (bwd / peak)
        x["step"] = report[name]["total"]["median"] / (total / peak)
        out[name] = x
    return out


def format_train_report(report: dict[str, Any]) -> str:
    """Plain-text table of a `run_train_benchmark` report; `train ratio R` is its last line."""
    lines = [
        f"batch {report['batch']} x {report['image_size'][0]}x{report['image_size'][1]}, "
        f"{report['threads']} threads, DATALOADER.NUM_WORKERS {report['num_workers']}; "
        f"median of {report['steps']} alternating steps after {report['warmup']} warm-up",
        f"ours: PanopticTrainLoop, {report['ours_precision']}, channels_last "
        f"{report['channels_last']}; Detectron2: SimpleTrainer + PanopticFPN, fp32",
        "",
        f"{'stage (median, ms)':<22}{'Detectron2':>12}{'ours':>12}{'ratio':>8}",
    ]
    lines += side_by_side_rows(report, TRAIN_STAGES, 22, "step")
    fl = report["first_losses"]
    lines += ["", "first-step losses (Detectron2 / ours):"]
    for k in sorted(set(fl["d2"]) | set(fl["ours"])):
        a, b = fl["d2"].get(k), fl["ours"].get(k)
        lines.append(f"  {k:<16}{_num(a):>14}{_num(b):>14}")
    lines.append(f"  max relative difference {report['first_loss_max_rel_diff']:.2e}")
    lines.append("per-step ratios: " + ", ".join(f"{r:.3f}" for r in report["ratio_per_step"]))
    if "limit" in report:
        lim = report["limit"]
        peaks = ", ".join(f"{2 * v / 1e9:.0f} GFLOP/s {k}"
                          for k, v in lim["peak_macs_per_s"].items())
        lines += ["", f"arithmetic limit: 3x3-conv peak {peaks} (this run); step "
                  f"{lim['total_macs'] / 1e9:.1f} G multiply-adds (forward "
                  f"{sum(lim['forward_macs'].values()) / 1e9:.1f}, backward "
                  f"{lim['backward_macs'] / 1e9:.1f})",
                  f"{'x of the limit':<22}{'Detectron2':>12}{'ours':>12}{'G mult-adds':>14}"]
        for s in ("backbone+FPN", "semantic head", "RPN", "ROI heads", "backward", "step"):
            m = (lim["total_macs"] if s == "step" else lim["backward_macs"] if s == "backward"
                 else lim["forward_macs"].get(s, 0.0))
            lines.append(f"  {s:<20}{_x(lim['d2'].get(s)):>12}{_x(lim['ours'].get(s)):>12}"
                         f"{m / 1e9:>14.2f}")
    lines += ["", f"train ratio {report['ratio']:.3f}"]
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"
