"""Panoptic merge: instance masks and a semantic label map -> one panoptic id map.

`combine_panoptic` is a pure tensor function (testable alone); `COMBINE_REGISTRY` lets a config
pick another strategy via MODEL.PANOPTIC_EXT.COMBINE_NAME.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

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
called as `strategy(instances, sem_labels) -> (panoptic_seg int32 HxW, segments_info)`.
"""

SegmentsInfo = list[dict[str, Any]]


Crop = tuple[int, int, Any]  # (y0, x0, boolean mask crop); None for an empty mask


def _crops_numpy(
    masks: np.ndarray, order: list[int], boxes: np.ndarray | None = None
) -> Iterator[Crop | None]:
    """Each listed mask cut to a box holding all of it, computed when the merge reaches it.

    `boxes` (N, 4) x0, y0, x1, y1: where masks were pasted from boxes, a crop of the box (plus
    a pixel of margin) is used once a count shows it holds every pixel of the mask; this reads
    the full mask once instead of twice. Otherwise the tight box is computed.
    """
    h, w = masks.shape[1:]
    usable = np.zeros(len(masks), dtype=bool) if boxes is None else np.isfinite(boxes).all(axis=1)
    for inst in order:
        full = masks[inst]
        if usable[inst]:
            x0, y0, x1, y1 = boxes[inst]
            x0, y0 = max(int(x0) - 1, 0), max(int(y0) - 1, 0)
            x1, y1 = min(int(x1) + 2, w), min(int(y1) + 2, h)
            total = np.count_nonzero(full)
            if total == 0:
                yield None
                continue
            if x1 > x0 and y1 > y0 and np.count_nonzero(full[y0:y1, x0:x1]) == total:
                yield y0, x0, full[y0:y1, x0:x1]
                continue
        cols = np.flatnonzero(full.any(axis=0))
        if cols.size == 0:
            yield None
            continue
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        rows = np.flatnonzero(full[:, x0:x1].any(axis=1))
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        yield y0, x0, full[y0:y1, x0:x1]


def _paste_things_batched(
    order: list[int],
    scores: list[float],
    classes: list[int],
    masks: torch.Tensor,
    panoptic: torch.Tensor,
    overlap_thresh: float,
    segments: SegmentsInfo,
) -> int:
    """`_paste_things` as a few whole-tensor passes, for masks on an accelerator (a loop of small
    per-instance ops there is bound by launching them).

    Whether instance i is kept depends only on which earlier ones are: it is dropped when more
    than `overlap_thresh` of it lies under earlier kept instances. Iterating "decide all from
    the previous guess" therefore fixes at least one more instance per pass, and stops at the
    sequential answer (usually after a few passes). Each pixel then belongs to the first kept
    instance covering it, exactly the pixels the sequential merge gives that instance.
    """
    if not order:
        return 1
    sel = masks[order]  # (K, H, W) bool, by decreasing score
    k = sel.shape[0]
    rank = torch.arange(k, device=sel.device)
    areas = sel.flatten(1).sum(dim=1).double()
    nonempty = areas > 0
    kept = nonempty
    for _ in range(k + 1):  # pass t settles instance t - 1 at the latest; one more confirms
        covered = sel & kept[:, None, None]
        # first kept instance at each pixel (argmax returns the first maximum), k if none
        owner = torch.where(covered.any(dim=0), covered.to(torch.uint8).argmax(dim=0), k)
        overlap = (sel & (owner[None] < rank[:, None, None])).flatten(1).sum(dim=1)
        # as Detectron2's float64 `intersect * 1.0 / area > thresh` test, negated
        new = nonempty & ~(overlap.double() / areas > overlap_thresh)
        if torch.equal(new, kept):
            break
        kept = new
    seg_ids = torch.cumsum(kept, 0).to(panoptic.dtype)
    lut = torch.cat([seg_ids * kept, seg_ids.new_zeros(1)])  # owner k: no instance
    panoptic.copy_(lut[owner])
    next_id = 1
    for j, keep in enumerate(kept.tolist()):
        if keep:
            segments.append({"id": next_id, "isthing": True, "score": scores[j],
                             "category_id": classes[j], "instance_id": order[j]})
            next_id += 1
    return next_id


