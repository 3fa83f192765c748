"""Search the panoptic merge thresholds for the best PQ of a trained model on a dataset.

The merge runs after the network and is cheap, so the network runs once per image and every
threshold setting of the grid is merged and scored on that image's outputs right away; only
the per-setting PQ statistics are kept (no image outlives its step, so memory does not grow
with the dataset). The outputs are the model's own post-processing up to the merge
(``PanopticFPNExt.inference_for_combine``), and each setting is merged by the model's own
strategy with the setting's thresholds (``PanopticFPNExt.run_combine``), so the default setting's
panoptic result is inference's. PQ comes from ``image_pq_stats`` against the dataset's ground
truth panoptic PNGs, with category ids converted as ``PanopticEvaluator`` does, so the default
setting's PQ is the evaluator's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from tabulate import tabulate
from tqdm import tqdm

from ..deploy.runtime import build_inference_model
from ..engine.defaults import panoptic_metadata
from ..engine.weights import load_weights, trust_weights_file
from ..evaluation import (
    PanopticGroundTruth,
    PQStats,
    image_pq_stats,
    summarize_pq,
)
from ..modeling import CombineInputs, PanopticFPNExt

__all__ = [
    "CombineSetting",
    "PanopticGroundTruth",
    "SettingResult",
    "TuneResult",
    "build_grid",
    "format_results",
    "search_combine",
    "tune_combine",
    "write_tuned_yaml",
]

logger = logging.getLogger(__name__)

_DEFAULT_OVERLAPS = (0.3, 0.4, 0.5, 0.6, 0.7)
_DEFAULT_SCORES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
_DEFAULT_AREA_FACTORS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # multiples of the configured limit


@dataclass(frozen=True)
class CombineSetting:
    """One point of the grid, named after its MODEL.PANOPTIC_FPN.COMBINE key."""

    overlap_thresh: float  # OVERLAP_THRESH
    stuff_area_thresh: float  # STUFF_AREA_LIMIT
    score_thresh: float  # INSTANCES_CONFIDENCE_THRESH

    def as_config(self) -> dict[str, Any]:
        return {
            "OVERLAP_THRESH": self.overlap_thresh,
            "STUFF_AREA_LIMIT": self.stuff_area_thresh,
            "INSTANCES_CONFIDENCE_THRESH": self.score_thresh,
        }

    def as_kwargs(self) -> dict[str, float]:
        """The thresholds as `HeuristicCombine.with_thresholds` takes them."""
        return {"overlap_thresh": self.overlap_thresh, "stuff_area_thresh": self.stuff_area_thresh,
                "score_thresh": self.score_thresh}

    def __str__(self) -> str:
        return (f"OVERLAP_THRESH={self.overlap_thresh:g} STUFF_AREA_LIMIT="
                f"{self.stuff_area_thresh:g} INSTANCES_CONFIDENCE_THRESH={self.score_thresh:g}")


@dataclass
class SettingResult:
    """PQ (in %) of one setting over the dataset."""

    setting: CombineSetting
    pq: float
    pq_th: float
    pq_st: float
    sq: float
    rq: float
    is_default: bool = False


@dataclass
class TuneResult:
    """All settings tried, best first (the default wins ties), and what they were tried on."""

    dataset: str
    num_images: int
    results: list[SettingResult] = field(default_factory=list)

    @property
    def best(self) -> SettingResult:
        return self.results[0]

    @property
    def default(self) -> SettingResult:
        return next(r for r in self.results if r.is_default)

    @property
    def gain(self) -> float:
        return self.best.pq - self.default.pq

    def edges(self) -> list[str]:
        """Config keys whose best value is the smallest or largest searched (besides a bound
        of the key's range): the optimum may lie outside the grid."""
        out = []
        for key in ("OVERLAP_THRESH", "STUFF_AREA_LIMIT", "INSTANCES_CONFIDENCE_THRESH"):
            values = sorted({r.setting.as_config()[key] for r in self.results})
            best = self.best.setting.as_config()[key]
            lowest_possible = best == 0
            highest_possible = best == 1 and key != "STUFF_AREA_LIMIT"
            if len(values) > 1 and ((best == values[0] and not lowest_possible)
                                    or (best == values[-1] and not highest_possible)):
                out.append(key)
        return out


def _unique_sorted(values: Iterable[float]) -> list:
    return sorted(set(values))


def build_grid(
    default: CombineSetting,
    overlaps: Sequence[float] | None = None,
    stuff_areas: Sequence[float] | None = None,
    scores: Sequence[float] | None = None,
) -> list[CombineSetting]:
    """The product of the three axes, each with the default's value added, so the best PQ
    found can never be below the default's. Stuff areas default to multiples of the
    configured limit and keep its type (an int limit stays int, as the config needs)."""
    area_type = type(default.stuff_area_thresh)
    if stuff_areas is None:
        stuff_areas = [default.stuff_area_thresh * f for f in _DEFAULT_AREA_FACTORS]
    areas = []
    for a in stuff_areas:
        if a < 0:
            raise ValueError(f"stuff area limits must be >= 0, got {a}")
        if area_type is int:
            a = round(a)
        areas.append(area_type(a))
    for name, values in (("overlap", overlaps), ("score", scores)):
        bad = [v for v in values or () if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"{name} thresholds must be in [0, 1], got {bad}")
    ov = _unique_sorted([*(overlaps if overlaps is not None else _DEFAULT_OVERLAPS),
                         default.overlap_thresh])
    ar = _unique_sorted([*areas, default.stuff_area_thresh])
    sc = _unique_sorted([*(scores if scores is not None else _DEFAULT_SCORES),
                         default.score_thresh])
    return [CombineSetting(float(o), a, float(s)) for o in ov for a in ar for s in sc]


# ---- the search --------------------------------------------------------------------------


def _raw_outputs(
    model: PanopticFPNExt, loader: Iterable, mask_score_thresh: float
) -> Iterator[tuple[Mapping[str, Any], CombineInputs]]:
    """Run the network once per image; yield each input with what the model's merge reads
    (masks pasted for instances scoring at least `mask_score_thresh`)."""
    for inputs in loader:
        with torch.no_grad():
            combine_inputs = model.inference_for_combine(inputs,
                                                       mask_score_thresh=mask_score_thresh)
        yield from zip(inputs, combine_inputs, strict=True)


def search_combine(
    raw: Iterable[tuple[Mapping[str, Any], CombineInputs]],
    gt: PanopticGroundTruth,
    grid: Sequence[CombineSetting],
    default: CombineSetting,
    model: PanopticFPNExt,
) -> tuple[list[SettingResult], int]:
    """Merge (`model.run_combine` by its strategy with each setting's thresholds) and score every
    setting on every image; returns (results best first, images).

    Settings that keep the same instances (no score between their thresholds) give the same
    merge, so each image computes each distinct (kept count, overlap, area) once.
    """
    combines = {s: model.combine.with_thresholds(**s.as_kwargs()) for s in grid}
    stats = {s: PQStats() for s in grid}
    num_images = 0
    for inp, r in raw:
        image_id, gt_ids, gt_segments = gt.load(inp)
        sorted_scores = torch.sort(r.instances.scores, descending=True).values
        cache: dict[tuple, PQStats] = {}
        for s in grid:
            kept = int((sorted_scores >= s.score_thresh).sum())
            key = (kept, s.overlap_thresh, s.stuff_area_thresh)
            if key not in cache:
                pan, segments = model.run_combine(r, combines[s])
                # STUFF_AREA_LIMIT 0 keeps stuff labels whose pixels all went to things: such
                # zero-area segments are not in the map, so they are not predictions.
                segments = gt.to_dataset_categories(
                    [seg for seg in segments if seg.get("area", 1) > 0], image_id)
                cache[key] = image_pq_stats(gt_ids, gt_segments, pan.cpu().numpy(), segments,
                                            gt.categories, image_id)
            stats[s].merge(cache[key])
        num_images += 1
    results = []
    for s in grid:
        res = summarize_pq(stats[s], gt.categories)
        results.append(SettingResult(
            setting=s,
            pq=100 * res["All"]["pq"],
            pq_th=100 * res["Things"]["pq"],
            pq_st=100 * res["Stuff"]["pq"],
            sq=100 * res["All"]["sq"],
            rq=100 * res["All"]["rq"],
            is_default=s == default,
        ))
    results.sort(key=lambda x: (-x.pq, _distance(x.setting, default)))
    return results, num_images


def _distance(s: CombineSetting, default: CombineSetting) -> tuple[int, float]:
    """Tie-break among equal PQ: the default first, then the settings closest to it."""
    changed = ((s.overlap_thresh != default.overlap_thresh)
               + (s.stuff_area_thresh != default.stuff_area_thresh)
               + (s.score_thresh != default.score_thresh))
    rel = (abs(s.overlap_thresh - default.overlap_thresh)
           + abs(s.score_thresh - default.score_thresh)
           + abs(s.stuff_area_thresh - default.stuff_area_thresh)
           / max(default.stuff_area_thresh, 1))
    return changed, rel


def _limited(loader: Iterable, max_images: int | None) -> Iterator:
    seen = 0
    for batch in loader:
        if max_images is not None and seen >= max_images:
            return
        yield batch
        seen += len(batch)


def tune_combine(
    cfg: CfgNode,
    dataset: str | None = None,
    overlaps: Sequence[float] | None = None,
    stuff_areas: Sequence[float] | None = None,
    scores: Sequence[float] | None = None,
    max_images: int | None = None,
    progress: bool = True,
) -> TuneResult:
    """Build the model of `cfg` (weights MODEL.WEIGHTS), run it once over `dataset` (default
    DATASETS.TEST[0]) and search the merge thresholds; see `build_grid` for the grid."""
    # Registered, with categories (an error naming DATASETS.TEST / --dataset otherwise).
    dataset = panoptic_metadata(cfg, dataset, key="--dataset" if dataset else "DATASETS.TEST"
                                ).name
    model = build_inference_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS, purpose="tuning", dataset=dataset,
                 trust_file=trust_weights_file(cfg))
    combine = model.combine
    needed = ("overlap_thresh", "stuff_area_thresh", "score_thresh", "with_thresholds")
    if not all(hasattr(combine, a) for a in needed):
        raise TypeError(f"tuning needs the heuristic merge (HeuristicCombine), not "
                        f"{type(combine).__name__}")
    default = CombineSetting(combine.overlap_thresh, combine.stuff_area_thresh,
                             combine.score_thresh)
    c = cfg.MODEL.PANOPTIC_FPN.COMBINE
    default = CombineSetting(  # in the config's own types, for a YAML that merges back
        type(c.OVERLAP_THRESH)(default.overlap_thresh),
        type(c.STUFF_AREA_LIMIT)(default.stuff_area_thresh),
        type(c.INSTANCES_CONFIDENCE_THRESH)(default.score_thresh),
    )
    grid = build_grid(default, overlaps, stuff_areas, scores)
    gt = PanopticGroundTruth(dataset, purpose="tuning")
    loader = build_detection_test_loader(cfg, dataset)
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    if max_images is not None and total is not None:
        total = min(total, max_images)
    logger.info(f"Tuning the merge on {dataset}: {len(grid)} settings per image")
    # masks for every instance some setting of the grid merges
    raw = _raw_outputs(model, _limited(loader, max_images), min(s.score_thresh for s in grid))
    raw = tqdm(raw, total=total, desc="tune_combine", unit="img", disable=not progress)
    results, n = search_combine(raw, gt, grid, default, model)
    return TuneResult(dataset=dataset, num_images=n, results=results)


