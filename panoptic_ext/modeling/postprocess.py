"""Inference post-processing as tensor functions: from the network's raw outputs to what the
panoptic merge reads, at the requested output size.

Semantic labels. Detectron2 upsamples every semantic class logit to full resolution (twice when
the output size differs from the input size) only to take an argmax. `semantic_argmax` gets the
same labels from the 1/4-scale logits: a class can win at a pixel only if its largest source
logit around the pixel reaches the largest smallest one of any class, because bilinear
interpolation is a convex combination of those source values. Most pixels keep a single
candidate; the rest are evaluated for their candidate classes only.

Instances. `paste_for_combine` gives the merge Detectron2's `detector_postprocess` boxes, with
masks pasted only where the merge reads them, each as a crop of its box.

`rescale_boxes`, `paste_mask_crop`, `semantic_resize` and `panoptic_from_detections` are
TorchScript-able: the export scripts these same functions, so the exported model has no copy
of the post-processing of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances

from .combine.batched import assign_stuff_tensor, resolve_things, thing_ids
from .combine.cpu import Crop, score_order
from .combine.segments import SegmentsInfo, segment_info

__all__ = [
    "MASK_THRESHOLD",
    "CombineInputs",
    "class_argmax",
    "intra_op_threads",
    "panoptic_from_detections",
    "paste_for_combine",
    "paste_mask_crop",
    "rescale_boxes",
    "semantic_argmax",
    "semantic_logits",
    "semantic_resize",
    "segments_from_tensors",
]

MASK_THRESHOLD = 0.5  # detector_postprocess's default, which Detectron2's PanopticFPN uses

_SLACK = 1e-4  # source coordinates this close to an integer may round either way


@dataclass
class CombineInputs:
    """What the panoptic merge reads for one image, at the output size: instances as
    `detector_postprocess` gives them (boxes, scores, classes; full-size `pred_masks`, or
    `pred_mask_crops` from `paste_for_combine`) and the semantic argmax."""

    instances: Instances
    sem_labels: torch.Tensor  # (H, W) int64


# ---- TorchScript-able steps (keep to its subset of Python) -----------------------------------


def semantic_resize(
    logits: torch.Tensor, image_size: tuple[int, int], out_size: tuple[int, int]
) -> torch.Tensor:
    """(C, H, W) logits of a padded input cut to `image_size` and resized to `out_size`: the
    values of Detectron2's `sem_seg_postprocess`, minus its resize when the output size is the
    input size (it would only copy the values). The result may then be a view of `logits`."""
    sem = logits[:, : image_size[0], : image_size[1]]
    if out_size[0] == image_size[0] and out_size[1] == image_size[1]:
        return sem  # a view: copying 133 classes at 800x1333 takes ~0.3 s on a CPU
    return F.interpolate(sem[None], size=(out_size[0], out_size[1]), mode="bilinear",
                         align_corners=False)[0]


def rescale_boxes(
    boxes: torch.Tensor, image_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) XYXY boxes at the network's input size scaled to `out_size` and clipped to it, and
    which are non-empty: the boxes and the kept rows of Detectron2's `detector_postprocess`
    (same float32 operations), without touching the input."""
    assert bool(torch.isfinite(boxes).all()), "Box tensor contains infinite or NaN!"
    out_h, out_w = out_size[0], out_size[1]
    boxes = boxes.clone()
    boxes[:, 0::2] *= float(out_w) / float(image_size[1])
    boxes[:, 1::2] *= float(out_h) / float(image_size[0])
    boxes = torch.stack([boxes[:, 0].clamp(min=0, max=out_w), boxes[:, 1].clamp(min=0, max=out_h),
                         boxes[:, 2].clamp(min=0, max=out_w), boxes[:, 3].clamp(min=0, max=out_h)],
                        dim=-1)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0.0) & ((boxes[:, 3] - boxes[:, 1]) > 0.0)
    return boxes, keep


