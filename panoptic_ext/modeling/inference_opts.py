"""Speed-ups the meta-architecture applies around its network, at inference: batch norms folded
into convolutions, channels_last convolutions, autocast for the convolutional parts, ROIAlign
spread over threads, the mask head on the merge's instances alone; in training: frozen batch
norms folded, channels_last and ROIAlign over threads.

Each changes only low bits of the results (off = Detectron2's exact numbers), and none changes
the modules themselves: folded weights live in a cache, and patched forwards are instance
attributes set for the duration of a `shadowed` block (training and `state_dict` never see them).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

from .precision import PRECISIONS, autocast

Patch = tuple[Any, str, Callable]  # (object, attribute, value shadowing it)

__all__ = [
    "FoldedNorms",
    "convert_channels_last",
    "float_outputs",
    "foldable",
    "frozen_norm_training_patches",
    "masks_above",
    "parallel_roi_align",
    "shadowed",
]

def convert_channels_last(modules: Iterable[nn.Module], channels_last: bool = True) -> None:
    """Conv weights of `modules` in channels_last (faster convolutions with oneDNN on CPU), or
    back in the default layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in modules:
        m.to(memory_format=fmt)


def _to_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def float_outputs(fn: Callable, device_type: str, precision: str) -> Callable:
    """`fn` run under autocast, its floating outputs returned as float32, so everything after
    it (box decoding, NMS, mask pasting, argmax, merge) still sees float32."""
    cast = functools.partial(autocast, device_type, precision)

    def run(*args, **kwargs):
        with cast():
            out = fn(*args, **kwargs)
        return _to_float(out)

    return run


def foldable(norm: nn.Module | None) -> bool:
    """Whether `norm` is a fixed affine map at inference (frozen, or eval-mode with statistics)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training
            and norm.track_running_stats and norm.affine and norm.running_var is not None)


def frozen_norm_training_patches(root: nn.Module) -> list[Patch]:
    """(conv, "forward", folded forward) for every Detectron2 `Conv2d` under `root` followed by
    a `FrozenBatchNorm2d`, for training: the weight and bias are folded at every call, through
    autograd (the convolution's weight keeps its gradient, scaled as the unfolded pair gives
    it), so each activation map is written once instead of three times (conv, scale, shift)
    and the backward skips two elementwise passes. Low bits differ, as at inference."""
    out: list[Patch] = []
    for conv in root.modules():
        norm = getattr(conv, "norm", None)
        if isinstance(conv, Conv2d) and isinstance(norm, FrozenBatchNorm2d):
            out.append((conv, "forward", _trained_folded_forward(conv, norm)))
    return out


def _trained_folded_forward(conv: nn.Module, norm: nn.Module) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _conv_activation(conv, x, *_fold(conv, norm))

    return forward


def _conv_activation(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """`conv`'s convolution with `weight` and `bias` in place of its own, then its activation."""
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return conv.activation(y) if conv.activation is not None else y


def _fold(conv: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution's weight and bias with the norm's fixed affine map folded in, the weight
    in the convolution's memory format (autograd follows the convolution's parameters)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    fmt = (torch.channels_last
           if conv.weight.is_contiguous(memory_format=torch.channels_last)
           and not conv.weight.is_contiguous() else torch.contiguous_format)
    return weight.contiguous(memory_format=fmt), bias


