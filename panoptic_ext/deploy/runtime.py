"""TEST.RUNTIME: the model's dense parts run by OpenVINO or ONNX Runtime at inference.

`attach_runtime(model, cfg)` gives an inference model the `DenseRunner` that TEST.RUNTIME
asks for (`build_inference_model` builds and attaches); the model itself knows only that it
may have a dense runner (`PanopticFPNExt.dense_runner`).

`CompiledRuntime`: the model's own weights exported in memory on the first inference call (so
every checkpoint works, nothing is downloaded), compiled by the engine with dynamic shapes, and
rebuilt when any weight changes (keyed on the tensors' in-place version counters, as the folded
norms are: training steps and `load_state_dict` bump them). Only the dense parts run there;
proposal selection, NMS, ROIAlign, pasting and the merge stay in torch. With TEST.RUNTIME
"auto" (the default) each build is checked against torch on its first input and refused (torch
runs instead, with a warning) if the outputs disagree.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from ..modeling.meta_arch import DenseOutputs
from ..modeling.precision import onednn_isa_cap
from .graphs import (
    DenseGraph,
    RoiHeadGraph,
    check_exportable,
    folded_norms,
    onnx_bytes,
    pooled_sample,
)
from .numpy_pipeline import Session

__all__ = [
    "AUTO_RUNTIME_ENV",
    "RUNTIMES",
    "CompiledRuntime",
    "DenseRunner",
    "attach_runtime",
    "available_runtimes",
    "build_inference_model",
    "check_runtime",
    "resolve_runtime",
]

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
_COMPILED = ("openvino", "onnxruntime")  # "auto" order: fastest first (see docs/speed.md)
# What "auto" means when set (e.g. "torch" where many short-lived models would each pay the
# export and compile: the test suite sets it).
AUTO_RUNTIME_ENV = "PANOPTIC_EXT_AUTO_RUNTIME"
# "auto" refuses a build whose dense outputs differ from torch's by more than this fraction of
# each output's largest magnitude (fp32 graphs differ by ~1e-6; a wrong graph by ~1).
_AUTO_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 5e-2}


def check_runtime(runtime: str) -> str:
    """`runtime` if TEST.RUNTIME can take it."""
    if runtime not in RUNTIMES:
        raise ValueError(f"TEST.RUNTIME must be one of {list(RUNTIMES)}, got {runtime!r}")
    return runtime


def available_runtimes() -> list[str]:
    """The compiled runtimes importable here, fastest first."""
    return [r for r in _COMPILED if importlib.util.find_spec(r) is not None]


_fallback_logged: set[str] = set()
# Under oneDNN's ISA cap (e.g. ONEDNN_MAX_CPU_ISA=AVX2, to emulate an older CPU), OpenVINO
# 2026.4's CPU plugin segfaults on its first inference of the dense graph: "auto" cannot catch it
_ISA_CAP_ENV = "ONEDNN_MAX_CPU_ISA"


def _log_once(key: str, message: str) -> None:
    if key not in _fallback_logged:
        _fallback_logged.add(key)
        logger.warning(message)


def resolve_runtime(runtime: str, device_type: str) -> str:
    """What TEST.RUNTIME `runtime` means on `device_type`: "torch", "openvino" or
    "onnxruntime". "auto" is the fastest installed compiled runtime on CPU (or the one the
    environment variable AUTO_RUNTIME_ENV names) and torch elsewhere;
    a requested runtime that is not installed (or a non-CPU device) falls back to torch with a
    logged line."""
    check_runtime(runtime)
    if runtime == "torch":
        return "torch"
    if device_type != "cpu":
        if runtime != "auto":
            _log_once(runtime, f"TEST.RUNTIME={runtime!r} runs on CPU only; using torch on "
                      f"{device_type}")
        return "torch"
    installed = available_runtimes()
    if runtime == "auto":
        forced = os.environ.get(AUTO_RUNTIME_ENV, "")
        if forced and forced != "auto":
            if forced not in RUNTIMES:
                raise ValueError(f"environment variable {AUTO_RUNTIME_ENV}={forced!r}: must be one "
                                 f"of {list(RUNTIMES)} (or unset)")
            return resolve_runtime(forced, device_type)
        if "openvino" in installed and onednn_isa_cap():
            installed.remove("openvino")
            _log_once("isa-cap", f"TEST.RUNTIME auto: {_ISA_CAP_ENV} is set, and OpenVINO's CPU "
                      "plugin crashes (segmentation fault) under it; using "
                      f"{installed[0] if installed else 'torch'} instead")
        return installed[0] if installed else "torch"
    if runtime not in installed:
        _log_once(runtime, f"TEST.RUNTIME={runtime!r}: {runtime} is not importable; falling "
                  "back to torch (pip install -r requirements.txt)")
        return "torch"
    if runtime == "openvino" and onednn_isa_cap():
        raise ValueError(f"TEST.RUNTIME openvino: OpenVINO's CPU plugin crashes (segmentation "
                         f"fault) while {_ISA_CAP_ENV} is set; unset it, or use TEST.RUNTIME "
                         "auto / onnxruntime / torch")
    return runtime


def _np(t: torch.Tensor):
    return t.detach().float().contiguous().numpy()


class CompiledRuntime:
    """The dense parts of one model run by `runtime` ("openvino" / "onnxruntime") at
    `precision`; graphs built lazily from the model's current weights and rebuilt after any
    weight changes."""

    def __init__(self, runtime: str, precision: str = "fp32",
                 reuse: CompiledRuntime | None = None, verify: bool = False):
        """`reuse`: another instance for the same model, whose exported graphs are taken over
        while the weights are unchanged (switching runtime or precision compiles only).
        `verify`: check each build against torch on its first input (TEST.RUNTIME "auto")."""
        if runtime not in _COMPILED:
            raise ValueError(f"CompiledRuntime runs {_COMPILED}, got {runtime!r}")
        self.runtime = runtime
        self.precision = precision
        self.verify = verify
        self.refused: str | None = None  # why the last build failed `verify`
        self._key: tuple | None = None
        self._engines: dict[str, Session] = {}
        self._blobs: dict[str, bytes] = {} if reuse is None else reuse._blobs
        self._blob_key: tuple | None = None if reuse is None else reuse._blob_key

    def __getstate__(self) -> dict[str, Any]:
        """Copies (deepcopy, pickle) leave the compiled engines behind; they rebuild lazily."""
        return {**self.__dict__, "_key": None, "_engines": {}, "_blob_key": None, "_blobs": {},
                "refused": None}

    @staticmethod
    def _weights_key(model: nn.Module) -> tuple:
        return tuple((t.data_ptr(), t._version)
                     for t in (*model.parameters(), *model.buffers()))

    def _build(self, model: nn.Module, x: torch.Tensor) -> None:
        """Export the graphs from the current weights (norms folded) and compile them. With
        `verify`, a model the graphs do not cover or an engine that fails is refused (torch
        runs) instead of raising: "auto" must never break a model torch runs."""
        key = self._weights_key(model)
        self._key = key
        self.refused = None
        try:
            self._export_and_compile(model, x, key)
        except Exception as e:  # noqa: BLE001 - any failure of an optional engine
            if not self.verify:
                raise
            self._engines = {}
            self.refused = f"export or compile failed: {type(e).__name__}: {e}"
        else:
            if self.verify:
                self.refused, worst = self._disagreement(model, x)
                if self.refused is None:
                    logger.info(f"TEST.RUNTIME auto: {self.runtime} agrees with torch on the "
                                f"first input (largest difference {worst:.1e} of an output's "
                                "range)")
        if self.refused is not None:
            logger.warning(f"TEST.RUNTIME auto: {self.runtime} refused ({self.refused}); torch "
                           "runs this model's dense parts instead (checked again when the "
                           "weights change; TEST.RUNTIME torch skips the attempt)")

    def _export_and_compile(self, model: nn.Module, x: torch.Tensor, key: tuple) -> None:
        t0 = time.perf_counter()
        if self._blob_key != key:
            self._blobs = self._export(model, x)
            self._blob_key = key
        t1 = time.perf_counter()
        threads = torch.get_num_threads()
        if self.runtime == "onnxruntime" and self.precision == "bf16":
            _log_once("bf16", "TEST.PRECISION=bf16: ONNX Runtime's CPU provider runs fp32")
        self._engines = {k: Session(self.runtime, b, self.precision, threads)
                         for k, b in self._blobs.items()}
        logger.info(f"TEST.RUNTIME {self.runtime} ({self.precision}): graphs exported in "
                    f"{t1 - t0:.1f} s, compiled in {time.perf_counter() - t1:.1f} s "
                    "(dynamic shapes: once per weights)")

    def _disagreement(self, model: nn.Module, x: torch.Tensor) -> tuple[str | None, float]:
        """(None, largest relative difference) if the compiled graphs give torch's outputs
        within _AUTO_TOLERANCE (the dense graph on `x`, the box and mask heads on seeded
        random pooled features), else (what differs, that difference)."""
        rh = model.roi_heads
        dense = DenseGraph(model, full_semantic=False).eval()
        checks: list[tuple[str, nn.Module, torch.Tensor, list[str]]] = [
            ("dense", dense, x, dense.output_names())]
        gen = torch.Generator().manual_seed(0)
        channels = model.backbone.output_shape()[rh.box_in_features[0]].channels
        heads = [("box", RoiHeadGraph(rh.box_head, rh.box_predictor), rh.box_pooler,
                  ["class_logits", "box_deltas"])]
        if "mask" in self._engines:
            heads.append(("mask", RoiHeadGraph(rh.mask_head), rh.mask_pooler, ["mask_logits"]))
        for key, head, pooler, names in heads:
            pooled = torch.randn((4, channels, *pooler.output_size), generator=gen)
            checks.append((key, head.eval(), pooled, [f"{key} head {n}" for n in names]))
        tol = _AUTO_TOLERANCE.get(self.precision, max(_AUTO_TOLERANCE.values()))
        worst = 0.0
        for key, graph, inp, names in checks:
            with torch.no_grad(), folded_norms(model):
                want = graph(inp)
            want = want if isinstance(want, (tuple, list)) else (want,)
            got = self._engines[key](_np(inp))
            for name, ref, out in zip(names, want, got, strict=True):
                ref, out = ref.float(), torch.from_numpy(out)
                if ref.shape != out.shape:
                    return (f"{name}: shape {tuple(out.shape)}, torch {tuple(ref.shape)}",
                            float("inf"))
                diff = float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)
                if not diff <= tol:  # NaN fails too
                    return (f"{name}: largest difference {diff:.2g} of its range, tolerance "
                            f"{tol:g}"), diff
                worst = max(worst, diff)
        return None, worst

    def ready(self, model: nn.Module, x: torch.Tensor) -> bool:
        """Build from the current weights if they changed (`x`: the batch it is for); False
        when `verify` refused the build, and torch should run."""
        if self._key is None or self._key != self._weights_key(model):
            self._build(model, x)
        return self.refused is None

    @staticmethod
    def _export(model: nn.Module, x: torch.Tensor) -> dict[str, bytes]:
        """The dense, box head and mask head graphs of the model's current weights."""
        check_exportable(model)
        rh = model.roi_heads
        dense = DenseGraph(model, full_semantic=False).eval()
        names = dense.output_names()
        axes = {"image": {0: "batch", 2: "height", 3: "width"}}
        axes.update({n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in names})
        channels = model.backbone.output_shape()[rh.box_in_features[0]].channels
        with folded_norms(model):
            blobs = {"dense": onnx_bytes(dense, (x,), ["image"], names, axes)}
            box_in = pooled_sample(rh.box_pooler, channels)
            blobs["box"] = onnx_bytes(
                RoiHeadGraph(rh.box_head, rh.box_predictor).eval(), (box_in,), ["pooled"],
                ["class_logits", "box_deltas"],
                {"pooled": {0: "n"}, "class_logits": {0: "n"}, "box_deltas": {0: "n"}})
            if getattr(rh, "mask_on", False):
                mask_in = pooled_sample(rh.mask_pooler, channels)
                blobs["mask"] = onnx_bytes(
                    RoiHeadGraph(rh.mask_head).eval(), (mask_in,), ["pooled"],
                    ["mask_logits"], {"pooled": {0: "n"}, "mask_logits": {0: "n"}})
        return blobs

    def dense(self, model: nn.Module, x: torch.Tensor) -> tuple[
            torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(semantic logits at 1/common_stride, ROI features by name, RPN objectness and deltas
        per level) of the padded, normalized batch `x`, by the compiled dense graph."""
        if not self.ready(model, x):
            raise RuntimeError(f"{self.runtime} was refused for this model: {self.refused}")
        outs = [torch.from_numpy(o) for o in self._engines["dense"](_np(x))]
        names = DenseGraph(model).feature_names
        n_rpn = len(model.proposal_generator.in_features)
        features = dict(zip(names, outs[1:1 + len(names)], strict=True))
        rest = outs[1 + len(names):]
        return outs[0], features, rest[:n_rpn], rest[n_rpn:]

    def head_patches(self, model: nn.Module, objectness: list[torch.Tensor],
                     deltas: list[torch.Tensor]) -> list[tuple[Any, str, Callable]]:
        """(object, attribute, replacement) patches (for `inference_opts.shadowed`) that make
        the RPN head return the dense graph's outputs and the box / mask heads run compiled."""
        rpn_head = model.proposal_generator.rpn_head
        rh = model.roi_heads
        box_head, predictor = rh.box_head, rh.box_predictor
        patches: list[tuple[Any, str, Callable]] = [
            (rpn_head, "forward", lambda features: (list(objectness), list(deltas)))]

        def box_forward(x: torch.Tensor):
            if x.shape[0] == 0:
                return type(box_head).forward(box_head, x)
            return tuple(torch.from_numpy(o) for o in self._engines["box"](_np(x)))

        def predictor_forward(x):
            return x if isinstance(x, tuple) else type(predictor).forward(predictor, x)

        patches += [(box_head, "forward", box_forward), (predictor, "forward", predictor_forward)]
        mask_head = getattr(rh, "mask_head", None)
        if "mask" in self._engines and mask_head is not None:
            def mask_layers(x: torch.Tensor) -> torch.Tensor:
                if x.shape[0] == 0:
                    return type(mask_head).layers(mask_head, x)
                return torch.from_numpy(self._engines["mask"](_np(x))[0])

            patches.append((mask_head, "layers", mask_layers))
        return patches


class DenseRunner:
    """The dense-part call `PanopticFPNExt` takes (`model.dense_runner`): TEST.RUNTIME
    resolved on the model's device, a `CompiledRuntime` made on the first call and remade when
    the runtime or the model's precision changes; None (torch runs) where the runtime is torch
    or "auto" refused the build."""

    def __init__(self, runtime: str = "auto"):
        self.runtime = check_runtime(runtime)
        self.engine: CompiledRuntime | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor) -> DenseOutputs | None:
        name = resolve_runtime(self.runtime, model.device.type)
        if name == "torch":
            return None
        verify = self.runtime == "auto"
        engine = self.engine
        if engine is None or (engine.runtime, engine.precision, engine.verify) != (
                name, model.precision, verify):
            engine = self.engine = CompiledRuntime(name, model.precision, reuse=engine,
                                                   verify=verify)
        if not engine.ready(model, x):
            return None
        sem_small, features, objectness, deltas = engine.dense(model, x)
        return DenseOutputs(sem_small, features, engine.head_patches(model, objectness, deltas))


def attach_runtime(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """`model` with TEST.RUNTIME's dense runner (none for "torch"), for inference; returned
    for chaining. Models without a `dense_runner` slot (Detectron2's own) are left as they
    are."""
    runtime = check_runtime(cfg.TEST.RUNTIME)
    if hasattr(model, "dense_runner"):
        model.dense_runner = None if runtime == "torch" else DenseRunner(runtime)
    return model


def build_inference_model(cfg: CfgNode) -> nn.Module:
    """Detectron2's `build_model` in eval mode with TEST.RUNTIME attached: how tools build a
    model they only run."""
    return attach_runtime(build_model(cfg), cfg).eval()
