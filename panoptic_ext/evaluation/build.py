"""The evaluator set of a dataset: PQ, box/mask AP and mIoU, whatever its metadata supports,
and their merged results written to ``metrics.json``."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from ..utils.io import atomic_write_json
from .cityscapes import cityscapes_evaluators
from .coco_ap import FastCOCOEvaluator, check_ap_backend
from .panoptic_evaluator import PanopticEvaluator
from .pq import check_pq_backend
from .sem_seg import FastSemSegEvaluator

__all__ = ["MetricsJSONWriter", "build_evaluator", "build_panoptic_evaluators",
           "evaluation_backends"]

logger = logging.getLogger(__name__)


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return obj


class MetricsJSONWriter(DatasetEvaluator):
    """Runs wrapped evaluators and writes their merged results to a JSON file (atomically, so
    a reader never sees half a file)."""

    def __init__(self, evaluator: DatasetEvaluator, path: str):
        self._evaluator = evaluator
        self._path = path

    def reset(self) -> None:
        self._evaluator.reset()

    def process(self, inputs, outputs) -> None:
        self._evaluator.process(inputs, outputs)

    def evaluate(self):
        results = self._evaluator.evaluate()
        if comm.is_main_process() and results is not None:
            os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
            atomic_write_json(self._path, _to_jsonable(results), indent=2)
            logger.info(f"Wrote evaluation results to {self._path}")
        return results


def evaluation_backends(cfg: CfgNode) -> tuple[str, str]:
    """(TEST.PQ_BACKEND, TEST.AP_BACKEND), checked: who scores PQ and box/mask AP."""
    return (check_pq_backend(cfg.TEST.get("PQ_BACKEND", "auto")),
            check_ap_backend(cfg.TEST.get("AP_BACKEND", "auto")))


def build_panoptic_evaluators(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> list[DatasetEvaluator]:
    """PQ (in memory, exact), box/mask AP and mIoU for a panoptic dataset; what applies for
    others. A dataset none applies to is an error naming its evaluator_type."""
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = getattr(meta, "evaluator_type", None)
    evaluators: list[DatasetEvaluator] = []
    pq_backend, ap_backend = evaluation_backends(cfg)
    if evaluator_type in ("coco_panoptic_seg", "sem_seg") and hasattr(meta, "sem_seg_root"):
        evaluators.append(FastSemSegEvaluator(dataset_name, distributed=True,
                                              output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg") and hasattr(meta, "json_file"):
        # Name the tasks: inferred from predictions, "segm" would vanish when a model predicts
        # nothing yet.
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        evaluators.append(FastCOCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder,
                                            backend=ap_backend))
    if evaluator_type == "coco_panoptic_seg":
        save = bool(cfg.TEST.get("SAVE_PREDICTIONS", False))  # TEST.SAVE_PREDICTIONS
        evaluators.append(PanopticEvaluator(dataset_name, output_dir=output_folder,
                                            save_panoptic=save, backend=pq_backend))
    if getattr(meta, "cityscapes_eval", False):  # Cityscapes' own instance AP and mIoU
        evaluators += cityscapes_evaluators(dataset_name, output_folder)
    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for dataset '{dataset_name}' (evaluator_type={evaluator_type!r}); "
            "register it with COCO panoptic, COCO or semantic-segmentation metadata"
        )
    return evaluators


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str | None = None
                    ) -> MetricsJSONWriter:
    """All evaluators of a dataset, writing ``<output_folder>/metrics.json`` (default
    ``OUTPUT_DIR/inference/<dataset>``)."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluators = build_panoptic_evaluators(cfg, dataset_name, output_folder)
    return MetricsJSONWriter(DatasetEvaluators(evaluators),
                             os.path.join(output_folder, "metrics.json"))
