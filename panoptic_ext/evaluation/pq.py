"""Exact and fast panoptic quality (PQ), numerically equal to ``panopticapi.evaluation``.

The per-image core turns both id maps into small bucket indices through a lookup table and
counts every (ground truth, prediction) pixel pair with one ``np.bincount``; the matching
then works on the resulting small contingency table. Everything else (which segments match,
which predictions are ignored, how categories are averaged) deliberately follows the
reference implementation rule for rule, including its quirks, so results agree to 1e-9:

* a GT segment's area is its JSON ``area``, not its pixel count;
* every same-category (GT, prediction) pair with IoU > 0.5 is a TP (IoU's union leaves out
  the prediction's void pixels); with inconsistent JSON areas one GT can match twice;
* the crowd region of a category is the *last* crowd segment of it in ``segments_info``,
  not the union of them;
* id 0 is void only when no segment claims it; GT ids missing from the JSON are neither
  void nor segments; duplicate ids in ``segments_info``: the last entry wins (per image;
  the file-based evaluation refuses JSONs listing an image or segment id twice).

One deliberate difference: a group (Things or Stuff) without any category seen gets
PQ = SQ = RQ = 0 with ``n == 0`` where panopticapi raises ZeroDivisionError.

Its own code needs only numpy, OpenCV, tabulate and :mod:`panoptic_ext.formats` (no torch, no
Detectron2).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from tabulate import tabulate

from ..formats import (
    OFFSET,
    VOID,
    PanopticFormatError,
    check_unique_ids,
    load_panoptic_json,
    read_panoptic_png,
    rgb_to_id,
)
from ..utils.paths import join_inside
from ..utils.pools import safe_pool

__all__ = [
    "OFFSET",
    "VOID",
    "PanopticFormatError",
    "PQStats",
    "compute_stats_from_files",
    "default_folder",
    "evaluate_files",
    "image_pq_stats",
    "read_panoptic_png",
    "rgb_to_id",
    "summarize_pq",
    "pq_compute",
    "format_pq_table",
    "format_summary_table",
    "format_class_table",
    "ImpossiblePQError",
    "check_pq_range",
    "PQ_BACKENDS",
    "check_pq_backend",
    "hotcoco_available",
    "hotcoco_unsupported",
]

# Below this many images a pool costs more than it saves (~5 ms per 640x480 image here).
# Pool workers start from a fresh interpreter (no hang after OpenCV/torch threads ran in
# this process): the first pool of a process starts a forkserver that imports this package
# (~2-3 s idle, torch included); later pools fork that server (~0.1 s).
MIN_IMAGES_FOR_POOL = 400
MIN_IMAGES_FOR_WARM_POOL = 64
_pool_started = False
logger = logging.getLogger(__name__)

_U16_LIMIT = 1 << 16
_DENSE_LIMIT = 1 << 22  # largest contingency table counted densely with bincount
_BAD_AREAS_KEPT = 20  # wrong GT areas named in an error

CategoriesLike = Mapping[Any, Mapping[str, Any]] | Sequence[Mapping[str, Any]]


# --------------------------------------------------------------------------------------
# Accumulated statistics
# --------------------------------------------------------------------------------------


class PQStats:
    """Per-category tp/fp/fn/iou sums: small, picklable and mergeable across images and ranks."""

    __slots__ = ("per_cat", "bad_areas", "num_bad_areas")

    def __init__(self, per_cat: Mapping[Any, Sequence[float]] | None = None) -> None:
        # category id -> [tp, fp, fn, iou_sum]
        self.per_cat: dict = {}
        # GT segments whose JSON area is not their pixel count: the first few as
        # (image_id, segment id, JSON area, pixels), and how many in all (they can make
        # IoU, hence SQ and PQ, exceed 1: panopticapi's IoU uses the JSON area)
        self.bad_areas: list = []
        self.num_bad_areas = 0
        if per_cat:
            for cat, (tp, fp, fn, iou) in per_cat.items():
                self.per_cat[cat] = [int(tp), int(fp), int(fn), float(iou)]

    def _entry(self, cat: Any) -> list:
        entry = self.per_cat.get(cat)
        if entry is None:
            entry = self.per_cat[cat] = [0, 0, 0, 0.0]
        return entry

    def add(self, cat: Any, tp: int = 0, fp: int = 0, fn: int = 0, iou: float = 0.0) -> None:
        """Add counts for one category (used by the per-image core and by tests)."""
        entry = self._entry(cat)
        entry[0] += tp
        entry[1] += fp
        entry[2] += fn
        entry[3] += iou

    def note_bad_area(self, image_id: Any, segment_id: int, json_area: Any, pixels: int) -> None:
        """Remember a GT segment whose JSON area differs from its pixel count."""
        self.num_bad_areas += 1
        if len(self.bad_areas) < _BAD_AREAS_KEPT:
            self.bad_areas.append((image_id, segment_id, json_area, pixels))

    def merge(self, other: PQStats) -> PQStats:
        """Add another image's or rank's statistics in place; returns self for chaining."""
        self.num_bad_areas += other.num_bad_areas
        self.bad_areas.extend(other.bad_areas[:max(0, _BAD_AREAS_KEPT - len(self.bad_areas))])
        for cat, (tp, fp, fn, iou) in other.per_cat.items():
            entry = self._entry(cat)
            entry[0] += tp
            entry[1] += fp
            entry[2] += fn
            entry[3] += iou
        return self

    __iadd__ = merge

    def __add__(self, other: PQStats) -> PQStats:
        return PQStats().merge(self).merge(other)

    def get(self, cat: Any) -> tuple[int, int, int, float]:
        """(tp, fp, fn, iou_sum) of a category, zeros when never seen."""
        entry = self.per_cat.get(cat)
        return (0, 0, 0, 0.0) if entry is None else tuple(entry)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """Plain dict for JSON or logging: {category: {"tp", "fp", "fn", "iou"}}."""
        return {
            cat: {"tp": tp, "fp": fp, "fn": fn, "iou": iou}
            for cat, (tp, fp, fn, iou) in self.per_cat.items()
        }

    def __getstate__(self) -> dict:
        return {"per_cat": self.per_cat, "bad_areas": self.bad_areas,
                "num_bad_areas": self.num_bad_areas}

    def __setstate__(self, state: dict) -> None:
        self.per_cat = state["per_cat"]
        self.bad_areas = state.get("bad_areas", [])
        self.num_bad_areas = state.get("num_bad_areas", 0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PQStats) and self.per_cat == other.per_cat

    def __repr__(self) -> str:
        return f"PQStats({self.per_cat!r})"


# --------------------------------------------------------------------------------------
# Reading COCO panoptic PNGs
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Per-image core
# --------------------------------------------------------------------------------------

_tls = threading.local()


def _lut(dtype: type) -> np.ndarray:
    """Per-thread zero-filled table over all 2**24 ids; entries are reset after every use."""
    name = "lut_" + np.dtype(dtype).name
    table = getattr(_tls, name, None)
    if table is None:
        table = np.zeros(OFFSET, dtype=dtype)  # calloc: only touched pages cost memory
        setattr(_tls, name, table)
    return table


def _lookup(ids: np.ndarray, keys: np.ndarray, values: np.ndarray, dtype: type) -> np.ndarray:
    """Map each pixel id to values[k] where keys[k] == id, and to 0 for any other id."""
    table = _lut(dtype)
    table[keys] = values
    try:
        return np.take(table, ids)
    finally:
        table[keys] = 0


def _segment_id(raw: Any, image_id: Any, which: str) -> int:
    if isinstance(raw, int | np.integer) and not isinstance(raw, bool | np.bool_):
        return int(raw)
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    raise PanopticFormatError(
        f"In the image with ID {image_id} a {which} segment has a non-integer id {raw!r}."
    )


def _field(seg: Mapping[str, Any], key: str, image_id: Any, seg_id: Any, which: str) -> Any:
    try:
        return seg[key]
    except (KeyError, TypeError):
        raise PanopticFormatError(
            f"In the image with ID {image_id} {which} segment with ID {seg_id} has no '{key}'."
        ) from None


def _segments_by_id(segments: Iterable[Mapping[str, Any]], image_id: Any, which: str) -> dict:
    """id -> segment, later duplicates overriding earlier ones as a dict literal would."""
    out: dict = {}
    for seg in segments:
        out[_segment_id(_field(seg, "id", image_id, "?", which), image_id, which)] = seg
    return out


def _check_id_map(ids: np.ndarray, image_id: Any, which: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise PanopticFormatError(
            f"In the image with ID {image_id} the {which} id map must be a 2-D integer array, "
            f"got {ids.dtype} with shape {ids.shape}."
        )
    if ids.dtype.itemsize > 2 or np.issubdtype(ids.dtype, np.signedinteger):
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= OFFSET):
            raise PanopticFormatError(
                f"In the image with ID {image_id} the {which} id map has ids outside "
                f"[0, 2^24): min {int(ids.min())}, max {int(ids.max())}."
            )
    return ids


def _bucket_keys(seg_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Lookup keys/bucket numbers: id 0 -> bucket 1, i-th non-zero id -> bucket i + 2.

    Bucket 0 collects every id that is not listed (and not 0). Ids outside the 24-bit range
    can never occur in a map, so they keep their (always empty) bucket but no table entry.
    """
    keys = [0]
    buckets = [1]
    for pos, sid in enumerate(seg_ids):
        if 0 < sid < OFFSET:
            keys.append(sid)
            buckets.append(pos + 2)
    return np.asarray(keys, dtype=np.int64), np.asarray(buckets, dtype=np.int64)


