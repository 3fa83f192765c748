"""TEST.RUNTIME: the dense parts run by OpenVINO / ONNX Runtime give torch's panoptic output,
bf16 maps to OpenVINO's precision hint, a missing runtime falls back to torch, "auto" picks the
fastest installed one and refuses a build that disagrees with torch, bad values fail.

The suite sets AUTO_RUNTIME_ENV=torch (conftest); tests of "auto" itself unset it."""

import logging

import pytest
import torch
from detectron2.modeling import build_model

from panoptic_ext.deploy import numpy_pipeline, runtime
from panoptic_ext.deploy.numpy_pipeline import openvino_config
from panoptic_ext.deploy.runtime import (
    CompiledRuntime,
    DenseRunner,
    build_inference_model,
    check_runtime,
    resolve_runtime,
)
from tests.helpers.tools import TINY_OPTS, synthetic_cfg

# a small R-18 FPN: tracing and compiling it stays cheap; random GN weights give detections
SMALL = [*TINY_OPTS, "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
         "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
         "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
         "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
         "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0",
         "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", "16"]


@pytest.fixture(scope="module")
def small():
    """(model, inputs, torch's outputs): two images of different sizes, one resized output."""
    torch.manual_seed(0)
    model = build_model(synthetic_cfg(SMALL)).eval()
    gen = torch.Generator().manual_seed(1)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 80), generator=gen).float(),
               "height": 90, "width": 100},
              {"image": torch.randint(0, 256, (3, 48, 64), generator=gen).float()}]
    with torch.no_grad():
        ref = model(inputs)
    return model, inputs, ref


def _agreement(ref, out) -> float:
    pix = sum((r["panoptic_seg"][0] == o["panoptic_seg"][0]).sum().item()
              for r, o in zip(ref, out, strict=True))
    return pix / sum(r["panoptic_seg"][0].numel() for r in ref)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_runtime_matches_torch(small, name, monkeypatch, caplog):
    pytest.importorskip(name)
    model, inputs, ref = small
    monkeypatch.setattr(model, "dense_runner", DenseRunner(name))
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="panoptic_ext.deploy.runtime"):
        out = model(inputs)
        engine = model.dense_runner.engine
        again = model(inputs)  # same weights: nothing rebuilt
    assert engine is not None and engine.runtime == name and model.dense_runner.engine is engine
    assert sum("compiled in" in r.getMessage() for r in caplog.records) == 1
    assert _agreement(ref, out) >= 0.999 and _agreement(out, again) == 1.0
    assert sum(s["isthing"] for r in ref for s in r["panoptic_seg"][1]) > 0  # heads ran
    for r, o in zip(ref, out, strict=True):
        assert o["sem_seg"].shape == r["sem_seg"].shape
        assert len(o["instances"]) == len(r["instances"])
        assert torch.allclose(o["instances"].scores, r["instances"].scores, atol=1e-3)


def test_bf16_maps_to_the_openvino_hint(small, monkeypatch):
    assert openvino_config("bf16", 2) == {"INFERENCE_PRECISION_HINT": "bf16",
                                          "INFERENCE_NUM_THREADS": 2}
    assert openvino_config("fp32", 0) == {"INFERENCE_PRECISION_HINT": "f32"}
    pytest.importorskip("openvino")
    model, inputs, _ = small
    seen = []
    monkeypatch.setattr(numpy_pipeline, "openvino_config",
                        lambda p, t: seen.append(p) or openvino_config(p, t))
    monkeypatch.setattr(model, "dense_runner", DenseRunner("openvino"))
    monkeypatch.setattr(model, "precision", "bf16")
    with torch.no_grad():
        out = model(inputs[1:])
    engine = model.dense_runner.engine
    assert engine.precision == "bf16" and set(seen) == {"bf16"}
    assert out[0]["panoptic_seg"][0].shape == inputs[1]["image"].shape[1:]
    # a weight changed in place (as by an optimizer step) makes the next call rebuild
    key = engine._weights_key(model)
    with torch.no_grad():
        model.sem_seg_head.predictor.bias.add_(5.0)
        try:
            assert engine._weights_key(model) != key
        finally:
            model.sem_seg_head.predictor.bias.sub_(5.0)