def paste_mask_crop(
    mask: torch.Tensor, box: torch.Tensor, img_h: int, img_w: int,
    threshold: float = MASK_THRESHOLD,
) -> tuple[int, int, torch.Tensor]:
    """One (1, 1, M, M) mask probability map pasted on the region around its (1, 4) box and
    thresholded: (y0, x0, bool crop). Pixel for pixel Detectron2's paste of a single mask on
    CPU (`_do_paste_mask(skip_empty=True)`), which is how it pastes on CPU; the region is the
    box widened by a pixel, so the crop holds every pixel the full-image paste would set."""
    x0_int = int(torch.clamp(box[0, 0].floor() - 1, min=0))
    y0_int = int(torch.clamp(box[0, 1].floor() - 1, min=0))
    x1_int = int(torch.clamp(box[0, 2].ceil() + 1, max=img_w))
    y1_int = int(torch.clamp(box[0, 3].ceil() + 1, max=img_h))
    x0, y0, x1, y1 = torch.split(box, 1, dim=1)
    img_y = torch.arange(y0_int, y1_int, device=box.device, dtype=torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int, device=box.device, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)
    probs = mask if mask.is_floating_point() else mask.float()
    pasted = F.grid_sample(probs, grid.to(probs.dtype), align_corners=False)
    return y0_int, x0_int, pasted[0, 0] >= threshold


