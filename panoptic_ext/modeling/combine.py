"""Panoptic merge: instance masks and a semantic label map -> one panoptic id map.

`combine_panoptic` is a pure tensor function (testable alone); `COMBINE_REGISTRY` lets a config
pick another strategy via MODEL.PANOPTIC_EXT.COMBINE_NAME.
"""

from typing import Any

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

__all__ = ["COMBINE_REGISTRY", "HeuristicCombine", "build_combine", "combine_panoptic"]

COMBINE_REGISTRY = Registry("PANOPTIC_COMBINE")
COMBINE_REGISTRY.__doc__ = """
Panoptic merge strategies. A registered class is built as `cls(cfg)` (use @configurable) and
called as `strategy(instances, sem_labels) -> (panoptic_seg int32 HxW, segments_info)`.
"""

SegmentsInfo = list[dict[str, Any]]


def _mask_boxes(masks: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Tight (y0, y1, x0, x1) boxes of boolean masks, so each merge step touches only a crop."""
    if masks.shape[0] == 0:
        return []
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    h, w = masks.shape[1:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h + 1, 0).amax(dim=1)
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w + 1, 0).amax(dim=1)
    return list(zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(), strict=False))


def combine_panoptic(
    scores: torch.Tensor,
    classes: torch.Tensor,
    masks: torch.Tensor,
    sem_labels: torch.Tensor,
    *,
    overlap_thresh: float = 0.5,
    stuff_area_thresh: float = 4096,
    score_thresh: float = 0.5,
) -> tuple[torch.Tensor, SegmentsInfo]:
    """The Panoptic FPN heuristic merge.

    Instances are taken by decreasing score and stop below `score_thresh`; an instance whose
    already-taken fraction exceeds `overlap_thresh` is dropped, otherwise it gets its free pixels.
    Each stuff label (> 0; 0 is the semantic head's "things" class) then gets the free pixels it
    predicts, unless they are fewer than `stuff_area_thresh`. Output matches Detectron2's
    `combine_semantic_and_instance_outputs` exactly (segment ids from 1, same segments_info),
    but each instance step works on the mask's bounding box and stuff is assigned in one pass.

    Args:
        scores: (N,) instance scores. classes: (N,) contiguous thing ids.
        masks: (N, H, W) masks (bool, or anything where > 0 means inside).
        sem_labels: (H, W) integer semantic labels (stuff contiguous ids, 0 = things).
    """
    panoptic = torch.zeros_like(sem_labels, dtype=torch.int32)
    segments: SegmentsInfo = []
    next_id = 1

    order = torch.argsort(-scores)
    keep = scores[order] >= score_thresh
    order = order[keep]
    if order.numel() > 0:
        sel_masks = masks[order].to(device=panoptic.device, dtype=torch.bool)
        boxes = _mask_boxes(sel_masks)
        sel_scores = scores[order].tolist()
        sel_classes = classes[order].tolist()
        for k, inst in enumerate(order.tolist()):
            y0, y1, x0, x1 = boxes[k]
            if y1 <= y0:  # empty mask
                continue
            m = sel_masks[k, y0:y1, x0:x1]
            area = int(m.sum())
            crop = panoptic[y0:y1, x0:x1]
            m_free = m & (crop == 0)
            free = int(m_free.sum())
            if (area - free) * 1.0 / area > overlap_thresh:
                continue
            crop[m_free] = next_id
            segments.append(
                {
                    "id": next_id,
                    "isthing": True,
                    "score": sel_scores[k],
                    "category_id": int(sel_classes[k]),
                    "instance_id": inst,
                }
            )
            next_id += 1

    free_mask = panoptic == 0
    labels = sem_labels.to(panoptic.device).long()
    present = torch.unique(labels)
    present = present[present != 0]
    if present.numel() > 0:
        size = int(present.max()) + 1
        areas = torch.bincount(labels[free_mask], minlength=size)
        lut = torch.zeros(size, dtype=torch.int32, device=panoptic.device)
        for label in present.tolist():
            area = int(areas[label])
            if area < stuff_area_thresh:
                continue
            lut[label] = next_id
            segments.append({"id": next_id, "isthing": False, "category_id": label, "area": area})
            next_id += 1
        panoptic[free_mask] = lut[labels[free_mask]]
    return panoptic, segments


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

    def __call__(
        self, instances: Instances, sem_labels: torch.Tensor
    ) -> tuple[torch.Tensor, SegmentsInfo]:
        if instances.has("pred_masks"):
            masks = instances.pred_masks
        else:
            masks = torch.zeros((len(instances), *sem_labels.shape), dtype=torch.bool)
        return combine_panoptic(
            instances.scores,
            instances.pred_classes,
            masks,
            sem_labels,
            overlap_thresh=self.overlap_thresh,
            stuff_area_thresh=self.stuff_area_thresh,
            score_thresh=self.score_thresh,
        )


def build_combine(cfg):
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