def test_missing_runtime_falls_back_to_torch(small, monkeypatch, caplog):
    monkeypatch.delenv(runtime.AUTO_RUNTIME_ENV, raising=False)
    model, inputs, ref = small
    real = runtime.importlib.util.find_spec
    monkeypatch.setattr(runtime.importlib.util, "find_spec",
                        lambda name: None if name in ("openvino", "onnxruntime") else real(name))
    monkeypatch.setattr(runtime, "_fallback_logged", set())
    with caplog.at_level(logging.WARNING, logger="panoptic_ext.deploy.runtime"):
        assert resolve_runtime("openvino", "cpu") == "torch"
    assert "falling back to torch" in caplog.text and "openvino" in caplog.text
    assert resolve_runtime("auto", "cpu") == "torch"
    monkeypatch.setattr(model, "dense_runner", DenseRunner("onnxruntime"))
    with torch.no_grad():
        out = model(inputs)
    assert model.dense_runner.engine is None and _agreement(ref, out) == 1.0
    assert resolve_runtime("auto", "cuda") == "torch"


def test_bad_runtime_names_the_key():
    with pytest.raises(ValueError, match="TEST.RUNTIME must be one of"):
        check_runtime("tensorrt")
    cfg = synthetic_cfg([*SMALL, "TEST.RUNTIME", "OpenVINO"])
    with pytest.raises(ValueError, match="TEST.RUNTIME.*'OpenVINO'"):
        build_inference_model(cfg)
    with pytest.raises(ValueError, match="CompiledRuntime runs"):
        CompiledRuntime("torch")


def test_auto_picks_the_fastest_installed_runtime(monkeypatch):
    monkeypatch.delenv(runtime.AUTO_RUNTIME_ENV, raising=False)
    monkeypatch.setattr(runtime, "available_runtimes", lambda: ["openvino", "onnxruntime"])
    assert resolve_runtime("auto", "cpu") == "openvino"
    assert resolve_runtime("auto", "cuda") == "torch"
    monkeypatch.setattr(runtime, "available_runtimes", lambda: ["onnxruntime"])
    assert resolve_runtime("auto", "cpu") == "onnxruntime"
    monkeypatch.setenv(runtime.AUTO_RUNTIME_ENV, "torch")
    assert resolve_runtime("auto", "cpu") == "torch"
    assert resolve_runtime("openvino", "cpu") == "torch"  # not installed (as patched)
    monkeypatch.setenv(runtime.AUTO_RUNTIME_ENV, "onnxruntime")
    assert resolve_runtime("auto", "cpu") == "onnxruntime"
    monkeypatch.setattr(runtime, "available_runtimes", lambda: ["openvino", "onnxruntime"])
    monkeypatch.delenv(runtime.AUTO_RUNTIME_ENV)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # OpenVINO segfaults under the cap
    assert resolve_runtime("auto", "cpu") == "onnxruntime"
    with pytest.raises(ValueError, match="TEST.RUNTIME openvino.*ONEDNN_MAX_CPU_ISA"):
        resolve_runtime("openvino", "cpu")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv(runtime.AUTO_RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match=f"{runtime.AUTO_RUNTIME_ENV}='tensorrt'"):
        resolve_runtime("auto", "cpu")


