"""TorchScript and ONNX export of PanopticFPNExt, each with a runner that needs neither
Detectron2 nor us.

ONNX (``export_onnx``): three graphs, ``dense.onnx`` (backbone + FPN, semantic head with its
final upsampling, RPN head; dynamic height and width), ``box_head.onnx`` and ``mask_head.onnx``
(ROIAlign per FPN level as ONNX RoiAlign ops, then the head; dynamic box counts). Proposal
selection, NMS, box decoding, mask pasting and the merge run in numpy in ``numpy_pipeline.py``,
copied next to the graphs with ``runner_io.py`` and ``run_exported.py`` (from
``run_onnx_template.py``): the runner needs onnxruntime, numpy and Pillow only.

TorchScript (``export_torchscript``):

The network (backbone, RPN, ROI heads, semantic head) is traced through
``model.inference(..., do_postprocess=False)``; its data-dependent post-processing (resizing
boxes, pasting the kept masks, the semantic argmax and the panoptic merge) is a scripted
function the trace calls, so its loops stay loops. That function is the model's own
``panoptic_ext.modeling.postprocess.panoptic_from_detections``, scripted: the steps the eager
model runs (each mask pasted alone on its box region, as Detectron2 does on CPU; the same
argsort, thresholds and id order; the whole-tensor merge the model uses on accelerators), so
the panoptic output is the eager model's and there is no second copy of the post-processing.

Loading the result needs only ``torch`` and ``torchvision`` (for its ``nms``/``roi_align``
ops): see ``run_exported_template.py``, copied next to the model as ``run_exported.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import build_model
from torch import Tensor, nn

from ..data.metadata import contiguous_to_dataset_ids
from ..engine.defaults import panoptic_metadata
from ..engine.weights import load_weights, trust_weights_file
from ..modeling.postprocess import (
    MASK_THRESHOLD,
    panoptic_from_detections,
    segments_from_tensors,
)
from ..utils.io import atomic_write, atomic_write_json, naming_path
from ..utils.paths import prepare_output_dir, refuse_replacing_inputs
from .graphs import ONNX_OPSET, DenseGraph, RoiHeadGraph, check_exportable, onnx_bytes
from .numpy_pipeline import keep_signal_stack

__all__ = [
    "EXPORT_FILES",
    "ExportReport",
    "ONNX_FILES",
    "PanopticExportModule",
    "compare_onnx_with_eager",
    "convert_to_openvino",
    "compare_with_eager",
    "export_onnx",
    "export_torchscript",
    "panoptic_from_raw",
    "preprocess_like_predictor",
]

logger = logging.getLogger(__name__)

EXPORT_FILES = {"model": "model.ts", "info": "export_info.json", "runner": "run_exported.py"}
ONNX_FILES = {"dense": "dense.onnx", "box_head": "box_head.onnx", "mask_head": "mask_head.onnx"}
_HERE = os.path.dirname(os.path.abspath(__file__))
_TEMPLATE = os.path.join(_HERE, "run_exported_template.py")
_ONNX_TEMPLATE = os.path.join(_HERE, "run_onnx_template.py")
# torch-free modules the runners import, copied next to them
_RUNNER_MODULES = {"torchscript": ("runner_io.py",),
                   "onnx": ("runner_io.py", "numpy_pipeline.py")}
# the standard-library helpers runner_io imports (output checks, lock, atomic writes), copied
# as the runner's panoptic_utils/ package
_UTILS = os.path.join(os.path.dirname(_HERE), "utils")
_RUNNER_UTILS = ("panoptic_utils", ("__init__.py", "io.py", "locks.py", "paths.py"))


# ---- scripted post-processing ---------------------------------------------------------------


def _panoptic_from_raw(
    image: Tensor,
    out_size: Tensor,
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    mask_probs: Tensor,
    sem_full: Tensor,
    overlap_thresh: float,
    stuff_area_thresh: float,
    score_thresh: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Panoptic result from the raw network outputs of one image (`image`: the network input,
    for its size; `sem_full`: (1, C, H', W') logits), as the eager model gives it: the model's
    own `panoptic_from_detections`. Returns its tensors (panoptic map, then per segment: ids,
    category ids, isthing, scores, instance indices, areas)."""
    return panoptic_from_detections(
        boxes, scores, classes, mask_probs, sem_full[0], (image.shape[-2], image.shape[-1]),
        (int(out_size[0]), int(out_size[1])), overlap_thresh, stuff_area_thresh, score_thresh,
    )


