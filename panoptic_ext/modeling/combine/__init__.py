"""Panoptic merge: instance masks and a semantic label map -> one panoptic id map.

`COMBINE_REGISTRY` lets a config pick a strategy via MODEL.PANOPTIC_EXT.COMBINE_NAME; the
default, `HeuristicCombine`, is the paper's heuristic. Its implementations: `cpu.py` (the crop
merge inference uses on CPU, in numpy) and `batched.py` (whole-tensor passes for accelerators
and the export, and `combine_panoptic` on full-size masks, which picks one by device).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

from .batched import combine_panoptic
from .cpu import Crop, SegmentsInfo, combine_panoptic_crops

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
called as `strategy(instances, sem_labels) -> (panoptic_seg int32 HxW, segments_info)`. One that
also has `combine_crops(instances, crops, sem_labels)` gets masks as crops on CPU (see
`HeuristicCombine.combine_crops`), which spares pasting them at full size.
"""


def _check_fraction(key: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{key} must be in [0, 1], got {value}")
    return float(value)


@COMBINE_REGISTRY.register()
class HeuristicCombine:
    """The paper's merge heuristic, with thresholds from MODEL.PANOPTIC_FPN.COMBINE."""

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
        if instances.has("pred_masks"):
            masks = instances.pred_masks
        else:
            masks = torch.zeros((len(instances), *sem_labels.shape), dtype=torch.bool)
        boxes = instances.pred_boxes.tensor if instances.has("pred_boxes") else None
        return combine_panoptic(
            instances.scores, instances.pred_classes, masks, sem_labels, boxes=boxes,
            **self._thresholds()
        )

    def combine_crops(
        self, instances: Instances, crops: Sequence[Crop | None], sem_labels: torch.Tensor
    ) -> tuple[torch.Tensor, SegmentsInfo]:
        """As calling it, with masks given as crops and needed only for instances scoring at
        least `score_thresh` (see `combine_panoptic_crops`)."""
        return combine_panoptic_crops(
            instances.scores, instances.pred_classes, crops, sem_labels, **self._thresholds()
        )

    def _thresholds(self) -> dict:
        return {
            "overlap_thresh": self.overlap_thresh,
            "stuff_area_thresh": self.stuff_area_thresh,
            "score_thresh": self.score_thresh,
        }


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
