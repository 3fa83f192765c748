"""One precision rule for training and inference: bf16 only where the hardware has it (unless
emulation is asked for), fp16 only on CUDA, whatever runs the model; AVX-512 convolutions read
from the CPU flags and oneDNN's cap."""

import logging

import pytest
import torch
from detectron2.modeling import build_model

from panoptic_ext.engine.train_loop import autocast_dtype_for
from panoptic_ext.modeling import precision
from panoptic_ext.modeling.precision import (
    avx512_convolutions,
    check_precision,
    native_bf16,
    resolve_precision,
)

from ..helpers.model import coco_cfg


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pretend to be a CPU with (True) or without (False) native bf16."""
    def set_kind(native: bool):
        flags = {"avx2", "fma"} | ({"avx512_bf16", "amx_bf16"} if native else set())
        monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision, "_logged", set())
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    return set_kind


def test_native_bf16_needs_the_instructions_and_no_isa_cap(cpu_kind, monkeypatch):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        cpu_kind(True)
        assert not native_bf16("cpu")  # oneDNN itself says no (AVX2-only CPU)
        return
    cpu_kind(False)
    assert not native_bf16("cpu")
    cpu_kind(True)
    assert native_bf16("cpu")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # capped below bf16
    assert not native_bf16("cpu")


def test_bf16_falls_back_to_fp32_where_emulated_with_one_log_line(cpu_kind, caplog):
    cpu_kind(False)
    with caplog.at_level(logging.INFO, logger="panoptic_ext"):
        assert resolve_precision("bf16", "cpu", key="TEST.PRECISION") == "fp32"
        assert resolve_precision("bf16", "cpu", key="TEST.PRECISION") == "fp32"
    lines = [r.getMessage() for r in caplog.records if "native bf16" in r.getMessage()]
    assert len(lines) == 1 and "TEST.PRECISION" in lines[0] and "EMULATED_BF16" in lines[0]
    assert resolve_precision("bf16", "cpu", allow_emulated=True) == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_bad_precisions_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="TEST.PRECISION must be one of"):
        check_precision("fp64")
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED='fp16' needs CUDA"):
        resolve_precision("fp16", "cpu", key="SOLVER.AMP.ENABLED")


@pytest.mark.parametrize("runtime", ["torch", "openvino", "auto"])
def test_fp16_on_cpu_is_refused_for_every_runtime(runtime):
    cfg = coco_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18  # small: only the check matters
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.TEST.PRECISION = "fp16"
    cfg.TEST.RUNTIME = runtime
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        build_model(cfg)


def test_model_precision_follows_the_hardware(cpu_kind):
    cfg = coco_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.TEST.PRECISION = "bf16"
    cpu_kind(False)
    assert build_model(cfg).precision == "fp32"
    cfg.MODEL.PANOPTIC_EXT.EMULATED_BF16 = True
    assert build_model(cfg).precision == "bf16"


def test_training_autocast_follows_the_hardware(cpu_kind):
    cfg = coco_cfg()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = "bfloat16"
    cpu_kind(False)
    assert autocast_dtype_for(cfg) is None
    cfg.MODEL.PANOPTIC_EXT.EMULATED_BF16 = True
    assert autocast_dtype_for(cfg) is torch.bfloat16
    cfg.SOLVER.AMP.ENABLED = False
    assert autocast_dtype_for(cfg) is None
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = "float16"
    with pytest.raises(ValueError, match="float16' needs CUDA"):
        autocast_dtype_for(cfg)


def test_avx512_convolutions_follow_the_flags_and_the_cap(cpu_kind, monkeypatch):
    cpu_kind(False)  # AVX2 + FMA only
    assert not avx512_convolutions()
    avx512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(avx512))
    assert avx512_convolutions()
    for cap, want in (("AVX2", False), ("avx2_vnni", False), ("AVX512_CORE", True),
                      ("AVX512_CORE_AMX", True), ("ALL", True)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert avx512_convolutions() is want, cap