# scripted, not traced, so its data-dependent loops and sizes stay loops and sizes
panoptic_from_raw = torch.jit.script(_panoptic_from_raw)


# ---- the traced wrapper ------------------------------------------------------------------


class PanopticExportModule(nn.Module):
    """What gets traced: (image (3, H, W) already resized, out_size [height, width]) ->
    ``panoptic_from_raw``'s tensors. The merge thresholds are the model's, fixed at export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        combine = model.combine
        try:
            self.thresholds = (
                float(combine.overlap_thresh),
                float(combine.stuff_area_thresh),
                float(combine.score_thresh),
            )
        except AttributeError as e:
            raise TypeError(
                f"export supports the heuristic merge (HeuristicCombine); {type(combine).__name__}"
                " lacks overlap_thresh/stuff_area_thresh/score_thresh"
            ) from e

    def forward(self, image: Tensor, out_size: Tensor) -> tuple[Tensor, ...]:
        image = image.to(torch.float32)
        detections, sem_full = self.model.inference([{"image": image}], do_postprocess=False)
        det = detections[0]
        overlap, area, score = self.thresholds
        return panoptic_from_raw(
            image,
            out_size,
            det.pred_boxes.tensor,
            det.scores,
            det.pred_classes,
            det.pred_masks,
            sem_full,
            overlap,
            area,
            score,
        )


# ---- export ------------------------------------------------------------------------------


def preprocess_like_predictor(cfg: CfgNode, image_bgr: np.ndarray) -> tuple[Tensor, Tensor]:
    """The (3, H, W) float tensor and [height, width] that ``DefaultPredictor`` feeds the model."""
    image = image_bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image_bgr
    h, w = image.shape[:2]
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    resized = aug.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized).astype("float32").transpose(2, 0, 1))
    return tensor, torch.tensor([h, w], dtype=torch.int64)


def _sample_image(cfg: CfgNode, sample_image: str | None) -> str:
    if sample_image:
        if not os.path.isfile(sample_image):
            raise FileNotFoundError(f"--sample-image {sample_image!r} does not exist")
        return sample_image
    if len(cfg.DATASETS.TEST):
        dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])
        if dicts:
            return dicts[0]["file_name"]
    raise ValueError("no sample image to trace with: pass --sample-image IMG")


def _export_info(cfg: CfgNode, module: PanopticExportModule, meta: Any) -> dict[str, Any]:
    """What the runner needs besides the graph: resizing, thresholds, and each contiguous class
    with its dataset id and name (the runner writes dataset ids, as the demo does)."""
    thing_map, stuff_map = contiguous_to_dataset_ids(meta)
    things = [{"contiguous_id": c, "id": d, "name": meta.thing_classes[c]}
              for c, d in sorted(thing_map.items())]
    stuff = [{"contiguous_id": c, "id": d, "name": meta.stuff_classes[c]}
             for c, d in sorted(stuff_map.items())]
    overlap, area, score = module.thresholds
    return {
        "format_version": 1,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "dataset": meta.name,
        "weights": cfg.MODEL.WEIGHTS,
        "combine": {"OVERLAP_THRESH": overlap, "STUFF_AREA_LIMIT": area,
                    "INSTANCES_CONFIDENCE_THRESH": score},
        "things": things,
        "stuff": stuff,
    }


@dataclass
class ExportReport:
    """Where the files went and how the traced model compared with the eager one."""

    output_dir: str
    sample_image: str
    input_size: tuple[int, int]
    num_segments: int
    num_detections: int
    identical: bool
    pixel_agreement: float


def _eager_panoptic(model: nn.Module, image: Tensor, out_size: Tensor):
    h, w = (int(v) for v in out_size)
    with torch.no_grad():
        out = model([{"image": image, "height": h, "width": w}])[0]
    return out["panoptic_seg"]


def compare_with_eager(
    model: nn.Module, traced: torch.jit.ScriptModule, image: Tensor, out_size: Tensor
) -> tuple[bool, float, int]:
    """(identical ids and segments, fraction of equal pixels, segment count) of the traced
    module's panoptic output against the eager model's on one input."""
    pan_e, segs_e = _eager_panoptic(model, image, out_size)
    with torch.no_grad():
        pan_t, ids, cats, isthing, scores, inst, areas = traced(image, out_size)
    agreement = float((pan_e.cpu().to(torch.int32) == pan_t).float().mean())
    segs_t = segments_from_tensors(ids, cats, isthing, scores, inst, areas)
    keys = ("id", "isthing", "category_id", "score", "instance_id", "area")
    segs_e = [{k: s[k] for k in keys if k in s} for s in segs_e]
    same = agreement == 1.0 and segs_e == segs_t
    return same, agreement, len(segs_t)


def _model_for_export(cfg: CfgNode) -> tuple[CfgNode, Any, nn.Module]:
    """(cfg on CPU in fp32, dataset metadata, the eval-mode model with MODEL.WEIGHTS loaded)."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.DEVICE != "cpu" or cfg.TEST.PRECISION.lower() != "fp32":
        logger.info("Exporting on CPU in fp32 (the exported graphs fix device and dtype)")
    cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.PRECISION = "fp32"
    if "RUNTIME" in cfg.TEST:
        cfg.TEST.RUNTIME = "torch"  # export traces the torch modules themselves
    cfg.freeze()
    meta = panoptic_metadata(cfg)  # first: unknown categories fail before the slow trace
    model = build_model(cfg).eval()
    load_weights(model, cfg.MODEL.WEIGHTS, purpose="export", dataset=meta.name,
                 trust_file=trust_weights_file(cfg))
    return cfg, meta, model


