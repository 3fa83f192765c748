"""The panoptic merge on CPU, one instance crop at a time, in numpy.

Each step works on the bounding box of one mask (a crop) instead of the full image, and stuff
is assigned in one counting pass. The steps run in numpy: they are many small operations on
small arrays, where torch's per-op dispatch and threading overhead dominate (milliseconds per
op on a busy machine; numpy: microseconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .segments import SegmentsInfo, segment_info

__all__ = ["Crop", "combine_panoptic_crops", "combine_sorted_crops", "crops_numpy", "score_order",
           "sorted_kept"]

Crop = tuple[int, int, Any]  # (y0, x0, boolean mask crop); None for an empty mask


def score_order(scores: torch.Tensor, score_thresh: float) -> torch.Tensor:
    """Indices of the instances the merge takes, in its order: Detectron2's argsort call (so
    ties break alike), cut at `score_thresh`. TorchScript-able (the export scripts it)."""
    order = torch.argsort(-scores)
    return order[scores[order] >= score_thresh]


def sorted_kept(
    scores: torch.Tensor, classes: torch.Tensor, score_thresh: float
) -> tuple[list[int], list[float], list[int]]:
    """`score_order`, with the kept scores and classes as Python numbers."""
    order_t = score_order(scores, score_thresh)
    return order_t.tolist(), scores[order_t].tolist(), [int(c) for c in classes[order_t].tolist()]


def crops_numpy(
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


def paste_things(
    order: list[int],
    scores: list[float],
    classes: list[int],
    crops: Iterable[Crop | None],
    panoptic: np.ndarray,
    overlap_thresh: float,
    segments: SegmentsInfo,
) -> int:
    """Give instances (sorted, thresholded; numpy `crops` aligned with `order`) their free pixels
    of the numpy id map `panoptic`, or drop them when more than `overlap_thresh` of their area
    is taken already. Returns the next free segment id."""
    next_id = 1
    for k, (inst, crop) in enumerate(zip(order, crops, strict=True)):
        if crop is None:
            continue
        y0, x0, m = crop
        region = panoptic[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
        hit = m & (region != 0)
        area, overlap = int(np.count_nonzero(m)), int(np.count_nonzero(hit))
        # Detectron2's float64 `intersect * 1.0 / area > thresh` test
        if area == 0 or overlap * 1.0 / area > overlap_thresh:
            continue
        np.putmask(region, m ^ hit if overlap else m, next_id)
        segments.append(segment_info(next_id, classes[k], score=scores[k], instance_id=inst))
        next_id += 1
    return next_id


def assign_stuff(
    panoptic: np.ndarray,
    labels: np.ndarray,
    next_id: int,
    stuff_area_thresh: float,
    segments: SegmentsInfo,
) -> None:
    """Give each stuff label (!= 0) of the integer map `labels` its free pixels of `panoptic`, in
    increasing label order, unless fewer than `stuff_area_thresh`. The free area of every label
    comes from one bincount over (label, is-free) keys, instead of a sort (`unique`) and a
    full-image mask per label. Any integer labels work (negative ones too, as in Detectron2)."""
    if labels.size == 0:
        return
    free = panoptic == 0
    low = min(int(labels.min()), 0)
    lab = labels - low if low else labels  # shifted to >= 0 for counting
    size = int(lab.max()) + 1
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
    lut = np.zeros(size, dtype=np.int32)
    changed = False
    for index in present:
        label, area = index + low, free_area[index]
        if label == 0 or area < stuff_area_thresh:
            continue
        lut[index] = next_id
        segments.append(segment_info(next_id, label, area=area))
        next_id += 1
        changed = True
    if changed:
        np.copyto(panoptic, lut[lab], where=free)


def combine_sorted_crops(
    order: list[int],
    scores: list[float],
    classes: list[int],
    crops: Iterable[Crop | None],
    sem_labels: torch.Tensor,
    overlap_thresh: float,
    stuff_area_thresh: float,
) -> tuple[torch.Tensor, SegmentsInfo]:
    """Both merge steps on CPU: things from numpy crops aligned with `order`, then stuff."""
    panoptic = torch.zeros_like(sem_labels, dtype=torch.int32)
    pan = panoptic.numpy()  # shares memory
    segments: SegmentsInfo = []
    next_id = paste_things(order, scores, classes, crops, pan, overlap_thresh, segments)
    assign_stuff(pan, sem_labels.long().numpy(), next_id, stuff_area_thresh, segments)
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
    Runs on CPU (crops are CPU work); the id map is returned on `sem_labels`' device.
    """
    order, kept_scores, kept_classes = sorted_kept(scores, classes, score_thresh)
    kept = []
    for i in order:
        crop = crops[i]
        if crop is not None and isinstance(crop[2], torch.Tensor):
            crop = (crop[0], crop[1], crop[2].cpu().numpy())
        kept.append(crop)
    panoptic, segments = combine_sorted_crops(order, kept_scores, kept_classes, kept,
                                         sem_labels.cpu(), overlap_thresh, stuff_area_thresh)
    return panoptic.to(sem_labels.device), segments
