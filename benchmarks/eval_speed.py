"""Evaluator-set speed: ours (PQ, box/mask AP, mIoU) against Detectron2's stock set on the
same predictions. The logic behind ``tools/benchmark_eval.py``.

The model runs once over the dataset; its outputs (on the CPU) are kept. Then each evaluator
set gets a fresh deep copy (Detectron2's panoptic evaluator edits outputs in place) and is
timed over ``reset`` + ``process`` of every batch + ``evaluate``, which is all an evaluator
costs a training run. After one untimed round (file caches, lazy imports), the sets alternate
``repeat`` times and the fastest run of each counts (the machine may be shared). Every number
Detectron2 reports must come out the same from ours.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from tqdm import tqdm

from panoptic_ext.deploy.runtime import build_inference_model
from panoptic_ext.engine.weights import load_weights, trust_weights_file
from panoptic_ext.evaluation import build_panoptic_evaluators

__all__ = ["compare_metrics", "detectron2_evaluators", "format_last_line", "run_eval_benchmark",
           "run_model"]

logger = logging.getLogger(__name__)


def run_model(cfg: CfgNode, dataset: str, progress: bool = True
              ) -> tuple[list[list[dict]], list[list[dict]]]:
    """(input batches without the image tensors, output batches on the CPU) of the model."""
    model = build_inference_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS, purpose="the evaluator benchmark",
                     dataset=dataset, trust_file=trust_weights_file(cfg))
    loader = build_detection_test_loader(cfg, dataset)
    inputs, outputs = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"{dataset}: inference", unit="batch",
                          disable=not progress):
            out = model(batch)
            inputs.append([{k: v for k, v in inp.items() if k != "image"} for inp in batch])
            outputs.append([_to_cpu(o) for o in out])
    return inputs, outputs


def _to_cpu(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_to_cpu(v) for v in value)
    return value.to("cpu") if hasattr(value, "to") else value


def detectron2_evaluators(cfg: CfgNode, dataset: str, output_dir: str) -> list[DatasetEvaluator]:
    """Detectron2's stock set for the dataset: what its metadata supports of
    COCOPanopticEvaluator, COCOEvaluator (pycocotools here: no COCOeval_opt) and
    SemSegEvaluator."""
    meta = MetadataCatalog.get(dataset)
    evaluator_type = getattr(meta, "evaluator_type", None)
    evaluators: list[DatasetEvaluator] = []
    if evaluator_type in ("coco_panoptic_seg", "sem_seg") and hasattr(meta, "sem_seg_root"):
        evaluators.append(SemSegEvaluator(dataset, distributed=True, output_dir=None))
    if evaluator_type in ("coco", "coco_panoptic_seg") and hasattr(meta, "json_file"):
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        evaluators.append(COCOEvaluator(dataset, tasks=tasks, output_dir=None))
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset, output_dir=output_dir))
    return evaluators


def _time_set(evaluator: DatasetEvaluator, inputs: Sequence[list], outputs: Sequence[list]
              ) -> tuple[float, dict]:
    copies = copy.deepcopy(list(outputs))  # not timed
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        evaluator.reset()
        for inp, out in zip(inputs, copies, strict=True):
            evaluator.process(inp, out)
        results = evaluator.evaluate()
    return time.perf_counter() - start, dict(results or {})


def compare_metrics(ours: Mapping[str, Any], ref: Mapping[str, Any], tol: float = 1e-6
                    ) -> list[str]:
    """Every metric of ``ref`` (Detectron2's) that ours lacks or gives otherwise (NaN = NaN)."""
    differ = []
    for task, metrics in ref.items():
        for key, value in metrics.items():
            got = ours.get(task, {}).get(key)
            if got is None:
                differ.append(f"{task}/{key} missing")
            elif not (math.isclose(got, value, abs_tol=tol)
                      or (math.isnan(got) and math.isnan(value))):
                differ.append(f"{task}/{key} {got:.6g} vs {value:.6g}")
    return differ


def format_last_line(t_ours: float, t_d2: float, differ: Sequence[str]) -> str:
    """``evaluator set: ours X.XXs Detectron2 Y.YYs ratio R.R same numbers`` (or differ: ...)."""
    verdict = "same numbers" if not differ else "differ: " + "; ".join(differ[:8]) + (
        f"; and {len(differ) - 8} more" if len(differ) > 8 else "")
    return (f"evaluator set: ours {t_ours:.2f}s Detectron2 {t_d2:.2f}s "
            f"ratio {t_d2 / max(t_ours, 1e-9):.1f} {verdict}")


def run_eval_benchmark(cfg: CfgNode, dataset: str | None = None, repeat: int = 1,
                       progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the model once, time both evaluator sets on its outputs, compare their numbers."""
    dataset = dataset or cfg.DATASETS.TEST[0]
    start = time.perf_counter()
    inputs, outputs = run_model(cfg, dataset, progress)
    n = sum(len(b) for b in inputs)
    log(f"{dataset}: {n} images, inference {time.perf_counter() - start:.1f} s (not timed)")
    t_ours, t_d2 = [], []
    with tempfile.TemporaryDirectory(prefix="eval_bench_") as tmp:
        for run in range(max(1, repeat) + 1):  # run 0 warms files and caches: not counted
            ours = DatasetEvaluators(build_panoptic_evaluators(cfg, dataset, None))
            t, res_ours = _time_set(ours, inputs, outputs)
            t_ours += [t] if run else []
            d2 = DatasetEvaluators(detectron2_evaluators(cfg, dataset, tmp))
            t, res_d2 = _time_set(d2, inputs, outputs)
            t_d2 += [t] if run else []
    differ = compare_metrics(res_ours, res_d2)
    report = {"dataset": dataset, "images": n, "ours_s": min(t_ours), "detectron2_s": min(t_d2),
              "ours_runs_s": t_ours, "detectron2_runs_s": t_d2,
              "ratio": min(t_d2) / max(min(t_ours), 1e-9), "differ": differ,
              "metrics": {task: dict(m) for task, m in res_d2.items()}}
    for task, metrics in res_d2.items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in list(metrics.items())[:4])
        log(f"{task}: {shown}")
    log(format_last_line(report["ours_s"], report["detectron2_s"], differ))
    return report