def _check_output(output_dir: str, cfg: CfgNode, sample_image: str | None) -> None:
    """Before the slow trace: ``output_dir`` a folder that can be written, and no file of the
    export replacing an input (the weights, the sample image)."""
    prepare_output_dir(output_dir)
    written = [*EXPORT_FILES.values(), *ONNX_FILES.values(), *_RUNNER_MODULES["onnx"]]
    refuse_replacing_inputs([os.path.join(output_dir, name) for name in written],
                            [p for p in (cfg.MODEL.WEIGHTS, sample_image) if p])


def _copy_runner(output_dir: str, fmt: str) -> None:
    """run_exported.py (the format's template) and the modules it imports, into output_dir."""
    runner = os.path.join(output_dir, EXPORT_FILES["runner"])
    shutil.copyfile(_TEMPLATE if fmt == "torchscript" else _ONNX_TEMPLATE, runner)
    os.chmod(runner, 0o755)
    for name in _RUNNER_MODULES[fmt]:
        shutil.copyfile(os.path.join(_HERE, name), os.path.join(output_dir, name))
    package, names = _RUNNER_UTILS
    os.makedirs(os.path.join(output_dir, package), exist_ok=True)
    for name in names:
        shutil.copyfile(os.path.join(_UTILS, name), os.path.join(output_dir, package, name))


class _Sample(NamedTuple):
    """The image an export traces and checks with, as the predictor feeds it."""

    path: str
    image: Tensor
    out_size: Tensor
    num_detections: int

    def report(self, output_dir: str, comparison: tuple[bool, float, int]) -> ExportReport:
        """The ExportReport of an export checked on this sample: (identical, pixel agreement,
        segment count) from `compare_with_eager` / `compare_onnx_with_eager`."""
        same, agreement, num_segments = comparison
        return ExportReport(
            output_dir=output_dir,
            sample_image=self.path,
            input_size=(int(self.image.shape[1]), int(self.image.shape[2])),
            num_segments=num_segments,
            num_detections=self.num_detections,
            identical=same,
            pixel_agreement=agreement,
        )


