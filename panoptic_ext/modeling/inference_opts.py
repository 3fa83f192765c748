"""Inference-only speed-ups the meta-architecture applies around its network: batch norms folded
into convolutions, channels_last convolutions, autocast for the convolutional parts, and
ROIAlign spread over threads.

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

__all__ = [
    "PRECISIONS",
    "FoldedNorms",
    "autocast",
    "check_precision",
    "convert_channels_last",
    "float_outputs",
    "foldable",
    "parallel_roi_align",
    "shadowed",
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Patch = tuple[Any, str, Callable]  # (object, attribute, value shadowing it)


def check_precision(precision: str, device_type: str | None = None) -> str:
    """`precision` if TEST.PRECISION can take it (on `device_type`, when given)."""
    if precision not in PRECISIONS:
        raise ValueError(f"TEST.PRECISION must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device_type == "cpu":
        raise ValueError("TEST.PRECISION='fp16' needs CUDA; use 'bf16' on CPU")
    return precision


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to `precision` on `device_type`; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=PRECISIONS[precision])


def convert_channels_last(modules: Iterable[nn.Module]) -> None:
    """Conv weights of `modules` in channels_last: faster convolutions with oneDNN on CPU."""
    for m in modules:
        m.to(memory_format=torch.channels_last)


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


def _folded_forward(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        w, b = weight, bias
        if w.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            w, b = w.to(x.dtype), b.to(x.dtype)  # a reduced-precision copy run outside autocast
        y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        return conv.activation(y) if conv.activation is not None else y

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
                cached = (key, *self._fold(conv, norm, PRECISIONS[precision]))
                self._cache[conv] = cached
            out.append((conv, "forward", _folded_forward(conv, cached[1], cached[2])))
        return out

    @staticmethod
    def _fold(conv: nn.Module, norm: nn.Module, dtype: torch.dtype):
        with torch.no_grad():
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
            bias = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
        fmt = (torch.channels_last
               if conv.weight.is_contiguous(memory_format=torch.channels_last)
               and not conv.weight.is_contiguous() else torch.contiguous_format)
        return weight.to(dtype).contiguous(memory_format=fmt), bias.to(dtype)


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


def _split_roi_align(align: nn.Module, threads: int) -> Callable:
    """`align`'s forward with its boxes dealt round-robin to `threads` threads. torchvision's
    CPU ROIAlign runs on one core and releases the GIL; each box is pooled independently, so
    the result is bit-identical."""
    forward = type(align).forward

    def run(input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        n = rois.shape[0]
        parts = min(threads, n // _MIN_ROIS_PER_THREAD)
        if parts < 2 or _recording():  # a tracer does not see other threads' ops
            return forward(align, input, rois)
        grad = torch.is_grad_enabled()  # thread-local: carry the caller's mode over

        def pool_part(k: int) -> torch.Tensor:
            with torch.set_grad_enabled(grad):
                return forward(align, input, rois[k::parts])

        outs = list(_thread_pool(parts).map(pool_part, range(parts)))
        out = outs[0].new_empty((n, *outs[0].shape[1:]))
        for k, part in enumerate(outs):
            out[k::parts] = part
        return out

    return run


def parallel_roi_align(poolers: Iterable[nn.Module | None], threads: int) -> list[Patch]:
    """Patches (for `shadowed`) spreading the CPU ROIAlign of each `ROIPooler` in `poolers` over
    `threads` threads: ~2x on 2 cores for the box head's 1000 proposals, the same numbers."""
    if threads < 2:
        return []
    return [(align, "forward", _split_roi_align(align, threads))
            for pooler in poolers if pooler is not None
            for align in getattr(pooler, "level_poolers", [])
            if hasattr(align, "aligned")]
