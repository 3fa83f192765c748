"""Reduced precision that fits the hardware: one rule for training (SOLVER.AMP) and inference
(TEST.PRECISION).

bf16 pays only where the CPU computes it natively (avx512_bf16 or AMX); elsewhere oneDNN and
ATen emulate it, about ten times slower than fp32 (measured on AVX2-only CPUs). So bf16 asked
for on such a CPU runs fp32 instead, with one log line saying why, unless emulation is asked for
explicitly (MODEL.PANOPTIC_EXT.EMULATED_BF16, for tests of that path). fp16 needs CUDA.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch

__all__ = ["PRECISIONS", "autocast", "avx512_convolutions", "channels_last_training",
           "check_precision", "native_bf16", "resolve_precision"]

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include bf16 instructions.
_BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
              "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
              "AVX10_2_512", "AVX10_2_512_AMX_2")
_logged: set[str] = set()


def check_precision(precision: str, device_type: str | None = None,
                    key: str = "TEST.PRECISION") -> str:
    """`precision` if `key` can take it (on `device_type`, when given)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key} must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device_type is not None and device_type != "cuda":
        raise ValueError(f"{key}='fp16' needs CUDA (this model runs on {device_type}); use "
                         "'bf16' or 'fp32'")
    return precision


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to `precision` on `device_type`; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=PRECISIONS[precision])


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None  # not Linux: oneDNN's own check decides


def onednn_isa_cap() -> str | None:
    """oneDNN's instruction-set cap from the environment (ONEDNN_MAX_CPU_ISA, or its old name
    DNNL_MAX_CPU_ISA), upper case; None when unset or ALL. The one place it is read."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    return None if cap in ("", "ALL") else cap


def avx512_convolutions() -> bool:
    """Whether oneDNN runs this CPU's convolutions with AVX-512: the CPU has oneDNN's
    AVX512_CORE set (avx512f/bw/vl/dq) and ONEDNN_MAX_CPU_ISA does not cap it below."""
    cap = onednn_isa_cap()
    if cap is not None and not cap.startswith(("AVX512", "AVX10", "DEFAULT")):
        return False
    flags = _cpu_flags()
    return flags is None or {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags


def channels_last_training(device_type: str) -> bool:
    """Whether channels_last convolutions pay in training on `device_type`: not on CPUs whose
    oneDNN lacks AVX-512, where their backward is slower than NCHW (docs/speed.md, "Training,
    CPU"); said once there. Inference gains from channels_last on both kinds."""
    if device_type != "cpu" or avx512_convolutions():
        return True
    _log_once("MODEL.PANOPTIC_EXT.CHANNELS_LAST", "MODEL.PANOPTIC_EXT.CHANNELS_LAST: training "
              "runs NCHW convolutions on this CPU (oneDNN without AVX-512: their channels_last "
              "backward is slower here); inference stays channels_last")
    return False


def _log_once(key: str, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.info(message)


def native_bf16(device_type: str) -> bool:
    """Whether `device_type` computes bf16 in hardware (CPU: avx512_bf16 or AMX, and oneDNN not
    capped below them by ONEDNN_MAX_CPU_ISA)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return True
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if (onednn_isa_cap() or "ALL") not in _BF16_ISAS:
        return False
    flags = _cpu_flags()
    return flags is None or bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str, device_type: str, allow_emulated: bool = False,
                      key: str = "TEST.PRECISION") -> str:
    """The precision to run for `precision` asked by config `key` on `device_type`: bf16
    becomes fp32 where it would be emulated (logged once per key), unless `allow_emulated`."""
    check_precision(precision, device_type, key)
    if precision != "bf16" or allow_emulated or native_bf16(device_type):
        return precision
    _log_once(key, f"{key} asks for bf16, but this {device_type.upper()} has no native bf16 "
              "(avx512_bf16 / AMX): emulated it runs about 10x slower than fp32, so fp32 runs "
              "instead. MODEL.PANOPTIC_EXT.EMULATED_BF16 True forces bf16.")
    return "fp32"