def _sample_input(cfg: CfgNode, model: nn.Module, sample_image: str | None) -> _Sample:
    """The sample image (default: the first of DATASETS.TEST[0]) preprocessed like
    DefaultPredictor, and how many detections the eager model gives on it."""
    path = _sample_image(cfg, sample_image)
    try:
        image = read_image(path, format="BGR")
    except Exception as e:  # corrupt, truncated, not an image: PIL's many error types
        what = "--sample-image" if sample_image else "the first image of DATASETS.TEST[0]"
        raise ValueError(f"{what} {path} cannot be read as an image ({e}); pass a readable "
                         "image with --sample-image") from e
    image, out_size = preprocess_like_predictor(cfg, image)
    with torch.no_grad():
        num_det = len(model.inference([{"image": image}], do_postprocess=False)[0][0])
    return _Sample(path, image, out_size, num_det)


def export_torchscript(
    cfg: CfgNode, output_dir: str, sample_image: str | None = None
) -> ExportReport:
    """Trace the model of `cfg` (weights MODEL.WEIGHTS) into `output_dir`/model.ts, write
    export_info.json and run_exported.py, and check the traced panoptic output against the
    eager model's on the sample image (default: the first image of DATASETS.TEST[0])."""
    _check_output(output_dir, cfg, sample_image)
    cfg, meta, model = _model_for_export(cfg)
    module = PanopticExportModule(model).eval()

    sample = _sample_input(cfg, model, sample_image)
    if sample.num_detections == 0:
        logger.warning(f"{sample.path} gives no detection: the instance branch is traced on an "
                       "empty set; trace with an image that has detections (--sample-image)")
    with torch.no_grad(), patch_builtin_len(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values in Detectron2
        traced = torch.jit.trace(module, (sample.image, sample.out_size), check_trace=False)

    with naming_path(os.path.join(output_dir, EXPORT_FILES["model"])):
        traced.save(os.path.join(output_dir, EXPORT_FILES["model"]))
    atomic_write_json(os.path.join(output_dir, EXPORT_FILES["info"]),
                      _export_info(cfg, module, meta), indent=2)
    _copy_runner(output_dir, "torchscript")

    loaded = torch.jit.load(os.path.join(output_dir, EXPORT_FILES["model"]))
    return sample.report(output_dir, compare_with_eager(model, loaded, sample.image,
                                                        sample.out_size))


# ---- ONNX --------------------------------------------------------------------------------


def _pooler_spec(pooler: nn.Module) -> dict[str, Any]:
    return {"min_level": int(pooler.min_level), "max_level": int(pooler.max_level),
            "canonical_level": int(pooler.canonical_level),
            "canonical_box_size": int(pooler.canonical_box_size)}


def _onnx_spec(model: nn.Module, has_mask: bool, mask_resolution: int) -> dict[str, Any]:
    """What numpy_pipeline needs besides the graphs, read from the built model (so any config's
    anchors, thresholds and poolers carry over)."""
    pg, rh = model.proposal_generator, model.roi_heads
    ag, bp = pg.anchor_generator, rh.box_predictor
    files = dict(ONNX_FILES)
    if not has_mask:
        files.pop("mask_head")
    return {
        "files": files,
        "opset": ONNX_OPSET,
        "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(),
        "size_divisibility": int(model.backbone.size_divisibility),
        "roi_features": list(rh.box_in_features),
        "dense_features": DenseGraph(model).feature_names,
        "rpn": {
            "strides": [int(s) for s in ag.strides],
            "cell_anchors": [c.tolist() for c in ag.cell_anchors],
            "anchor_offset": float(ag.offset),
            "pre_nms_topk": int(pg.pre_nms_topk[False]),
            "post_nms_topk": int(pg.post_nms_topk[False]),
            "nms_thresh": float(pg.nms_thresh),
            "min_box_size": float(pg.min_box_size),
            "weights": [float(w) for w in pg.box2box_transform.weights],
            "scale_clamp": float(pg.box2box_transform.scale_clamp),
        },
        "box": {
            "pooler": _pooler_spec(rh.box_pooler),
            "weights": [float(w) for w in bp.box2box_transform.weights],
            "scale_clamp": float(bp.box2box_transform.scale_clamp),
            "score_thresh": float(bp.test_score_thresh),
            "nms_thresh": float(bp.test_nms_thresh),
            "topk_per_image": int(bp.test_topk_per_image),
        },
        "mask": ({"pooler": _pooler_spec(rh.mask_pooler), "resolution": mask_resolution}
                 if has_mask else None),
        "mask_threshold": MASK_THRESHOLD,
    }


def _write_onnx_graphs(model: nn.Module, image: Tensor, output_dir: str) -> tuple[bool, int]:
    """Trace the dense graph and the head graphs into output_dir; (has mask head, mask size)."""
    rh = model.roi_heads
    with torch.no_grad(), model._inference_precision():  # norms folded into the convolutions
        x = model.preprocess_image([{"image": image}]).tensor
        dense = DenseGraph(model).eval()
        names = dense.output_names()
        axes = {"image": {2: "height", 3: "width"}}
        axes.update({n: {2: f"{n}_h", 3: f"{n}_w"} for n in names})
        blob = onnx_bytes(dense, (x,), ["image"], names, axes)
        _save(output_dir, ONNX_FILES["dense"], blob)
        outs = dense(x)
        by_name = dict(zip(dense.feature_names, outs[1:1 + len(dense.feature_names)],
                           strict=True))
        feats = [by_name[f] for f in dense.roi_in]
        # two boxes per level trace the heads; the box counts stay dynamic
        rois = [torch.tensor([[4.0, 4.0, 40.0, 36.0], [0.0, 8.0, 20.0, 60.0]])
                for _ in dense.roi_in]
        in_names = [f"feat_{f}" for f in dense.roi_in] + [f"rois_{f}" for f in dense.roi_in]
        in_axes = {f"rois_{f}": {0: f"n_{f}"} for f in dense.roi_in}
        in_axes.update({f"feat_{f}": {2: f"{f}_h", 3: f"{f}_w"} for f in dense.roi_in})
        box = RoiHeadGraph(rh.box_head, rh.box_predictor, rh.box_pooler).eval()
        _save(output_dir, ONNX_FILES["box_head"], onnx_bytes(
            box, (*feats, *rois), in_names, ["class_logits", "box_deltas"],
            {**in_axes, "class_logits": {0: "n"}, "box_deltas": {0: "n"}}))
        has_mask = bool(getattr(rh, "mask_on", False))
        resolution = 0
        if has_mask:
            mask = RoiHeadGraph(rh.mask_head, None, rh.mask_pooler).eval()
            resolution = int(mask(*feats, *rois).shape[-1])
            _save(output_dir, ONNX_FILES["mask_head"], onnx_bytes(
                mask, (*feats, *rois), in_names, ["mask_logits"],
                {**in_axes, "mask_logits": {0: "n"}}))
    return has_mask, resolution


def _save(output_dir: str, name: str, blob: bytes) -> None:
    atomic_write(os.path.join(output_dir, name), blob)  # a failure names the file


def _category_pixels(pan: np.ndarray, ids, cats, isthing) -> np.ndarray:
    """Per pixel (isthing, contiguous category) as one int (-1: void)."""
    lut = np.full(int(max([0, *[int(i) for i in ids]])) + 1, -1, dtype=np.int64)
    for i, c, t in zip(ids, cats, isthing, strict=True):
        lut[int(i)] = int(c) * 2 + int(bool(t))
    return lut[np.asarray(pan, dtype=np.int64)]


def compare_onnx_with_eager(model: nn.Module, runner: Any, image: Tensor,
                            out_size: Tensor) -> tuple[bool, float, int]:
    """(identical map and segments, fraction of pixels with the same category, segment count)
    of the ONNX pipeline's panoptic output against the eager model's on one input."""
    pan_e, segs_e = _eager_panoptic(model, image, out_size)
    pan_e = pan_e.cpu().numpy()
    outs = runner(image.numpy(), (int(out_size[0]), int(out_size[1])))
    pan_o, ids, cats, isthing = outs[0], outs[1], outs[2], outs[3]
    cat_e = _category_pixels(pan_e, [s["id"] for s in segs_e], [s["category_id"] for s in segs_e],
                             [s["isthing"] for s in segs_e])
    cat_o = _category_pixels(pan_o, ids, cats, isthing)
    agreement = float((cat_e == cat_o).mean())
    segs_o = [(int(i), int(c), bool(t)) for i, c, t in zip(ids, cats, isthing, strict=True)]
    same = (np.array_equal(pan_e, pan_o)
            and segs_o == [(s["id"], s["category_id"], s["isthing"]) for s in segs_e])
    return same, agreement, len(segs_o)


def convert_to_openvino(output_dir: str) -> dict[str, Any]:
    """OpenVINO IR (.xml + .bin, float32 weights) of an ONNX export's graphs, next to them;
    export_info.json then names OpenVINO as the runner's default engine. Returns the info."""
    import openvino as ov

    info_path = os.path.join(output_dir, EXPORT_FILES["info"])
    with open(info_path) as f:
        info = json.load(f)
    ir = {}
    with keep_signal_stack():
        core = ov.Core()
        for name, file in info["onnx"]["files"].items():
            xml = os.path.splitext(file)[0] + ".xml"
            ov.save_model(core.read_model(os.path.join(output_dir, file)),
                          os.path.join(output_dir, xml), compress_to_fp16=False)
            ir[name] = xml
    info["onnx"]["openvino_files"] = ir
    info["onnx"]["engine"] = "openvino"
    atomic_write_json(info_path, info, indent=2)
    return info


def export_onnx(cfg: CfgNode, output_dir: str, sample_image: str | None = None,
                openvino: bool = False) -> ExportReport:
    """Export the model of `cfg` (weights MODEL.WEIGHTS) as ONNX graphs into `output_dir`, with
    export_info.json, run_exported.py and the numpy pipeline it imports, then check the ONNX
    pipeline's panoptic output against the eager model's on the sample image (default: the
    first image of DATASETS.TEST[0]). `openvino`: also write OpenVINO IR and check that (the
    runner then needs openvino instead of onnxruntime)."""
    import importlib

    importlib.import_module("openvino" if openvino else "onnxruntime")  # the check runs it

    from . import numpy_pipeline

    _check_output(output_dir, cfg, sample_image)
    cfg, meta, model = _model_for_export(cfg)
    check_exportable(model)
    thresholds = PanopticExportModule(model)  # validates the merge; holds its thresholds
    sample = _sample_input(cfg, model, sample_image)

    logger.info(f"Exporting ONNX graphs (opset {ONNX_OPSET}) to {output_dir}")
    has_mask, resolution = _write_onnx_graphs(model, sample.image, output_dir)
    info = _export_info(cfg, thresholds, meta)
    info["format_version"] = 2
    info["onnx"] = _onnx_spec(model, has_mask, resolution)
    atomic_write_json(os.path.join(output_dir, EXPORT_FILES["info"]), info, indent=2)
    _copy_runner(output_dir, "onnx")
    if openvino:
        info = convert_to_openvino(output_dir)

    runner = numpy_pipeline.OnnxPanoptic(output_dir, info)
    return sample.report(output_dir, compare_onnx_with_eager(model, runner, sample.image,
                                                             sample.out_size))
