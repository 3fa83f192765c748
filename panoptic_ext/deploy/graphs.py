"""The model's parts as ONNX graphs, for `export.py` (files) and `runtime.py` (in memory).
Everything data-dependent (anchors, top-k, NMS, box decoding, pasting, the merge) stays outside
the graphs; norms are folded into the convolutions while tracing (FUSE_NORM).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.inference_opts import shadowed

__all__ = [
    "ONNX_OPSET",
    "DenseGraph",
    "RoiHeadGraph",
    "check_exportable",
    "folded_norms",
    "onnx_bytes",
    "pooled_sample",
]

ONNX_OPSET = 17  # RoiAlign with aligned=True (coordinate_transformation_mode half_pixel): 16+


def check_exportable(model: nn.Module) -> None:
    """Raise a clear error for model parts the graphs and the numpy pipeline do not cover."""
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.modeling.roi_heads import StandardROIHeads

    pg, rh = model.proposal_generator, model.roi_heads
    problems = []
    if not hasattr(model.sem_seg_head, "layers"):
        problems.append(f"semantic head {type(model.sem_seg_head).__name__} has no layers()")
    if type(getattr(pg, "anchor_generator", None)) is not DefaultAnchorGenerator:
        problems.append("the RPN needs Detectron2's DefaultAnchorGenerator")
    if not isinstance(rh, StandardROIHeads) or not isinstance(rh.box_pooler, ROIPooler):
        problems.append("the ROI heads need to be StandardROIHeads with ROIAlign poolers")
    elif getattr(rh, "mask_on", False) and list(rh.mask_in_features) != list(rh.box_in_features):
        problems.append("mask and box heads must read the same FPN levels")
    square = getattr(model.backbone, "padding_constraints", {}).get("square_size", 0)
    if square:
        problems.append("square padding (padding_constraints square_size) is not supported")
    for pooler in [rh.box_pooler, getattr(rh, "mask_pooler", None)]:
        for p in getattr(pooler, "level_poolers", []):
            problem = f"pooler {type(p).__name__} is not ROIAlign/ROIAlignV2"
            if not hasattr(p, "aligned") and problem not in problems:
                problems.append(problem)
    if problems:
        raise TypeError("ONNX export/runtime does not support this model: " + "; ".join(problems))


class DenseGraph(nn.Module):
    """image (N, 3, H, W), normalized and padded -> (semantic logits, the FPN features the RPN
    and ROI heads read (`feature_names`), RPN objectness per level, RPN deltas per level).
    `full_semantic`: the logits at the input size (the head's final upsampling included),
    else at 1/common_stride."""

    def __init__(self, model: nn.Module, full_semantic: bool = True):
        super().__init__()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head
        self.rpn_head = model.proposal_generator.rpn_head
        self.rpn_in = list(model.proposal_generator.in_features)
        self.roi_in = list(model.roi_heads.box_in_features)
        self.feature_names = self.rpn_in + [f for f in self.roi_in if f not in self.rpn_in]
        self.full_semantic = full_semantic

    def output_names(self) -> list[str]:
        return (["sem_seg", *self.feature_names] + [f"objectness_{f}" for f in self.rpn_in]
                + [f"deltas_{f}" for f in self.rpn_in])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(image)
        sem = self.sem_seg_head.layers(features)
        if self.full_semantic:
            sem = F.interpolate(sem, scale_factor=self.sem_seg_head.common_stride,
                                mode="bilinear", align_corners=False)
        objectness, deltas = self.rpn_head([features[f] for f in self.rpn_in])
        return (sem, *[features[f] for f in self.feature_names], *objectness, *deltas)


class RoiHeadGraph(nn.Module):
    """A box head (+ predictor: (class logits, box deltas)) or a mask head (mask logits).

    With `pooler`: inputs are the FPN features then one (Ni, 4) box tensor per level (boxes
    already assigned to levels); output rows come level by level. Without: the input is the
    pooled (N, C, R, R) features."""

    def __init__(self, head: nn.Module, predictor: nn.Module | None = None,
                 pooler: nn.Module | None = None):
        super().__init__()
        self.head = head
        self.predictor = predictor
        self.level_poolers = None if pooler is None else pooler.level_poolers

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        if self.level_poolers is None:
            x = inputs[0]
        else:
            n = len(self.level_poolers)
            pooled = []
            for pool, feat, rois in zip(self.level_poolers, inputs[:n], inputs[n:], strict=True):
                rois5 = torch.cat([torch.zeros_like(rois[:, :1]), rois], dim=1)
                pooled.append(pool(feat, rois5))
            x = torch.cat(pooled, dim=0)
        if self.predictor is None:
            return self.head.layers(x)
        return self.predictor(self.head(x))


def onnx_bytes(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> bytes:
    """`module` traced into an ONNX model (opset ONNX_OPSET), as bytes."""
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # TracerWarnings, the legacy exporter's deprecation
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    return buf.getvalue()


def pooled_sample(pooler: nn.Module, channels: int) -> torch.Tensor:
    """A (2, C, R, R) stand-in for pooled features, to trace a head with."""
    return torch.zeros((2, channels, *pooler.output_size))


def folded_norms(model: nn.Module) -> contextlib.AbstractContextManager:
    """While inside: the model's foldable norms folded into their convolutions (fp32), if
    MODEL.PANOPTIC_EXT.FUSE_NORM; the graphs then hold plain convolutions."""
    fold = getattr(model, "folded_norm_patches", None)
    return contextlib.nullcontext() if fold is None else shadowed(fold("fp32"))