def panoptic_from_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    mask_probs: torch.Tensor,
    sem_logits: torch.Tensor,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    overlap_thresh: float,
    stuff_area_thresh: float,
    score_thresh: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    """The panoptic result of one image from the raw network outputs (boxes at the input size,
    (N, 1, M, M) mask probabilities, (C, H', W') semantic logits of the padded input), as the
    eager model's CPU post-processing gives it, in tensors only: what the export scripts.

    The steps are the eager model's own functions: `rescale_boxes`, `paste_mask_crop` for each
    instance the merge reads, `semantic_resize` + argmax, then the whole-tensor merge
    (`resolve_things`, `assign_stuff_tensor`), which gives the CPU crop merge's result.

    Returns (panoptic (H, W) int32, and per segment: ids int32, contiguous category ids int64,
    isthing bool, scores float32 (-1 for stuff), instance indices int64 (-1 for stuff), pixel
    areas int64). Segments are in the eager order: things by score, then stuff by label.
    """
    out_h, out_w = out_size[0], out_size[1]
    boxes, keep = rescale_boxes(boxes, image_size, out_size)
    boxes, scores, classes, mask_probs = boxes[keep], scores[keep], classes[keep], mask_probs[keep]
    order = score_order(scores, score_thresh)
    masks = torch.zeros((order.numel(), out_h, out_w), dtype=torch.bool, device=boxes.device)
    for j in range(order.numel()):
        i = int(order[j])
        y0, x0, m = paste_mask_crop(mask_probs[i : i + 1], boxes[i : i + 1], out_h, out_w)
        masks[j, y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m
    kept, owner = resolve_things(masks, overlap_thresh)
    panoptic = thing_ids(kept, owner)
    things = order[kept]
    labels = semantic_resize(sem_logits, image_size, out_size).argmax(dim=0)
    panoptic, stuff, _ = assign_stuff_tensor(panoptic, labels, things.numel() + 1,
                                             stuff_area_thresh)
    n = things.numel() + stuff.numel()
    none = torch.full([stuff.numel()], -1, dtype=torch.int64, device=boxes.device)
    ids = torch.arange(1, n + 1, dtype=torch.int32, device=boxes.device)
    cats = torch.cat([classes[things].long(), stuff])
    isthing = torch.arange(n, device=boxes.device) < things.numel()
    seg_scores = torch.cat([scores[things].float(), none.float()])
    instance_ids = torch.cat([things, none])
    areas = torch.bincount(panoptic.flatten().long(), minlength=n + 1)[1:]
    return panoptic, ids, cats, isthing, seg_scores, instance_ids, areas


def segments_from_tensors(ids: torch.Tensor, cats: torch.Tensor, isthing: torch.Tensor,
                          scores: torch.Tensor, instance_ids: torch.Tensor, areas: torch.Tensor
                          ) -> SegmentsInfo:
    """:func:`panoptic_from_detections`' per-segment tensors as the ``segments_info`` dicts
    the eager model returns."""
    return [segment_info(int(ids[i]), int(cats[i]), score=float(scores[i]),
                         instance_id=int(instance_ids[i])) if bool(isthing[i])
            else segment_info(int(ids[i]), int(cats[i]), area=int(areas[i]))
            for i in range(len(ids))]


# ---- eager post-processing -------------------------------------------------------------------


def paste_for_combine(det: Instances, height: int, width: int, score_thresh: float) -> Instances:
    """`detector_postprocess` for the panoptic merge alone: the same boxes, scores and classes
    (same instance indices), but masks pasted only for instances scoring at least
    `score_thresh`, each as a crop (y0, x0, bool mask) of its box, in the field
    `pred_mask_crops` (None for the others). Pixels are those of Detectron2's paste on CPU."""
    boxes, keep = rescale_boxes(det.pred_boxes.tensor, det.image_size, (height, width))
    fields = {k: v for k, v in det.get_fields().items() if k not in ("pred_boxes", "pred_masks")}
    out = Instances((height, width), pred_boxes=Boxes(boxes), **fields)[keep]
    crops: list[Crop | None] = [None] * len(out)
    if det.has("pred_masks"):
        masks = det.pred_masks[keep]
        boxes = out.pred_boxes.tensor
        for i in (out.scores >= score_thresh).nonzero().flatten().tolist():
            crops[i] = paste_mask_crop(masks[i : i + 1], boxes[i : i + 1], height, width)
    out.pred_mask_crops = crops
    return out


def semantic_logits(
    logits: torch.Tensor, scale: float, image_size: tuple[int, int], out_size: tuple[int, int]
) -> torch.Tensor:
    """(C, H, W) logits exactly as Detectron2's head upsampling + `sem_seg_postprocess` give them,
    minus the second resize when the output size is the input size (it would copy the values).

    `logits` are the head's 1/`scale` outputs for one (padded) image.
    """
    up = F.interpolate(logits[None], scale_factor=scale, mode="bilinear", align_corners=False)[0]
    return semantic_resize(up, image_size, out_size)


def _source_index(dst: np.ndarray, ratio: np.float32, in_size: int):
    """Bilinear (align_corners=False) source indices and weights as PyTorch's CPU kernel computes
    them (float32, the coordinate with one fused multiply-add: checked against its weights in
    the tests), and the lowest / highest index any other rounding of the coordinate could give.
    """
    # float32 * float32 is exact in float64, so this rounds once, as an FMA does
    src32 = (np.float64(ratio) * (dst + 0.5) - 0.5).astype(np.float32)
    src32 = np.maximum(src32, np.float32(0.0))
    i0 = src32.astype(np.int64)
    i1 = i0 + (i0 < in_size - 1)
    w1 = src32 - i0.astype(np.float32)
    w0 = np.float32(1.0) - w1
    src64 = np.maximum(float(ratio) * (dst + 0.5) - 0.5, 0.0)
    lo = np.minimum(i0, np.floor(np.maximum(src64 - _SLACK, 0.0)).astype(np.int64))
    hi_base = np.maximum(i0, np.floor(src64 + _SLACK).astype(np.int64))
    hi = np.minimum(hi_base + 1, in_size - 1)
    return i0, i1, w0, w1, lo, hi


def _taps(out_len: int, img_len: int, src_len: int, scale: float):
    """Along one axis: for each output position, the source positions and float64 weights it
    blends through both resizes (x`scale` of the padded map, crop, then `img_len` -> `out_len`),
    and the lowest / highest source position rounding could involve."""
    ratio1 = np.float32(1.0 / scale)
    dst = np.arange(out_len)
    if out_len == img_len:  # Detectron2's second resize keeps every value: one stage
        i0, i1, w0, w1, lo, hi = _source_index(dst, ratio1, src_len)
        return np.stack([i0, i1], 1), np.stack([w0, w1], 1).astype(np.float64), lo, hi
    ratio2 = np.float32(img_len) / np.float32(out_len)
    j0, j1, m0, m1, jlo, jhi = _source_index(dst, ratio2, img_len)
    p0, p1, l0, l1 = _source_index(j0, ratio1, src_len)[:4]
    q0, q1, k0, k1 = _source_index(j1, ratio1, src_len)[:4]
    m0, m1 = m0.astype(np.float64), m1.astype(np.float64)
    idx = np.stack([p0, p1, q0, q1], 1)
    wts = np.stack([m0 * l0, m0 * l1, m1 * k0, m1 * k1], 1)
    lo = _source_index(jlo, ratio1, src_len)[4]
    hi = _source_index(jhi, ratio1, src_len)[5]
    return idx, wts, lo, hi


class _Axis:
    """One axis of the output grid, grouped by anchor source cell.

    Output position p blends source positions lo[p] .. lo[p] + k - 1. The positions anchored
    at a cell form a contiguous run (lo is monotonic), cut into groups of at most `size`
    (the usual run length; a longer run, e.g. at the border, takes several groups). Group g:
    positions pos[g] (valid[g]) and their weights over its cell's window, weights[g] (size, k);
    cell i owns groups first[i] .. first[i] + count[i] - 1 (none when no position anchors
    there, as when downscaling).
    """

    def __init__(self, out_len: int, img_len: int, src_len: int, scale: float):
        idx, wts, lo, hi = _taps(out_len, img_len, src_len, scale)
        self.lo = lo
        self.k = int((hi - lo).max()) + 1
        dense = np.zeros((out_len, self.k), dtype=np.float64)
        for t in range(idx.shape[1]):
            np.add.at(dense, (np.arange(out_len), idx[:, t] - lo), wts[:, t])
        cells = np.arange(src_len)
        start = np.searchsorted(lo, cells, side="left")
        run = np.searchsorted(lo, cells, side="right") - start
        size = max(int(np.bincount(run[run > 0]).argmax()), 1)
        count = -(-run // size)  # groups per cell
        first = np.cumsum(count) - count
        owner = np.repeat(cells, count)
        offset = start[owner] + (np.arange(owner.size) - first[owner]) * size
        slot = offset[:, None] + np.arange(size)[None, :]
        valid = slot < (start + run)[owner][:, None]
        pos = np.where(valid, slot, 0)
        self.size = size
        self.first, self.count = first, count
        self.pos, self.valid = pos, valid
        self.weights = np.where(valid[:, :, None], dense[pos], 0.0)


def _window(x: torch.Tensor, kh: int, kw: int, op: Callable) -> torch.Tensor:
    """`op` (torch.maximum / torch.minimum) of x over the kh x kw window whose top-left corner
    is each position of the last two dims, cut at the border."""
    for dim, k in ((-2, kh), (-1, kw)):
        n = x.shape[dim]
        out = x.clone()
        for d in range(1, min(k, n)):
            op(out.narrow(dim, 0, n - d), x.narrow(dim, d, n - d), out=out.narrow(dim, 0, n - d))
        x = out
    return x


_MAX_AMBIGUOUS = 0.25  # fraction of cells to evaluate beyond which the full path is cheaper
_CHUNK_ELEMS = 1 << 24  # bound on per-chunk work tensors (classes x cells x block)


def semantic_argmax(
    logits: torch.Tensor,
    scale: float,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    full: torch.Tensor | None = None,
    threads: int = 0,
) -> torch.Tensor:
    """(H, W) int64 labels equal to `semantic_logits(...).argmax(0)`, without upsampling every
    class to full size.

    1. Output pixels are grouped by the source cell their (kh x kw) source window starts at.
       Where one class is the largest at every source position of the window, and its
       smallest value there beats every other class's largest (by more than a rounding
       margin), it wins at every pixel of the group: bilinear values are convex combinations
       of the window's values.
    2. Elsewhere, the classes that can win (max over the window reaching the best min) are
       evaluated in float64 with the kernel's own weights, for those pixels only.
    3. Where the two best are within float32 rounding of each other, the full computation
       decides instead, so ties and near-ties resolve exactly as in Detectron2. It also runs
       when classes compete in over a quarter of the cells (e.g. random weights): then it is
       the cheaper way.

    `full`: the full-size logits when they exist anyway (the result then equals their argmax;
    computing it this way is still cheaper than an argmax over all classes).
    `threads`: intra-op threads for steps 1-2 (0: unchanged); the full computation always
    runs with the caller's setting, as Detectron2's does.
    """
    with intra_op_threads(threads):
        labels = _pruned_argmax(logits, scale, image_size, out_size)
    if labels is None:
        if full is None:
            full = semantic_logits(logits.float(), scale, image_size, out_size)
        labels = class_argmax(full)
    return labels


def _pruned_argmax(
    logits: torch.Tensor, scale: float, image_size: tuple[int, int], out_size: tuple[int, int]
) -> torch.Tensor | None:
    """Steps 1-2 of `semantic_argmax`; None where step 3 must decide."""
    c, h, w = logits.shape
    out_h, out_w = int(out_size[0]), int(out_size[1])
    x = logits.float()
    if c == 1:
        return torch.zeros((out_h, out_w), dtype=torch.int64, device=x.device)
    top2, top_cls = x.topk(2, dim=0)
    amax = torch.maximum(top2[0].abs().amax(), x.amin().abs())
    if not bool(torch.isfinite(amax)):
        return None
    rows = _Axis(out_h, int(image_size[0]), h, scale)
    cols = _Axis(out_w, int(image_size[1]), w, scale)
    # far above the float32 rounding of a (two-stage) bilinear blend
    margin = amax * 2.0**-20
    labels, single = _single_class_cells(top2, top_cls, rows, cols, margin)
    cell_y, cell_x = (~single).nonzero(as_tuple=True)
    if cell_y.numel() == 0:
        return labels
    if cell_y.numel() > _MAX_AMBIGUOUS * h * w:
        return None  # classes compete almost everywhere: the full computation is cheaper
    # float32 blends of values bounded by `mag` err by at most ~1.5 ulps of `mag` per resize;
    # a gap within twice the total may go either way
    one_stage = (out_h, out_w) == (int(image_size[0]), int(image_size[1]))
    tol = 2.0**-21 if one_stage else 2.0**-20
    row_g, col_g = _Groups.of(rows, x.device), _Groups.of(cols, x.device)
    step = max(1, _CHUNK_ELEMS // (c * max(rows.k * cols.k, rows.size * cols.size)))
    for s in range(0, cell_y.numel(), step):
        cy, cx = cell_y[s : s + step], cell_x[s : s + step]
        if not _resolve_cells(x, labels, cy, cx, row_g, col_g, margin, tol):
            return None
    return labels


def _single_class_cells(
    top2: torch.Tensor, top_cls: torch.Tensor, rows: _Axis, cols: _Axis, margin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1: every output pixel labelled with the best class at its window's anchor cell,
    and the (source-size) mask of cells where that class wins throughout the window."""
    kh, kw = rows.k, cols.k
    best = top_cls[0]
    single = (_window(best, kh, kw, torch.maximum) == _window(best, kh, kw, torch.minimum)) & (
        _window(top2[0], kh, kw, torch.minimum) >= _window(top2[1], kh, kw, torch.maximum) + margin
    )
    labels = best.index_select(0, torch.from_numpy(rows.lo).to(best.device))
    labels = labels.index_select(1, torch.from_numpy(cols.lo).to(best.device))
    return labels, single


@dataclass
class _Groups:
    """An `_Axis`'s groups as tensors on the logits' device (see `_Axis`)."""

    first: torch.Tensor
    count: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor
    size: int
    k: int

    @classmethod
    def of(cls, axis: _Axis, device: torch.device) -> _Groups:
        tensors = (torch.from_numpy(v).to(device)
                   for v in (axis.first, axis.count, axis.pos, axis.valid, axis.weights))
        return cls(*tensors, size=axis.size, k=axis.k)


@dataclass
class _Candidates:
    """The classes that can win somewhere in each of n cells: (cell, class) pairs, cell-major
    and classes ascending within a cell, and the same per cell as a padded (n, kmax) table."""

    patch: torch.Tensor  # (C, n, kh, kw) source values of each cell's window
    pair_cell: torch.Tensor
    pair_cls: torch.Tensor
    pair_start: torch.Tensor  # each cell's first pair
    count: torch.Tensor  # pairs per cell
    classes: torch.Tensor  # (n, kmax)
    mag: torch.Tensor  # float64 bound on |value| of each cell's candidates over its window


def _resolve_cells(
    x: torch.Tensor, labels: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor,
    row_g: _Groups, col_g: _Groups, margin: torch.Tensor, tol: float,
) -> bool:
    """Step 2 for some cells: writes their pixels' labels; False where a near-tie leaves it to
    step 3 (then `labels` is only partly written)."""
    cand = _candidates(x, cy, cx, row_g.k, col_g.k, margin)
    item_cell, gy, gx = _work_items(cy, cx, row_g, col_g)
    arg, gap = _best_of_items(cand, item_cell, gy, gx, row_g, col_g)
    valid = (row_g.valid[gy][:, :, None] & col_g.valid[gx][:, None, :]).flatten(1)
    if bool(((gap <= cand.mag[item_cell][:, None] * tol) & valid).any()):
        return False
    win = cand.classes[item_cell].gather(1, arg)
    oy = row_g.pos[gy][:, :, None].expand(-1, -1, col_g.size).flatten(1)
    ox = col_g.pos[gx][:, None, :].expand(-1, row_g.size, -1).flatten(1)
    labels[oy[valid], ox[valid]] = win[valid]
    return True


def _candidates(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, kh: int, kw: int,
                margin: torch.Tensor) -> _Candidates:
    """The classes whose largest value over a cell's window reaches the best smallest one."""
    c, h, w = x.shape
    dev = x.device
    n = cy.numel()
    ys = (cy[:, None] + torch.arange(kh, device=dev)).clamp_(max=h - 1)  # past the border: 0 weight
    xs = (cx[:, None] + torch.arange(kw, device=dev)).clamp_(max=w - 1)
    patch = x[:, ys[:, :, None], xs[:, None, :]]  # (C, n, kh, kw)
    hi = patch.amax(dim=(2, 3))
    lo = patch.amin(dim=(2, 3))
    cand = hi >= lo.amax(dim=0) - margin  # (C, n)
    count = cand.sum(dim=0)
    pair_cell, pair_cls = cand.t().nonzero(as_tuple=True)
    pair_start = count.cumsum(0) - count
    rank = torch.arange(pair_cell.numel(), device=dev) - pair_start[pair_cell]
    classes = torch.zeros((n, int(count.max())), dtype=torch.int64, device=dev)
    classes[pair_cell, rank] = pair_cls
    mag = torch.zeros(n, dtype=torch.float64, device=dev).scatter_reduce_(
        0, pair_cell, torch.maximum(hi, -lo)[pair_cls, pair_cell].double(), "amax")
    return _Candidates(patch, pair_cell, pair_cls, pair_start, count, classes, mag)


def _work_items(cy: torch.Tensor, cx: torch.Tensor, row_g: _Groups, col_g: _Groups
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Work items (cell, row group, column group): every group pair of each cell."""
    dev = cy.device
    per_cell = row_g.count[cy] * col_g.count[cx]
    item_cell = torch.repeat_interleave(torch.arange(cy.numel(), device=dev), per_cell)
    local = torch.arange(item_cell.numel(), device=dev) - (
        per_cell.cumsum(0) - per_cell)[item_cell]
    ncol = col_g.count[cx][item_cell]
    gy = row_g.first[cy][item_cell] + torch.div(local, ncol, rounding_mode="floor")
    gx = col_g.first[cx][item_cell] + local % ncol
    return item_cell, gy, gx


def _best_of_items(
    cand: _Candidates, item_cell: torch.Tensor, gy: torch.Tensor, gx: torch.Tensor,
    row_g: _Groups, col_g: _Groups,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's candidates blended in float64 with the kernel's weights at its pixels:
    the best one's rank and its lead over the runner-up, both (items, pixels of a group)."""
    dev = item_cell.device
    # (item, candidate) pairs: each item evaluates its cell's candidates
    item_count = cand.count[item_cell]
    item_of = torch.repeat_interleave(torch.arange(item_cell.numel(), device=dev), item_count)
    item_rank = torch.arange(item_of.numel(), device=dev) - (
        item_count.cumsum(0) - item_count)[item_of]
    pair = cand.pair_start[item_cell][item_of] + item_rank
    vals = torch.einsum("pak,pkl,pbl->pab", row_g.weights[gy[item_of]],
                        cand.patch[cand.pair_cls[pair], cand.pair_cell[pair]].double(),
                        col_g.weights[gx[item_of]])
    table = torch.full((item_cell.numel(), cand.classes.shape[1], row_g.size * col_g.size),
                       -float("inf"), dtype=torch.float64, device=dev)
    table[item_of, item_rank] = vals.flatten(1)
    table = table.transpose(1, 2)  # (items, block, kmax)
    top, arg = table.max(dim=2)
    table.scatter_(2, arg[:, :, None], -float("inf"))
    return arg, top - table.amax(dim=2)


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=0)`` of a (C, H, W) tensor, the first maximal class on ties (and
    torch's own argmax where a score is NaN, which it takes as the maximum)."""
    best = scores[0].clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=scores.device)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best  # strict: an equal later class does not win, as argmax
        index[better] = c
        torch.maximum(best, scores[c], out=best)  # propagates NaN: checked once below
    if torch.isnan(best).any():
        return scores.argmax(dim=0)
    return index


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Temporarily run torch CPU ops on `threads` threads (0: leave as is). Post-processing is
    many small ops; on a shared CPU, handing each to a second thread costs more than it saves.
    """
    old = torch.get_num_threads()
    if threads <= 0 or threads == old:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
