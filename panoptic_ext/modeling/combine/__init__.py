"""Panoptic merge: instance masks and a semantic label map -> one panoptic id map.

`COMBINE_REGISTRY` lets a config pick a strategy via MODEL.PANOPTIC_EXT.COMBINE_NAME; the
default, `HeuristicCombine`, is the paper's heuristic. It has two implementations, chosen here:
`cpu.py` (one mask crop at a time, in numpy: the CPU's) and `batched.py` (whole-tensor passes:
accelerators' and the export's). `segments.py` builds every `segments_info` record.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

from .batched import combine_sorted_masks
from .cpu import combine_panoptic_crops, combine_sorted_crops, crops_numpy, sorted_kept
from .segments import SegmentsInfo

__all__ = [
    "COMBINE_REGISTRY",
    "HeuristicCombine",
    "build_combine",
    "combine_panoptic",
    "combine_panoptic_crops",
]

COMBINE_REGISTRY = Registry("PANOPTIC_COMBINE")
COMBINE_REGISTRY.__doc__ = """
Panoptic merge strategies. A registered class is built as `cls(cfg)` (use @configurable) and
called as `strategy(instances, sem_labels) -> (panoptic_seg int32 HxW, segments_info)`. One whose
`reads_mask_crops` is True may get, on CPU, instances whose masks are pasted only where it reads
them, as crops (field `pred_mask_crops`, see `postprocess.paste_for_combine`), which spares
pasting them at full size.
"""


def _check_fraction(key: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{key} must be in [0, 1], got {value}")
    return float(value)


@COMBINE_REGISTRY.register()
class HeuristicCombine:
    """The paper's merge heuristic, with thresholds from MODEL.PANOPTIC_FPN.COMBINE."""

    reads_mask_crops = True  # instances scoring below score_thresh need no mask

    @configurable
    def __init__(
        self,
        *,
        overlap_thresh: float = 0.5,
        stuff_area_thresh: float = 4096,
        score_thresh: float = 0.5,
    ):
        self.overlap_thresh = _check_fraction("MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH",
                                              overlap_thresh)
        self.score_thresh = _check_fraction(
            "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", score_thresh
        )
        if stuff_area_thresh < 0:
            raise ValueError(
                f"MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT must be >= 0, got {stuff_area_thresh}"
            )
        self.stuff_area_thresh = stuff_area_thresh

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = cfg.MODEL.PANOPTIC_FPN.COMBINE
        return {
            "overlap_thresh": c.OVERLAP_THRESH,
            "stuff_area_thresh": c.STUFF_AREA_LIMIT,
            "score_thresh": c.INSTANCES_CONFIDENCE_THRESH,
        }

    def with_thresholds(
        self,
        *,
        overlap_thresh: float | None = None,
        stuff_area_thresh: float | None = None,
        score_thresh: float | None = None,
    ) -> HeuristicCombine:
        """A copy (same class) with the given thresholds changed and checked: how merge tuning
        tries settings with the model's own strategy object."""
        new = copy.copy(self)
        HeuristicCombine.__init__(
            new,
            overlap_thresh=self.overlap_thresh if overlap_thresh is None else overlap_thresh,
            stuff_area_thresh=(self.stuff_area_thresh if stuff_area_thresh is None
                               else stuff_area_thresh),
            score_thresh=self.score_thresh if score_thresh is None else score_thresh,
        )
        return new

    def __call__(
        self, instances: Instances, sem_labels: torch.Tensor
    ) -> tuple[torch.Tensor, SegmentsInfo]:
        """Full-size `pred_masks`, or `pred_mask_crops` (y0, x0, bool crop; None where not
        read) for every instance scoring at least `score_thresh`."""
        if instances.has("pred_mask_crops"):
            return combine_panoptic_crops(instances.scores, instances.pred_classes,
                                          instances.pred_mask_crops, sem_labels,
                                          **self._thresholds())
        if instances.has("pred_masks"):
            masks = instances.pred_masks
        else:
            masks = torch.zeros((len(instances), *sem_labels.shape), dtype=torch.bool)
        boxes = instances.pred_boxes.tensor if instances.has("pred_boxes") else None
        return combine_panoptic(
            instances.scores, instances.pred_classes, masks, sem_labels, boxes=boxes,
            **self._thresholds()
        )

    def _thresholds(self) -> dict:
        return {
            "overlap_thresh": self.overlap_thresh,
            "stuff_area_thresh": self.stuff_area_thresh,
            "score_thresh": self.score_thresh,
        }


def combine_panoptic(
    scores: torch.Tensor,
    classes: torch.Tensor,
    masks: torch.Tensor,
    sem_labels: torch.Tensor,
    *,
    overlap_thresh: float = 0.5,
    stuff_area_thresh: float = 4096,
    score_thresh: float = 0.5,
    boxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SegmentsInfo]:
    """The Panoptic FPN heuristic merge, on the device of `sem_labels`.

    Instances are taken by decreasing score and stop below `score_thresh`; an instance whose
    already-taken fraction exceeds `overlap_thresh` is dropped, otherwise it gets its free pixels.
    Each stuff label (> 0; 0 is the semantic head's "things" class) then gets the free pixels it
    predicts, unless they are fewer than `stuff_area_thresh`. Output matches Detectron2's
    `combine_semantic_and_instance_outputs` exactly (segment ids from 1, same segments_info).
    On CPU each instance step works on the mask's bounding box (`cpu.py`); elsewhere the
    steps are whole-tensor passes. Stuff is assigned in one pass either way.

    Args:
        scores: (N,) instance scores. classes: (N,) contiguous thing ids.
        masks: (N, H, W) masks (bool, or anything where nonzero means inside, as Detectron2).
        sem_labels: (H, W) integer semantic labels (stuff contiguous ids, 0 = things).
        boxes: optional (N, 4) XYXY boxes the masks were pasted in; only a speed hint on CPU
            (a mask reaching outside its box is still handled exactly).
    """
    order, kept_scores, kept_classes = sorted_kept(scores, classes, score_thresh)
    if order:
        masks = masks.to(device=sem_labels.device)
        if masks.dtype != torch.bool:
            masks = masks != 0
    if sem_labels.device.type != "cpu":
        return combine_sorted_masks(order, kept_scores, kept_classes, masks, sem_labels,
                                    overlap_thresh, stuff_area_thresh)
    hint = None if boxes is None else boxes.detach().float().cpu().numpy()
    crops = crops_numpy(masks.contiguous().numpy(), order, hint) if order else ()
    return combine_sorted_crops(order, kept_scores, kept_classes, crops, sem_labels,
                                overlap_thresh, stuff_area_thresh)


def build_combine(cfg) -> Callable[..., tuple[torch.Tensor, SegmentsInfo]]:
    """The merge strategy named by MODEL.PANOPTIC_EXT.COMBINE_NAME."""
    name = cfg.MODEL.PANOPTIC_EXT.COMBINE_NAME
    try:
        cls = COMBINE_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(
            f"MODEL.PANOPTIC_EXT.COMBINE_NAME={name!r} is not registered; available: "
            f"{sorted(k for k, _ in COMBINE_REGISTRY)}"
        ) from e
    return cls(cfg)