def _folded_forward(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        w, b = weight, bias
        if w.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            w, b = w.to(x.dtype), b.to(x.dtype)  # a reduced-precision copy run outside autocast
        return _conv_activation(conv, x, w, b)

    return forward


class FoldedNorms:
    """Forwards of Detectron2 `Conv2d`s followed by an inference-mode batch norm, with the norm
    folded into the convolution's weight and bias: one pass over each activation map instead
    of two. Folded weights are cached and rebuilt when any source tensor changes (in-place
    updates bump `_version`; `load_state_dict` and `.to()` do)."""

    def __init__(self) -> None:
        self._cache: dict[nn.Module, tuple] = {}

    def patches(self, root: nn.Module, precision: str = "fp32") -> list[Patch]:
        """(conv, "forward", folded forward) for every foldable conv under `root`; the folded
        weights are in `precision` already (autocast would cast them at every call)."""
        out: list[Patch] = []
        for conv in root.modules():
            norm = getattr(conv, "norm", None)
            if not isinstance(conv, Conv2d) or not foldable(norm):
                continue
            srcs = [conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
            if conv.bias is not None:
                srcs.append(conv.bias)
            key = (precision, *((t.data_ptr(), t._version) for t in srcs))
            cached = self._cache.get(conv)
            if cached is None or cached[0] != key:
                dtype = PRECISIONS[precision]
                with torch.no_grad():
                    weight, bias = _fold(conv, norm)
                cached = (key, weight.to(dtype), bias.to(dtype))  # .to keeps the format
                self._cache[conv] = cached
            out.append((conv, "forward", _folded_forward(conv, cached[1], cached[2])))
        return out


@contextlib.contextmanager
def shadowed(patches: Sequence[Patch]) -> Iterator[None]:
    """While inside, each (object, attribute, value) shadows the attribute with an instance
    attribute (a method stays untouched on the class); removed again on exit."""
    for obj, attr, fn in patches:
        obj.__dict__[attr] = fn
    try:
        yield
    finally:
        for obj, attr, _ in reversed(patches):
            obj.__dict__.pop(attr, None)


# ---- ROIAlign over threads -------------------------------------------------------------------

_MIN_ROIS_PER_THREAD = 16  # below this, a thread hand-off costs more than it saves
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """One pool per process and size (a forked child gets its own: threads do not survive it)."""
    key = (os.getpid(), threads)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="roi_align")
        return pool


def _recording() -> bool:
    """Whether a tracer (torch.jit.trace, the ONNX exporter) or torch.compile is recording ops:
    both only see the calling thread."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


def _image_groups(batch_idx: torch.Tensor, parts: int) -> list[tuple[int, int, torch.Tensor]]:
    """Up to `parts` (first image, end image, ROI indices) groups of consecutive images with
    about equal ROI counts; each group's ROIs keep their order."""
    idx = batch_idx.long()
    counts = torch.bincount(idx).tolist()
    total, before, owner = len(idx), 0, []
    for c in counts:  # an image goes to the part its middle box falls in
        owner.append(min(parts - 1, int((before + c / 2) * parts / total)))
        before += c
    groups = []
    for part in sorted(set(owner)):
        first = owner.index(part)
        end = len(owner) - owner[::-1].index(part)
        sel = ((idx >= first) & (idx < end)).nonzero().squeeze(1)
        if len(sel):
            groups.append((first, end, sel))
    return groups


def _group_rois(rois: torch.Tensor, group: tuple[int, int, torch.Tensor]) -> torch.Tensor:
    first, _, sel = group
    out = rois[sel]
    out[:, 0] -= first
    return out


class _ROIAlignByImage(torch.autograd.Function):
    """torchvision's ROIAlign with forward and backward each spread over threads by image.
    Every image's gradient accumulates its own boxes in their order, as the one-thread kernel
    does, so values and gradients are bit-identical to it."""

    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned, groups):
        ph, pw = output_size
        x = input.float()

        def pool(g):
            first, end, _ = g
            return torch.ops.torchvision.roi_align(x[first:end], _group_rois(rois, g),
                                                   spatial_scale, ph, pw, sampling_ratio, aligned)

        outs = list(_thread_pool(len(groups)).map(pool, groups))
        out = x.new_empty((rois.shape[0], x.shape[1], ph, pw))
        for (_, _, sel), part in zip(groups, outs, strict=True):
            out[sel] = part
        ctx.save_for_backward(rois)
        ctx.meta = (input.shape, input.dtype, ph, pw, spatial_scale, sampling_ratio, aligned,
                    groups)
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        shape, dtype, ph, pw, scale, ratio, aligned, groups = ctx.meta
        grad = grad.float()
        grad_input = grad.new_zeros(shape)

        def unpool(g):
            first, end, sel = g
            grad_input[first:end] = torch.ops.torchvision._roi_align_backward(
                grad[sel].contiguous(), _group_rois(rois, g), scale, ph, pw, end - first,
                shape[1], shape[2], shape[3], ratio, aligned)

        list(_thread_pool(len(groups)).map(unpool, groups))
        return grad_input.to(dtype), None, None, None, None, None, None