def _pair_counts(
    gt_ids: np.ndarray, gt_keys: np.ndarray, gt_buckets: np.ndarray, n_rows: int,
    pred_ids: np.ndarray, pred_keys: np.ndarray, pred_buckets: np.ndarray, n_cols: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table (row, col, pixel count) of gt bucket x pred bucket."""
    size = n_rows * n_cols
    if size <= _U16_LIMIT:
        # pre-multiply the gt bucket so that one add gives the flat pair index
        flat = _lookup(gt_ids, gt_keys, (gt_buckets * n_cols).astype(np.uint16), np.uint16)
        np.add(flat, _lookup(pred_ids, pred_keys, pred_buckets.astype(np.uint16), np.uint16),
               out=flat)
        table = np.bincount(flat.ravel(), minlength=size)
        flat_nz = np.flatnonzero(table)
        counts = table[flat_nz]
    else:
        rows = _lookup(gt_ids, gt_keys, gt_buckets.astype(np.int32), np.int32)
        cols = _lookup(pred_ids, pred_keys, pred_buckets.astype(np.int32), np.int32)
        flat64 = rows.ravel().astype(np.int64) * n_cols + cols.ravel()
        if size <= _DENSE_LIMIT:
            table = np.bincount(flat64, minlength=size)
            flat_nz = np.flatnonzero(table)
            counts = table[flat_nz]
        else:
            flat_nz, counts = np.unique(flat64, return_counts=True)
    return flat_nz // n_cols, flat_nz % n_cols, counts.astype(np.int64)


def _raise_pred_errors(
    pred_ids: np.ndarray, pred_segms: dict, categories: Any, image_id: Any
) -> None:
    """Raise the first prediction error in panopticapi's order (slow path, errors only)."""
    labels = np.unique(pred_ids)
    remaining = set(pred_segms)
    for label in labels.tolist():
        if label not in pred_segms:
            if label == VOID:
                continue
            raise PanopticFormatError(
                f"In the image with ID {image_id} segment with ID {label} is presented in PNG "
                "and not presented in JSON."
            )
        remaining.discard(label)
        cat = _field(pred_segms[label], "category_id", image_id, label, "predicted")
        if _unknown_category(cat, categories):
            raise PanopticFormatError(
                f"In the image with ID {image_id} segment with ID {label} has unknown "
                f"category_id {cat}."
            )
    if remaining:
        raise PanopticFormatError(
            f"In the image with ID {image_id} the following segment IDs {sorted(remaining)} "
            "are presented in JSON and not presented in PNG."
        )


def _unknown_category(cat: Any, categories: Any) -> bool:
    try:
        return cat not in categories
    except TypeError:  # unhashable category id
        return True


def image_pq_stats(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    categories: Any,
    image_id: Any = None,
) -> PQStats:
    """PQ statistics of one image, from in-memory id maps and segments_info lists.

    ``gt_ids``/``pred_ids`` are (H, W) integer maps of 24-bit segment ids (0 is void unless a
    segment claims it), ``*_segments`` are COCO ``segments_info`` lists and ``categories``
    is anything supporting ``in`` over valid category ids (e.g. ``{id: category}``).
    The result can be merged over images and ranks and turned into PQ by ``summarize_pq``.
    """
    gt_ids = _check_id_map(gt_ids, image_id, "ground truth")
    pred_ids = _check_id_map(pred_ids, image_id, "predicted")
    return _image_pq_stats(gt_ids, gt_segments, pred_ids, pred_segments, categories, image_id)


def _image_pq_stats(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    categories: Any,
    image_id: Any,
) -> PQStats:
    """``image_pq_stats`` on id maps already known to be valid (the file path decodes them)."""
    _check_same_size(gt_ids, pred_ids, image_id)
    gt_segms = _segments_by_id(gt_segments, image_id, "ground truth")
    pred_segms = _segments_by_id(pred_segments, image_id, "predicted")
    table = _count_pairs(gt_ids, list(gt_segms), pred_ids, list(pred_segms))
    if table.unlisted_pred or (table.pred_area == 0).any():
        _raise_pred_errors(pred_ids, pred_segms, categories, image_id)
        raise AssertionError("unreachable: inconsistent prediction not reported")
    segs = _listed_segments(gt_segms, pred_segms, pred_ids, categories, image_id)
    stats = PQStats()
    _note_bad_areas(stats, table, segs, image_id)
    gt_matched, pred_matched = _add_true_positives(stats, table, segs, image_id)
    crowd_row = _add_false_negatives(stats, table, segs, gt_matched)
    _add_false_positives(stats, table, segs, pred_matched, crowd_row)
    return stats


def _check_same_size(gt_ids: np.ndarray, pred_ids: np.ndarray, image_id: Any) -> None:
    if gt_ids.shape != pred_ids.shape:
        raise PanopticFormatError(
            f"In the image with ID {image_id} the predicted segmentation has size "
            f"{pred_ids.shape[1]}x{pred_ids.shape[0]} (WxH) but the ground truth has size "
            f"{gt_ids.shape[1]}x{gt_ids.shape[0]}."
        )


@dataclass
class _Table:
    """One image's contingency table: the pixels of every overlapping (GT bucket, predicted
    bucket) pair, with the per-segment sums the matching reads.

    Buckets (rows for GT, columns for predictions): 0 collects unlisted ids, 1 is id 0, 2..
    are the listed segments in order, except that a listed id 0 owns bucket 1. ``gt_row`` /
    ``pred_col``: the bucket of each listed segment; ``row_pos`` / ``col_pos``: the listed
    segment of each bucket (its position, -1 for none).
    """

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    gt_row: np.ndarray
    pred_col: np.ndarray
    row_pos: np.ndarray
    col_pos: np.ndarray
    unlisted_pred: int  # predicted pixels whose id is not listed (nor 0)
    pred_area: np.ndarray  # pixels of each listed prediction
    pred_void: np.ndarray  # ... of them on GT id 0


def _count_pairs(gt_ids: np.ndarray, gt_list: list, pred_ids: np.ndarray, pred_list: list
                 ) -> _Table:
    """Count the pixels of every (GT, prediction) pair with one bincount (see _pair_counts)."""
    gt_keys, gt_buckets = _bucket_keys(gt_list)
    pred_keys, pred_buckets = _bucket_keys(pred_list)
    n_rows = len(gt_list) + 2
    n_cols = len(pred_list) + 2
    rows, cols, counts = _pair_counts(
        gt_ids, gt_keys, gt_buckets, n_rows, pred_ids, pred_keys, pred_buckets, n_cols
    )
    gt_row, row_pos = _listed_buckets(gt_list, n_rows)
    pred_col, col_pos = _listed_buckets(pred_list, n_cols)
    col_area = np.bincount(cols, weights=counts, minlength=n_cols).astype(np.int64)
    void_col = np.zeros(n_cols, dtype=np.int64)
    on_void = rows == 1
    void_col[cols[on_void]] = counts[on_void]
    return _Table(rows, cols, counts, gt_row, pred_col, row_pos, col_pos,
                  unlisted_pred=int(col_area[0]), pred_area=col_area[pred_col],
                  pred_void=void_col[pred_col])


def _listed_buckets(seg_ids: Sequence[int], n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """The bucket of each listed segment, and the position of each bucket's listed segment."""
    bucket = np.asarray([1 if s == 0 else k + 2 for k, s in enumerate(seg_ids)], np.int64)
    pos = np.full(n_buckets, -1, dtype=np.int64)
    pos[bucket] = np.arange(len(seg_ids))
    return bucket, pos


@dataclass
class _Segments:
    """The listed segments of one image, in order, their categories as small codes (equal
    ids, by Python ==/hash as in panopticapi's dict lookups, share one), and the GT's crowd
    flags and JSON areas (NaN where missing)."""

    gt_list: list
    pred_list: list
    gt_cat: list[int]
    pred_cat: list[int]
    gt_crowd: list[bool]
    gt_area: list
    cat_of_code: dict


def _listed_segments(gt_segms: dict, pred_segms: dict, pred_ids: np.ndarray, categories: Any,
                     image_id: Any) -> _Segments:
    """Read the fields the matching needs, reporting bad ones as panopticapi would."""
    codes: dict = {}
    pred_cat = []
    for sid, seg in pred_segms.items():
        cat = _field(seg, "category_id", image_id, sid, "predicted")
        if _unknown_category(cat, categories):
            _raise_pred_errors(pred_ids, pred_segms, categories, image_id)
        pred_cat.append(codes.setdefault(cat, len(codes)))
    gt_cat = []
    gt_crowd = []
    gt_area = []
    for sid, seg in gt_segms.items():
        cat = _field(seg, "category_id", image_id, sid, "ground truth")
        try:
            gt_cat.append(codes.setdefault(cat, len(codes)))
        except TypeError:
            raise PanopticFormatError(
                f"In the image with ID {image_id} ground truth segment with ID {sid} has an "
                f"invalid category_id {cat!r}."
            ) from None
        gt_crowd.append(_field(seg, "iscrowd", image_id, sid, "ground truth") == 1)
        area = seg.get("area") if isinstance(seg, Mapping) else None
        gt_area.append(math.nan if area is None else area)
    cat_of_code = {code: cat for cat, code in codes.items()}
    return _Segments(list(gt_segms), list(pred_segms), gt_cat, pred_cat, gt_crowd, gt_area,
                     cat_of_code)


def _note_bad_areas(stats: PQStats, table: _Table, segs: _Segments, image_id: Any) -> None:
    """Note the GT segments whose JSON area is not their pixel count (the table has both)."""
    if not segs.gt_list:
        return
    row_area = np.bincount(table.rows, weights=table.counts,
                           minlength=len(table.row_pos)).astype(np.int64)
    for k, sid in enumerate(segs.gt_list):
        area = segs.gt_area[k]
        pixels = int(row_area[table.gt_row[k]])
        if area == area and area != pixels:  # NaN (no area) is reported where used
            stats.note_bad_area(image_id, sid, area, pixels)


def _candidate_pairs(table: _Table, segs: _Segments
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(GT position, prediction position, intersection) of every overlapping pair of a listed
    non-crowd GT segment and a listed prediction of the same category."""
    pi = table.col_pos[table.cols]
    gi = table.row_pos[table.rows]
    cand = (pi >= 0) & (gi >= 0)
    pi, gi, inter = pi[cand], gi[cand], table.counts[cand]
    gt_cat = np.asarray(segs.gt_cat, dtype=np.int64)
    pred_cat = np.asarray(segs.pred_cat, dtype=np.int64)
    keep = ~np.asarray(segs.gt_crowd, dtype=bool)[gi] & (gt_cat[gi] == pred_cat[pi])
    return gi[keep], pi[keep], inter[keep]


def _pair_iou(table: _Table, segs: _Segments, gi: np.ndarray, pi: np.ndarray,
              inter: np.ndarray, image_id: Any) -> np.ndarray:
    """panopticapi's IoU: the GT's JSON area, and a union without the prediction's void."""
    area_g = np.asarray(segs.gt_area, dtype=np.float64)[gi]
    if np.isnan(area_g).any():
        bad = segs.gt_list[int(gi[np.isnan(area_g)][0])]
        raise PanopticFormatError(
            f"In the image with ID {image_id} ground truth segment with ID {bad} has no 'area'."
        )
    union = (table.pred_area[pi] + area_g) - inter - table.pred_void[pi]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def _add_true_positives(stats: PQStats, table: _Table, segs: _Segments, image_id: Any
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Add every pair with IoU > 0.5; returns which GT and which predictions matched."""
    gt_matched = np.zeros(len(segs.gt_list), dtype=bool)
    pred_matched = np.zeros(len(segs.pred_list), dtype=bool)
    gi, pi, inter = _candidate_pairs(table, segs)
    if not inter.size:
        return gt_matched, pred_matched
    iou = _pair_iou(table, segs, gi, pi, inter, image_id)
    match = iou > 0.5
    gi_m, pi_m, iou_m = gi[match], pi[match], iou[match]
    # the reference visits pairs in (gt id, pred id) order; keep its summation order
    order = sorted(
        range(len(iou_m)),
        key=lambda k: (segs.gt_list[int(gi_m[k])], segs.pred_list[int(pi_m[k])]),
    )
    for k in order:
        stats.add(segs.cat_of_code[segs.gt_cat[int(gi_m[k])]], tp=1, iou=float(iou_m[k]))
    gt_matched[gi_m] = True
    pred_matched[pi_m] = True
    return gt_matched, pred_matched


def _add_false_negatives(stats: PQStats, table: _Table, segs: _Segments,
                         gt_matched: np.ndarray) -> dict:
    """Add the unmatched GT segments, except crowd ones; returns each category's crowd
    region (its last unmatched crowd segment's row), where its predictions may be ignored."""
    crowd_row: dict = {}
    for k in range(len(segs.gt_list)):
        if gt_matched[k]:
            continue
        if segs.gt_crowd[k]:
            crowd_row[segs.gt_cat[k]] = int(table.gt_row[k])
            continue
        stats.add(segs.cat_of_code[segs.gt_cat[k]], fn=1)
    return crowd_row


def _add_false_positives(stats: PQStats, table: _Table, segs: _Segments,
                         pred_matched: np.ndarray, crowd_row: dict) -> None:
    """Add the unmatched predictions, unless mostly on void or on their category's crowd."""
    ignored = table.pred_void.astype(np.float64)
    if crowd_row:
        crowd_sel = np.zeros(len(table.row_pos), dtype=bool)
        crowd_sel[list(crowd_row.values())] = True
        sel = crowd_sel[table.rows] & (table.col_pos[table.cols] >= 0)
        crowd_inter = {
            (r, c): n
            for r, c, n in zip(table.rows[sel].tolist(), table.cols[sel].tolist(),
                               table.counts[sel].tolist(), strict=True)
        }
        for j, cat in enumerate(segs.pred_cat):
            r = crowd_row.get(cat)
            if r is not None:
                ignored[j] = table.pred_void[j] + crowd_inter.get((r, int(table.pred_col[j])), 0)
    frac = ignored / table.pred_area
    for j in np.flatnonzero(~pred_matched & ~(frac > 0.5)).tolist():
        stats.add(segs.cat_of_code[segs.pred_cat[j]], fp=1)


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------


def _categories_dict(categories: CategoriesLike) -> dict:
    if isinstance(categories, Mapping):
        return dict(categories)
    return {c["id"]: c for c in categories}


def _pq_average(stats: PQStats, categories: dict, isthing: bool | None) -> tuple[dict, dict]:
    pq = sq = rq = 0.0
    n = 0
    per_class: dict = {}
    for cat, info in categories.items():
        if isthing is not None and (info["isthing"] == 1) != isthing:
            continue
        tp, fp, fn, iou = stats.get(cat)
        if tp + fp + fn == 0:
            per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        denom = tp + 0.5 * fp + 0.5 * fn
        pq_c = iou / denom
        sq_c = iou / tp if tp != 0 else 0.0
        rq_c = tp / denom
        per_class[cat] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
        pq += pq_c
        sq += sq_c
        rq += rq_c
    if n == 0:  # panopticapi divides by zero here; report an empty group as 0
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def summarize_pq(stats: PQStats, categories: CategoriesLike) -> dict:
    """PQ/SQ/RQ for All/Things/Stuff plus per_class, in panopticapi's result layout.

    ``categories`` is the ground truth's category list (or ``{id: category}``); a group with
    no category seen in GT or predictions gets 0.0 with ``n == 0``.
    """
    cats = _categories_dict(categories)
    results: dict = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = _pq_average(stats, cats, isthing)
        if name == "All":
            results["per_class"] = per_class
    return results


class ImpossiblePQError(PanopticFormatError):
    """PQ, SQ or RQ outside [0, 1]: the input contradicts itself (named in the message)."""


def _out_of_range(results: Mapping[str, Any], categories: dict) -> list[str]:
    bad = []
    tol = 1e-9
    for name in ("All", "Things", "Stuff"):
        for k in ("pq", "sq", "rq"):
            v = results[name][k]
            if not (-tol <= v <= 1 + tol):
                bad.append(f"{name} {k.upper()} = {100 * v:.1f}")
    for cat, r in results["per_class"].items():
        for k in ("pq", "sq", "rq"):
            if not (-tol <= r[k] <= 1 + tol):
                label = categories.get(cat, {}).get("name", cat)
                bad.append(f"{k.upper()} of '{label}' (id {cat}) = {100 * r[k]:.1f}")
    return bad


def check_pq_range(results: Mapping[str, Any], stats: PQStats, categories: CategoriesLike,
                   source: str = "the ground truth JSON") -> None:
    """Raise :class:`ImpossiblePQError` unless every PQ/SQ/RQ lies in [0, 1].

    Values above 1 come from GT segments whose JSON ``area`` is smaller than their pixel
    count (panopticapi, and we, put the JSON area in the IoU): the error lists them with
    image, segment id, JSON area and pixels, so the JSON can be fixed (or the dataset
    validated: ``DATALOADER.ON_BAD_AREA``).
    """
    cats = _categories_dict(categories)
    bad = _out_of_range(results, cats)
    if not bad:
        return
    shown = "; ".join(bad[:6]) + (f"; and {len(bad) - 6} more" if len(bad) > 6 else "")
    if stats.num_bad_areas:
        examples = ", ".join(
            f"image {img} segment {sid}: JSON area {area} but {pixels} pixels in the PNG"
            for img, sid, area, pixels in stats.bad_areas[:8])
        why = (f"{stats.num_bad_areas} ground truth segment(s) in {source} have a JSON 'area' "
               f"that is not their pixel count ({examples}"
               f"{', ...' if stats.num_bad_areas > 8 else ''}); fix the areas (panoptic_ext."
               "data.validate_datasets finds them all)")
    else:
        why = "no wrong JSON area was found; please report this input"
    raise ImpossiblePQError(f"Impossible panoptic quality: {shown} (must be within 0..100). "
                            f"{why}.")


def format_pq_table(results: Mapping[str, Any]) -> str:
    """The All/Things/Stuff summary in panopticapi's console layout."""
    lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"),
             "-" * (10 + 7 * 4)]
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append("{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
            name, 100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["n"]))
    return "\n".join(lines)


def format_summary_table(pq_res: Mapping[str, Any]) -> str:
    """All/Things/Stuff table in Detectron2's layout (what its evaluator logs)."""
    rows = [[name] + [100 * pq_res[name][k] for k in ("pq", "sq", "rq")] + [pq_res[name]["n"]]
            for name in ("All", "Things", "Stuff")]
    return tabulate(rows, headers=["", "PQ", "SQ", "RQ", "#categories"], tablefmt="pipe",
                    floatfmt=".3f", stralign="center", numalign="center")


def format_class_table(
    pq_res: Mapping[str, Any], categories: CategoriesLike, stats: PQStats | None = None
) -> str:
    """Per-category PQ/SQ/RQ (and TP/FP/FN when stats are given), best PQ first, as
    Detectron2 logs per-category AP: to see what drives PQ. Categories seen neither in the
    ground truth nor in predictions come last, marked "-" (they are not averaged)."""
    cats = _categories_dict(categories)
    headers = ["category", "id", "kind", "PQ", "SQ", "RQ"]
    if stats is not None:
        headers += ["TP", "FP", "FN"]
    seen_rows: list[list] = []
    unseen_rows: list[list] = []
    for cat, r in pq_res["per_class"].items():
        info = cats.get(cat, {})
        row = [str(info.get("name", cat)), cat, "thing" if info.get("isthing") == 1 else "stuff"]
        counts = stats.get(cat)[:3] if stats is not None else None
        if counts is not None and not any(counts):
            row += ["-", "-", "-", 0, 0, 0]
            unseen_rows.append(row)
            continue
        row += [100 * r[k] for k in ("pq", "sq", "rq")]
        if counts is not None:
            row += list(counts)
        seen_rows.append(row)
    seen_rows.sort(key=lambda row: (-row[3], row[0]))
    rows = seen_rows + unseen_rows
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".3f",
                    stralign="center", numalign="center")


# --------------------------------------------------------------------------------------
# File-based evaluation (drop-in for panopticapi.evaluation.pq_compute)
# --------------------------------------------------------------------------------------


def _file_image_stats(
    gt_ann: Mapping[str, Any], pred_ann: Mapping[str, Any], gt_folder: str, pred_folder: str,
    categories: Any,
) -> PQStats:
    image_id = gt_ann.get("image_id")
    gt = read_panoptic_png(os.path.join(gt_folder, gt_ann["file_name"]), image_id)
    pred = read_panoptic_png(os.path.join(pred_folder, pred_ann["file_name"]), image_id)
    return _image_pq_stats(
        gt, gt_ann.get("segments_info", []), pred, pred_ann.get("segments_info", []),
        categories, image_id,
    )


def _chunk_stats(args: tuple[list, str, str, Any]) -> PQStats:
    pairs, gt_folder, pred_folder, categories = args
    total = PQStats()
    for gt_ann, pred_ann in pairs:
        total.merge(_file_image_stats(gt_ann, pred_ann, gt_folder, pred_folder, categories))
    return total


def _worker_init() -> None:
    # Safe here: pool children start from a fresh interpreter (utils.pools), never from a
    # fork of a process whose OpenCV thread pool was already running.
    cv2.setNumThreads(1)  # one image per process already uses the core


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def compute_stats_from_files(
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    gt_folder: str,
    pred_folder: str,
    categories: Any,
    workers: int | None = None,
    chunk_size: int = 16,
) -> PQStats:
    """Accumulate stats over (gt_ann, pred_ann) pairs, decoding PNGs in a process pool.

    Small sets run in-process (see ``MIN_IMAGES_FOR_POOL``); pools never fork this process
    (:mod:`panoptic_ext.utils.pools`), so they are safe after OpenCV or torch used threads.
    Only small per-category stats come back from workers, so memory stays flat however
    many images there are.
    """
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if multiprocessing.current_process().daemon:  # daemonic processes cannot have children
        workers = 1
    pairs = list(pairs)
    cat_keys = {k: None for k in categories}  # workers only need membership
    total = PQStats()
    global _pool_started
    least = MIN_IMAGES_FOR_WARM_POOL if _pool_started else MIN_IMAGES_FOR_POOL
    if workers == 1 or len(pairs) < max(least, 2):
        for chunk in _chunks(pairs, chunk_size):
            total.merge(_chunk_stats((chunk, gt_folder, pred_folder, cat_keys)))
        return total
    # small chunks keep every worker busy until the end; only annotations go out
    chunk_size = max(1, min(chunk_size, math.ceil(len(pairs) / (workers * 4))))
    tasks = ((c, gt_folder, pred_folder, cat_keys) for c in _chunks(pairs, chunk_size))
    workers = min(workers, math.ceil(len(pairs) / chunk_size))
    _pool_started = True
    with safe_pool(workers, initializer=_worker_init, preload=(__name__,)) as pool:
        for stats in pool.imap(_chunk_stats, tasks):  # in order: reproducible float sums
            total.merge(stats)
    return total


# --------------------------------------------------------------------------------------
# Backends: hotcoco (Rust, several times faster on files) where it gives our numbers
# --------------------------------------------------------------------------------------

PQ_BACKENDS = ("auto", "hotcoco", "panoptic_ext")


def check_pq_backend(value: str, key: str = "TEST.PQ_BACKEND") -> str:
    """The backend name, or a ValueError naming ``key`` and the allowed values."""
    if value not in PQ_BACKENDS:
        raise ValueError(f"{key}={value!r}; expected one of {list(PQ_BACKENDS)}")
    return value


def hotcoco_available() -> bool:
    """Whether ``hotcoco`` (``pip install hotcoco``) can be imported."""
    try:
        import hotcoco.panoptic  # noqa: F401
    except ImportError:
        return False
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def hotcoco_unsupported(gt_json: Mapping[str, Any], pred_json: Mapping[str, Any]) -> str | None:
    """Why hotcoco could give other numbers or errors than ours on these JSONs, else None.

    hotcoco reproduces panopticapi's rules (JSON areas in the IoU, the last crowd segment of
    a category, void and unlisted ids, duplicate ids) on well-formed input; tests check that.
    What it reads differently, or rejects with less precise messages, is sent to our code:
    non-integer ids/areas, string image ids, a missing ``segments_info``, a GT segment
    without ``area``/``iscrowd`` (panopticapi raises, hotcoco assumes a value), categories
    without an integer ``isthing``, image ids listed twice.
    """
    seen_cats = set()
    for cat in gt_json["categories"]:
        if not isinstance(cat, Mapping) or not _is_int(cat.get("id")):
            return f"category {cat!r} has no integer id"
        if cat.get("isthing") not in (0, 1) or not _is_int(cat.get("isthing")):
            return f"category {cat['id']} has no 0/1 'isthing'"
        if cat["id"] in seen_cats:
            return f"category id {cat['id']} is listed twice"
        seen_cats.add(cat["id"])
    for which, data, gt in (("ground truth", gt_json, True), ("predicted", pred_json, False)):
        image_ids = set()
        for ann in data["annotations"]:
            if not isinstance(ann, Mapping) or "file_name" not in ann:
                return f"a {which} annotation has no file_name"
            if not isinstance(ann.get("segments_info"), list):
                return f"a {which} annotation has no segments_info list"
            image_id = ann.get("image_id")
            if not (_is_int(image_id) and image_id >= 0) or image_id in image_ids:
                return f"{which} image id {image_id!r} is not an integer >= 0, or listed twice"
            image_ids.add(image_id)
            for seg in ann["segments_info"]:
                if not isinstance(seg, Mapping):
                    return f"a {which} segment of image {image_id} is not an object"
                if not (_is_int(seg.get("id")) and 0 <= seg["id"] < OFFSET
                        and _is_int(seg.get("category_id"))):
                    return f"a {which} segment of image {image_id} has a non-integer id"
                if gt and not (_is_int(seg.get("area")) and seg["area"] >= 0
                               and seg.get("iscrowd") in (0, 1)):
                    return (f"ground truth segment {seg['id']} of image {image_id} has no "
                            "integer 'area' or 0/1 'iscrowd'")
    return None


def _hotcoco_stats(gt_json_file: str, pred_json_file: str, gt_folder: str, pred_folder: str
                   ) -> PQStats:
    """Per-category tp/fp/fn/iou from hotcoco (it raises ValueError on inputs it rejects)."""
    from hotcoco.panoptic import PanopticEval

    ev = PanopticEval(gt_json_file, pred_json_file, gt_folder=gt_folder,
                      pred_folder=pred_folder)
    if ev.provenance() != "parity_verified":
        raise ValueError("hotcoco: " + "; ".join(ev.reference_deviations()))
    ev.evaluate()
    stats = PQStats()
    for cat, r in ev.results()["per_class"].items():
        if r["tp"] or r["fp"] or r["fn"]:
            stats.add(cat, tp=int(r["tp"]), fp=int(r["fp"]), fn=int(r["fn"]),
                      iou=float(r["iou"]))
    return stats


def _resolve_backend(backend: str, gt_json: Mapping[str, Any], pred_json: Mapping[str, Any]
                     ) -> tuple[str, str | None]:
    """(backend to run, why not hotcoco) for ``backend`` = auto/hotcoco/panoptic_ext."""
    check_pq_backend(backend, "backend")
    if backend == "panoptic_ext":
        return "panoptic_ext", None
    if not hotcoco_available():
        if backend == "hotcoco":
            raise ImportError("PQ backend 'hotcoco' needs the hotcoco package (pip install "
                              "hotcoco), or use backend 'auto'/'panoptic_ext'")
        return "panoptic_ext", "hotcoco is not installed"
    why = hotcoco_unsupported(gt_json, pred_json)
    return ("panoptic_ext", why) if why else ("hotcoco", None)


def default_folder(json_file: str) -> str:
    """The PNG folder of a panoptic JSON: its path without the ``.json`` suffix (panopticapi
    removes every ``.json`` in the path, folder names included)."""
    return json_file[:-len(".json")] if json_file.endswith(".json") else json_file


def evaluate_files(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: str | None = None,
    pred_folder: str | None = None,
    workers: int | None = None,
    backend: str = "auto",
    check_range: bool = True,
    allow_outside: bool = False,
) -> tuple[dict, PQStats, dict]:
    """``pq_compute`` that also returns the accumulated stats and the GT categories.

    ``backend``: "auto" runs hotcoco when it is installed and the input is one it reads as
    panopticapi does (:func:`hotcoco_unsupported`), else ours; "hotcoco" requires it;
    "panoptic_ext" always runs ours. Input hotcoco rejects is re-run by ours, so errors are
    always ours (naming image and segment). ``workers`` applies to ours (hotcoco uses all
    cores). ``check_range`` raises :class:`ImpossiblePQError` (naming the GT segments whose
    JSON area is wrong) instead of returning a PQ, SQ or RQ outside [0, 1]. Unlike
    panopticapi, an image or segment id listed twice is an error (it would count twice, or
    hide the first), and so is a ``file_name`` leading out of its folder unless
    ``allow_outside``.
    """
    gt_json = load_panoptic_json(gt_json_file)
    pred_json = load_panoptic_json(pred_json_file, keys=("annotations",))
    if gt_folder is None:
        gt_folder = default_folder(gt_json_file)
    if pred_folder is None:
        pred_folder = default_folder(pred_json_file)
    if not os.path.isdir(gt_folder):
        raise FileNotFoundError(f"Folder {gt_folder} with ground truth segmentations doesn't exist")
    if not os.path.isdir(pred_folder):
        raise FileNotFoundError(f"Folder {pred_folder} with predicted segmentations doesn't exist")
    for data, path, folder in ((gt_json, gt_json_file, gt_folder),
                               (pred_json, pred_json_file, pred_folder)):
        check_unique_ids(data["annotations"], path)
        for ann in data["annotations"]:
            if isinstance(ann, Mapping) and isinstance(ann.get("file_name"), str):
                join_inside(folder, ann["file_name"], path, allow_outside)
    categories = {el["id"]: el for el in gt_json["categories"]}

    chosen, why = _resolve_backend(backend, gt_json, pred_json)
    if chosen == "hotcoco":
        try:
            stats = _hotcoco_stats(gt_json_file, pred_json_file, gt_folder, pred_folder)
        except ValueError as exc:  # what it rejects: ours names the image and segment
            why = f"hotcoco: {exc}"
        else:
            results = summarize_pq(stats, categories)
            if not (check_range and _out_of_range(results, categories)):
                return results, stats, categories
            why = "impossible numbers: finding the inputs behind them"
    if why and backend != "panoptic_ext":
        logger.info(f"PQ of {pred_json_file} computed by panoptic_ext ({why})")

    pred_by_image = {el["image_id"]: el for el in pred_json["annotations"]}
    pairs = []
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in pred_by_image:
            raise PanopticFormatError(f"no prediction for the image with id: {image_id}")
        pairs.append((gt_ann, pred_by_image[image_id]))

    stats = compute_stats_from_files(pairs, gt_folder, pred_folder, categories, workers)
    results = summarize_pq(stats, categories)
    if check_range:
        check_pq_range(results, stats, categories, gt_json_file)
    return results, stats, categories


def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: str | None = None,
    pred_folder: str | None = None,
    workers: int | None = None,
    verbose: bool = False,
    backend: str = "auto",
    check_range: bool = True,
    allow_outside: bool = False,
) -> dict:
    """Drop-in for ``panopticapi.evaluation.pq_compute``: same arguments, result and errors.

    Folders default to the json path without ``.json`` as in panopticapi. ``workers``
    (default: all CPUs) sets our decoding processes; ``backend`` is as in
    :func:`evaluate_files`, as are ``check_range`` (False: return impossible numbers as
    panopticapi does) and ``allow_outside``; ``verbose`` prints panopticapi's table.
    """
    start = time.perf_counter()
    results, _, _ = evaluate_files(gt_json_file, pred_json_file, gt_folder, pred_folder, workers,
                                   backend, check_range, allow_outside)
    if verbose:
        print(format_pq_table(results))
        print(f"Time elapsed: {time.perf_counter() - start:0.2f} seconds")
    return results
