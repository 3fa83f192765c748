"""Training and evaluation wiring for tools/train_net.py (kept here so the tool stays thin)."""

import json
import logging
import os
from collections import OrderedDict
from typing import Any

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils import comm

from ..config import add_panoptic_config
from .train_loop import AutocastTrainer, parse_dtype

__all__ = ["MetricsJSONWriter", "Trainer", "build_panoptic_evaluators", "setup_cfg"]

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
    """Runs wrapped evaluators and writes their merged results to a JSON file.

    Written atomically (temp file + rename) so a reader never sees half a file.
    """

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
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            tmp = self._path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(_to_jsonable(results), f, indent=2)
            os.replace(tmp, self._path)
            logger.info(f"Wrote evaluation results to {self._path}")
        return results


def build_panoptic_evaluators(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> list[DatasetEvaluator]:
    """PQ, box/mask AP and mIoU for a panoptic dataset; what applies for others."""
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = getattr(meta, "evaluator_type", None)
    evaluators: list[DatasetEvaluator] = []
    if evaluator_type in ("coco_panoptic_seg", "sem_seg") and hasattr(meta, "sem_seg_root"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg") and hasattr(meta, "json_file"):
        # Name the tasks: inferred from predictions, "segm" would vanish when a model predicts
        # nothing yet.
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        evaluators.append(COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder))
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(_panoptic_evaluator(dataset_name, output_folder))
    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for dataset '{dataset_name}' (evaluator_type={evaluator_type!r})"
        )
    return evaluators


def _panoptic_evaluator(dataset_name: str, output_folder: str | None) -> DatasetEvaluator:
    return COCOPanopticEvaluator(dataset_name, output_folder)


class Trainer(DefaultTrainer):
    """DefaultTrainer with panoptic evaluators, a metrics.json per evaluated dataset, and
    SOLVER.AMP on CPU (bf16 autocast) as well as on CUDA."""

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:
            dtype = parse_dtype(cfg.SOLVER.AMP.DTYPE, "SOLVER.AMP.DTYPE")
            device_type = torch.device(cfg.MODEL.DEVICE).type
            if device_type == "cpu" and dtype != torch.bfloat16:
                raise ValueError("SOLVER.AMP.DTYPE must be bfloat16 on CPU (float16 needs CUDA)")
            old = self._trainer
            if device_type == "cpu":
                self._trainer = AutocastTrainer(old.model, old.data_loader, old.optimizer,
                                                device_type="cpu", dtype=dtype)
            else:
                old.precision = dtype

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators = build_panoptic_evaluators(cfg, dataset_name, output_folder)
        return MetricsJSONWriter(
            DatasetEvaluators(evaluators), os.path.join(output_folder, "metrics.json")
        )


def setup_cfg(args) -> CfgNode:
    """Config from --config-file and KEY VALUE overrides, with our keys; also default_setup."""
    cfg = get_cfg()
    add_panoptic_config(cfg)
    if args.config_file:
        if not os.path.isfile(args.config_file):
            raise FileNotFoundError(f"--config-file {args.config_file!r} does not exist")
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def evaluation_summary(results: dict[str, Any]) -> "OrderedDict[str, float]":
    """PQ/SQ/RQ (all, things, stuff) from a results dict, for one-line reports."""
    pan = results.get("panoptic_seg", {})
    keys = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]
    return OrderedDict((k, float(pan[k])) for k in keys if k in pan)