def _paste_things(
    order: list[int],
    scores: list[float],
    classes: list[int],
    crops: Iterable[Crop | None],
    panoptic: torch.Tensor,
    overlap_thresh: float,
    segments: SegmentsInfo,
) -> int:
    """Give instances (sorted, thresholded; `crops` aligned with `order`) their free pixels, or
    drop them when too much is taken already. Returns the next free segment id.

    On CPU each step runs in numpy: the ops are small crops, where torch's per-op threading
    overhead dominates (milliseconds per op on a busy machine; numpy: microseconds). On an
    accelerator, one host read per instance decides.
    """
    cpu = panoptic.device.type == "cpu"
    pan = panoptic.numpy() if cpu else panoptic
    next_id = 1
    for k, (inst, crop) in enumerate(zip(order, crops, strict=True)):
        if crop is None:
            continue
        y0, x0, m = crop
        region = pan[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
        hit = m & (region != 0)
        if cpu:
            area, overlap = int(np.count_nonzero(m)), int(np.count_nonzero(hit))
        else:
            area, overlap = torch.stack([m.sum(), hit.sum()]).tolist()
        if area == 0 or overlap * 1.0 / area > overlap_thresh:
            continue
        free = m ^ hit if overlap else m
        if cpu:
            np.putmask(region, free, next_id)
        else:
            region.masked_fill_(free, next_id)
        segments.append(
            {
                "id": next_id,
                "isthing": True,
                "score": scores[k],
                "category_id": classes[k],
                "instance_id": inst,
            }
        )
        next_id += 1
    return next_id


def _assign_stuff(
    panoptic: torch.Tensor,
    labels: torch.Tensor,
    next_id: int,
    stuff_area_thresh: float,
    segments: SegmentsInfo,
) -> None:
    """Give each stuff label (> 0) its free pixels, in increasing label order, unless fewer than
    `stuff_area_thresh`. The free area of every label comes from one bincount over
    (label, is-free) keys, instead of a sort (`unique`) and a full-image mask per label."""
    if labels.numel() == 0:
        return
    cpu = panoptic.device.type == "cpu"
    lab = labels.numpy() if cpu else labels
    if int(lab.min()) < 0:  # not an argmax map: take the per-label route
        _assign_stuff_slow(panoptic, labels, next_id, stuff_area_thresh, segments)
        return
    free = panoptic.numpy() == 0 if cpu else panoptic == 0
    size = int(lab.max()) + 1
    if cpu:
        if size <= 128:  # (label, is-free) keys fit a byte: a smaller array to build and count
            lab = lab.astype(np.uint8)
            key = np.left_shift(lab, 1)
            np.bitwise_or(key, free, out=key)
        else:
            key = lab * 2
            key += free
        counts = np.bincount(key.ravel(), minlength=2 * size).reshape(size, 2)
        present = np.flatnonzero(counts.sum(axis=1)).tolist()
        free_area = counts[:, 1].tolist()
    else:
        counts = torch.bincount((labels * 2 + free).flatten(), minlength=2 * size).view(size, 2)
        present = (counts.sum(dim=1) > 0).nonzero().flatten().tolist()
        free_area = counts[:, 1].tolist()
    lut = np.zeros(size, dtype=np.int32)
    changed = False
    for label in present:
        area = free_area[label]
        if label == 0 or area < stuff_area_thresh:
            continue
        lut[label] = next_id
        segments.append({"id": next_id, "isthing": False, "category_id": label, "area": area})
        next_id += 1
        changed = True
    if not changed:
        return
    if cpu:
        np.copyto(panoptic.numpy(), lut[lab], where=free)
    else:
        lut_t = torch.from_numpy(lut).to(panoptic.device)
        torch.where(free, lut_t[labels], panoptic, out=panoptic)


def _assign_stuff_slow(
    panoptic: torch.Tensor,
    labels: torch.Tensor,
    next_id: int,
    stuff_area_thresh: float,
    segments: SegmentsInfo,
) -> None:
    free = panoptic == 0
    for label in torch.unique(labels).tolist():
        if label == 0:
            continue
        mask = (labels == label) & free
        area = int(mask.sum())
        if area < stuff_area_thresh:
            continue
        panoptic[mask] = next_id
        segments.append({"id": next_id, "isthing": False, "category_id": label, "area": area})
        next_id += 1


def _sorted_kept(scores: torch.Tensor, classes: torch.Tensor, score_thresh: float):
    """Instance order of Detectron2's merge (same argsort call, so ties break alike), cut at
    the score threshold; with the kept scores and classes as Python numbers."""
    order_t = torch.argsort(-scores)
    order_t = order_t[scores[order_t] >= score_thresh]
    return order_t.tolist(), scores[order_t].tolist(), [int(c) for c in classes[order_t].tolist()]


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
    """The Panoptic FPN heuristic merge.

    Instances are taken by decreasing score and stop below `score_thresh`; an instance whose
    already-taken fraction exceeds `overlap_thresh` is dropped, otherwise it gets its free pixels.
    Each stuff label (> 0; 0 is the semantic head's "things" class) then gets the free pixels it
    predicts, unless they are fewer than `stuff_area_thresh`. Output matches Detectron2's
    `combine_semantic_and_instance_outputs` exactly (segment ids from 1, same segments_info),
    but each instance step works on the mask's bounding box and stuff is assigned in one pass.

    Args:
        scores: (N,) instance scores. classes: (N,) contiguous thing ids.
        masks: (N, H, W) masks (bool, or anything where nonzero means inside, as Detectron2).
        sem_labels: (H, W) integer semantic labels (stuff contiguous ids, 0 = things).
        boxes: optional (N, 4) XYXY boxes the masks were pasted in; only a speed hint (a mask
            reaching outside its box is still handled exactly).
    """
    panoptic = torch.zeros_like(sem_labels, dtype=torch.int32)
    segments: SegmentsInfo = []
    order, kept_scores, kept_classes = _sorted_kept(scores, classes, score_thresh)
    if order:
        masks = masks.to(device=panoptic.device)
        if masks.dtype != torch.bool:
            masks = masks != 0
    if panoptic.device.type == "cpu":
        hint = None if boxes is None else boxes.detach().float().cpu().numpy()
        crops = _crops_numpy(masks.contiguous().numpy(), order, hint) if order else ()
        next_id = _paste_things(
            order, kept_scores, kept_classes, crops, panoptic, overlap_thresh, segments
        )
    else:
        next_id = _paste_things_batched(
            order, kept_scores, kept_classes, masks, panoptic, overlap_thresh, segments
        )
    _assign_stuff(panoptic, sem_labels.to(panoptic.device).long(), next_id, stuff_area_thresh,
                  segments)
    return panoptic, segments


def combine_panoptic_crops(
    scores: torch.Tensor,
    classes: torch.Tensor,
    crops: Sequence[Crop | None],
    sem_labels: torch.Tensor,
    *,
    overlap_thresh: float = 0.5,
    stuff_area_thresh: float = 4096,
    score_thresh: float = 0.5,
) -> tuple[torch.Tensor, SegmentsInfo]:
    """`combine_panoptic` for masks given as crops: crops[i] = (y0, x0, bool mask of any box
    that holds instance i's mask), or None when empty. Only instances scoring at least
    `score_thresh` are read, so the others need no mask at all (inference pastes only those).
    """
    panoptic = torch.zeros_like(sem_labels, dtype=torch.int32)
    segments: SegmentsInfo = []
    order, kept_scores, kept_classes = _sorted_kept(scores, classes, score_thresh)
    cpu = panoptic.device.type == "cpu"
    kept = []
    for i in order:
        crop = crops[i]
        if crop is not None and cpu and isinstance(crop[2], torch.Tensor):
            crop = (crop[0], crop[1], crop[2].numpy())
        kept.append(crop)
    next_id = _paste_things(
        order, kept_scores, kept_classes, kept, panoptic, overlap_thresh, segments
    )
    _assign_stuff(panoptic, sem_labels.to(panoptic.device).long(), next_id, stuff_area_thresh,
                  segments)
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
