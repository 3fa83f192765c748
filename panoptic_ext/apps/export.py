"""TorchScript export of PanopticFPNExt, with a runner that needs neither Detectron2 nor us.

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

import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any

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
from ..engine.weights import load_weights
from ..modeling.postprocess import panoptic_from_detections, segments_from_tensors
from ..utils.io import atomic_write_json

__all__ = [
    "EXPORT_FILES",
    "ExportReport",
    "PanopticExportModule",
    "compare_with_eager",
    "export_torchscript",
    "panoptic_from_raw",
    "preprocess_like_predictor",
]

logger = logging.getLogger(__name__)

EXPORT_FILES = {"model": "model.ts", "info": "export_info.json", "runner": "run_exported.py"}
_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_exported_template.py")


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


def export_torchscript(
    cfg: CfgNode, output_dir: str, sample_image: str | None = None
) -> ExportReport:
    """Trace the model of `cfg` (weights MODEL.WEIGHTS) into `output_dir`/model.ts, write
    export_info.json and run_exported.py, and check the traced panoptic output against the
    eager model's on the sample image (default: the first image of DATASETS.TEST[0])."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.DEVICE != "cpu" or cfg.TEST.PRECISION.lower() != "fp32":
        logger.info("Exporting on CPU in fp32 (the traced graph fixes device and dtype)")
    cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.PRECISION = "fp32"
    cfg.freeze()
    meta = panoptic_metadata(cfg)  # first: unknown categories fail before the slow trace
    model = build_model(cfg).eval()
    load_weights(model, cfg.MODEL.WEIGHTS, purpose="export", dataset=meta.name)
    module = PanopticExportModule(model).eval()

    path = _sample_image(cfg, sample_image)
    image, out_size = preprocess_like_predictor(cfg, read_image(path, format="BGR"))
    with torch.no_grad():
        num_det = len(model.inference([{"image": image}], do_postprocess=False)[0][0])
    if num_det == 0:
        logger.warning(f"{path} gives no detection: the instance branch is traced on an empty "
                       "set; trace with an image that has detections (--sample-image)")
    with torch.no_grad(), patch_builtin_len(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values in Detectron2
        traced = torch.jit.trace(module, (image, out_size), check_trace=False)

    os.makedirs(output_dir, exist_ok=True)
    traced.save(os.path.join(output_dir, EXPORT_FILES["model"]))
    atomic_write_json(os.path.join(output_dir, EXPORT_FILES["info"]),
                      _export_info(cfg, module, meta), indent=2)
    runner = os.path.join(output_dir, EXPORT_FILES["runner"])
    shutil.copyfile(_TEMPLATE, runner)
    os.chmod(runner, 0o755)

    loaded = torch.jit.load(os.path.join(output_dir, EXPORT_FILES["model"]))
    same, agreement, num_segments = compare_with_eager(model, loaded, image, out_size)
    return ExportReport(
        output_dir=output_dir,
        sample_image=path,
        input_size=(int(image.shape[1]), int(image.shape[2])),
        num_segments=num_segments,
        num_detections=num_det,
        identical=same,
        pixel_agreement=agreement,
    )