@pytest.mark.parametrize("broken", [None, "dense", "mask"])
def test_auto_checks_each_build_against_torch(small, broken, monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv(runtime.AUTO_RUNTIME_ENV, raising=False)
    monkeypatch.setattr(runtime, "available_runtimes", lambda: ["onnxruntime"])
    model, inputs, ref = small
    monkeypatch.setattr(model, "dense_runner", DenseRunner("auto"))
    if broken:  # a graph that computes something else: its first output is off
        call = numpy_pipeline.Session.__call__
        engines = {"dense": lambda outs: len(outs) > 3, "mask": lambda outs: len(outs) == 1}

        def wrong(self, *arrays):
            outs = call(self, *arrays)
            return [outs[0] + 1.0, *outs[1:]] if engines[broken](outs) else outs

        monkeypatch.setattr(numpy_pipeline.Session, "__call__", wrong)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="panoptic_ext.deploy.runtime"):
        out = model(inputs)
        again = model(inputs)  # same weights: neither rebuilt nor checked again
    engine = model.dense_runner.engine
    assert engine is not None and engine.verify and engine.runtime == "onnxruntime"
    assert sum("compiled in" in r.getMessage() for r in caplog.records) == 1
    if broken:
        assert engine.refused is not None
        assert ("sem_seg" if broken == "dense" else "mask head mask_logits") in engine.refused
        assert "refused" in caplog.text and "torch runs" in caplog.text
        assert _agreement(ref, out) == 1.0 and _agreement(ref, again) == 1.0  # torch ran
        with pytest.raises(RuntimeError, match="refused"):
            engine.dense(model, torch.zeros(1, 3, 64, 64))
    else:
        assert engine.refused is None and "agrees with torch" in caplog.text
        assert _agreement(ref, out) >= 0.999


def test_auto_refuses_a_model_the_graphs_do_not_cover(monkeypatch, caplog):
    """ROIPool (no ONNX RoiAlign form): "auto" runs torch with a warning, an explicit runtime
    says what is unsupported."""
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv(runtime.AUTO_RUNTIME_ENV, raising=False)
    monkeypatch.setattr(runtime, "available_runtimes", lambda: ["onnxruntime"])
    torch.manual_seed(0)
    model = build_inference_model(synthetic_cfg([*SMALL, "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
                                                 "ROIPool", "TEST.RUNTIME", "auto"]))
    inputs = [{"image": torch.randint(0, 256, (3, 64, 80)).float()}]
    with torch.no_grad():
        auto = model.dense_runner
        assert isinstance(auto, DenseRunner) and auto.runtime == "auto"
        monkeypatch.setattr(model, "dense_runner", None)
        ref = model(inputs)
        monkeypatch.setattr(model, "dense_runner", auto)
        with caplog.at_level(logging.WARNING, logger="panoptic_ext.deploy.runtime"):
            out = model(inputs)
        assert "export or compile failed" in auto.engine.refused
        assert "pooler RoIPool is not" in caplog.text and "torch runs" in caplog.text
        assert _agreement(ref, out) == 1.0
        monkeypatch.setattr(model, "dense_runner", DenseRunner("onnxruntime"))
        with pytest.raises(TypeError, match="does not support this model"):
            model(inputs)


def test_attach_runtime_gives_the_model_its_runner():
    """TEST.RUNTIME is attached from outside the model: torch leaves none, the others a runner;
    Detectron2's own model (no dense_runner slot) is left alone; a bad value names the key."""
    from detectron2.config import CfgNode

    from panoptic_ext.deploy.runtime import attach_runtime

    model = build_model(synthetic_cfg(SMALL))
    assert model.dense_runner is None  # plain build_model: torch runs the dense parts
    for value, want in (("torch", None), ("auto", "auto"), ("onnxruntime", "onnxruntime")):
        cfg = CfgNode({"TEST": CfgNode({"RUNTIME": value})})
        assert attach_runtime(model, cfg) is model
        assert getattr(model.dense_runner, "runtime", None) == want
    plain = torch.nn.Module()
    attach_runtime(plain, CfgNode({"TEST": CfgNode({"RUNTIME": "auto"})}))
    assert not hasattr(plain, "dense_runner")
    with pytest.raises(ValueError, match="TEST.RUNTIME must be one of"):
        attach_runtime(model, CfgNode({"TEST": CfgNode({"RUNTIME": "trt"})}))