def format_results(result: TuneResult, top: int | None = None) -> str:
    """Table of the settings tried, best PQ first (tabulate)."""
    rows = []
    for rank, r in enumerate(result.results[:top] if top else result.results, 1):
        s = r.setting
        rows.append([rank, s.overlap_thresh, s.stuff_area_thresh, s.score_thresh, r.pq, r.pq_th,
                     r.pq_st, r.sq, r.rq, "default" if r.is_default else ""])
    headers = ["#", "OVERLAP_THRESH", "STUFF_AREA_LIMIT", "INSTANCES_CONF_THRESH", "PQ", "PQ_th",
               "PQ_st", "SQ", "RQ", ""]
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".3f")


def _yaml_number(value: float) -> float | int:
    return value.item() if isinstance(value, np.generic) else value


def write_tuned_yaml(path: str, result: TuneResult) -> None:
    """The best setting as a config fragment for `cfg.merge_from_file`."""
    best, default = result.best, result.default
    body = {"MODEL": {"PANOPTIC_FPN": {"COMBINE": {
        k: _yaml_number(v) for k, v in best.setting.as_config().items()}}}}
    header = (
        f"# Panoptic merge thresholds tuned by tools/tune_combine.py on {result.dataset} "
        f"({result.num_images} images).\n"
        f"# PQ {best.pq:.3f} (default {default.pq:.3f}: {default.setting}; gain "
        f"{result.gain:+.3f}). Merge after the model's config: cfg.merge_from_file(this).\n"
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(header)
        yaml.safe_dump(body, f, default_flow_style=False, sort_keys=True)
