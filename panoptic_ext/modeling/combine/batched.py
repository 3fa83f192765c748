"""The panoptic merge as a few whole-tensor passes over full-size masks.

On an accelerator, a loop of small per-instance ops is bound by launching them; here each step
is a few passes over all masks at once, with a handful of host reads per image. The tensor
steps (`resolve_things`, `thing_ids`, `assign_stuff_tensor`) are TorchScript-able: the export
scripts them (see `panoptic_ext.modeling.postprocess.panoptic_from_detections`).
"""

from __future__ import annotations

import torch

from .segments import SegmentsInfo, segment_info

__all__ = ["assign_stuff_tensor", "combine_sorted_masks", "resolve_things", "thing_ids"]


def resolve_things(masks: torch.Tensor, overlap_thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the (K, H, W) bool masks, by decreasing score, the merge keeps, and at each pixel
    the first kept instance covering it (K where none): (kept (K,) bool, owner (H, W) int64).

    Whether instance i is kept depends only on which earlier ones are: it is dropped when more
    than `overlap_thresh` of it lies under earlier kept instances. Iterating "decide all from
    the previous guess" therefore fixes at least one more instance per pass, and stops at the
    sequential answer (usually after a few passes). The pixels each kept instance owns are
    then exactly those the sequential merge gives it.
    """
    k = masks.shape[0]
    none = torch.full(masks.shape[1:], k, dtype=torch.int64, device=masks.device)
    if k == 0:
        return torch.zeros(0, dtype=torch.bool, device=masks.device), none
    rank = torch.arange(k, device=masks.device)
    areas = masks.flatten(1).sum(dim=1).double()
    nonempty = areas > 0
    kept = nonempty
    owner = none
    for _ in range(k + 1):  # pass t settles instance t - 1 at the latest; one more confirms
        covered = masks & kept[:, None, None]
        # first kept instance at each pixel (argmax returns the first maximum), k if none
        owner = torch.where(covered.any(dim=0), covered.to(torch.uint8).argmax(dim=0), none)
        overlap = (masks & (owner[None] < rank[:, None, None])).flatten(1).sum(dim=1)
        # as Detectron2's float64 `intersect * 1.0 / area > thresh` test, negated
        new = nonempty & ~(overlap.double() / areas > overlap_thresh)
        if torch.equal(new, kept):
            break
        kept = new
    return kept, owner


def thing_ids(kept: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """The (H, W) int32 id map of the things: kept instances get ids 1, 2, ... in order."""
    seg_ids = torch.cumsum(kept.long(), 0).to(torch.int32) * kept
    lut = torch.cat([seg_ids, seg_ids.new_zeros(1)])  # owner K: no instance
    return lut[owner]


def assign_stuff_tensor(
    panoptic: torch.Tensor, labels: torch.Tensor, next_id: int, stuff_area_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each stuff label (!= 0) of the int64 map `labels`, in increasing order, takes its free
    pixels of `panoptic` (ids from `next_id`) unless fewer than `stuff_area_thresh`.

    Returns (the new id map, the labels that got a segment (S,) int64, their areas (S,) int64).
    The free area of every label comes from one bincount over (label, is-free) keys.
    """
    if labels.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=labels.device)
        return panoptic, empty, empty
    free = panoptic == 0
    low = min(int(labels.min()), 0)  # negative labels count too, as in Detectron2
    lab = labels - low
    size = int(lab.max()) + 1
    counts = torch.bincount((lab * 2 + free.long()).flatten(), minlength=2 * size).view(size, 2)
    values = torch.arange(size, device=labels.device) + low
    take = (counts.sum(dim=1) > 0) & (values != 0) & (counts[:, 1].double() >= stuff_area_thresh)
    lut = ((torch.cumsum(take.long(), 0) + (next_id - 1)) * take).to(panoptic.dtype)
    return torch.where(free, lut[lab], panoptic), values[take], counts[:, 1][take]


def combine_sorted_masks(
    order: list[int],
    scores: list[float],
    classes: list[int],
    masks: torch.Tensor,
    sem_labels: torch.Tensor,
    overlap_thresh: float,
    stuff_area_thresh: float,
) -> tuple[torch.Tensor, SegmentsInfo]:
    """Both merge steps as whole-tensor passes, on the device of `sem_labels`: the things of
    `order` (sorted, thresholded indices into the full-size `masks`, with their `scores` and
    `classes`), then stuff."""
    panoptic = torch.zeros_like(sem_labels, dtype=torch.int32)
    kept_rows: list[int] = []
    if order:
        kept, owner = resolve_things(masks[order], overlap_thresh)
        panoptic = thing_ids(kept, owner)
        kept_rows = [j for j, keep in enumerate(kept.tolist()) if keep]
    segments = [segment_info(k + 1, classes[j], score=scores[j], instance_id=order[j])
                for k, j in enumerate(kept_rows)]
    first_stuff = len(segments) + 1
    panoptic, stuff, areas = assign_stuff_tensor(panoptic, sem_labels.long(), first_stuff,
                                                 stuff_area_thresh)
    stuff_areas = zip(stuff.tolist(), areas.tolist(), strict=True)
    segments += [segment_info(first_stuff + k, label, area=area)
                 for k, (label, area) in enumerate(stuff_areas)]
    return panoptic, segments