def _split_roi_align(align: nn.Module, threads: int) -> Callable:
    """`align`'s forward spread over `threads` threads. torchvision's CPU ROIAlign runs on one
    core and releases the GIL. Without gradients, boxes are dealt round-robin (each is pooled
    independently); with them, whole images are, so that the backward pass is spread as well.
    Either way the numbers are bit-identical."""
    forward = type(align).forward

    def run(input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        n = rois.shape[0]
        parts = min(threads, n // _MIN_ROIS_PER_THREAD)
        if parts < 2 or _recording():  # a tracer does not see other threads' ops
            return forward(align, input, rois)
        if torch.is_grad_enabled() and input.requires_grad:
            groups = _image_groups(rois[:, 0], parts)
            if len(groups) < 2:  # one image: its gradient cannot be split without a sum
                return forward(align, input, rois)
            # boxes rounded to the features' dtype, as ROIAlign does, then pooled in float32
            # as torchvision's autocast kernel does
            return _ROIAlignByImage.apply(input, rois.to(input.dtype).float(), align.output_size,
                                          align.spatial_scale, align.sampling_ratio,
                                          align.aligned, groups)

        def pool_part(k: int) -> torch.Tensor:
            return forward(align, input, rois[k::parts])

        outs = list(_thread_pool(parts).map(pool_part, range(parts)))
        out = outs[0].new_empty((n, *outs[0].shape[1:]))
        for k, part in enumerate(outs):
            out[k::parts] = part
        return out

    return run


def parallel_roi_align(poolers: Iterable[nn.Module | None], threads: int) -> list[Patch]:
    """Patches (for `shadowed`) spreading the CPU ROIAlign of each `ROIPooler` in `poolers` over
    `threads` threads, in training (forward and backward) and at inference: ~2x on 2 cores for
    the box head's 1000 proposals, the same numbers."""
    if threads < 2:
        return []
    return [(align, "forward", _split_roi_align(align, threads))
            for pooler in poolers if pooler is not None
            for align in getattr(pooler, "level_poolers", [])
            if hasattr(align, "aligned")]


# ---- mask head on the instances the merge reads ----------------------------------------------


def masks_above(roi_heads: nn.Module, score_thresh: float) -> list[Patch]:
    """A patch (for `shadowed`) running the ROI heads' inference mask branch (ROIAlign and
    mask head) only on the instances scoring at least `score_thresh`, the only ones the
    panoptic merge reads; the others keep their index and get all-zero masks. Each instance's
    mask is computed on its own box, so the masks the merge reads are the same numbers."""
    if not getattr(roi_heads, "mask_on", False) or not hasattr(roi_heads, "_forward_mask"):
        return []
    branch = roi_heads._forward_mask

    def forward_mask(features: dict[str, torch.Tensor], instances: list) -> list:
        keeps = [inst.scores >= score_thresh for inst in instances]
        if all(bool(k.all()) for k in keeps):
            return branch(features, instances)
        kept = branch(features, [inst[k] for inst, k in zip(instances, keeps, strict=True)])
        for inst, keep, sub in zip(instances, keeps, kept, strict=True):
            masks = sub.pred_masks
            full = masks.new_zeros((len(inst), *masks.shape[1:]))
            full[keep] = masks
            inst.pred_masks = full
        return instances

    return [(roi_heads, "_forward_mask", forward_mask)]
