"""Training and evaluation wiring for tools/train_net.py (kept here so the tool stays thin)."""

import json
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, default_setup, hooks
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..config import add_panoptic_config
from ..data import SkippedSamplesHook, validate_cfg_datasets
from ..data import build_train_loader as build_safe_train_loader
from ..data.custom import configure_panoptic_folders, prepare_cfg_folders
from ..data.samplers import ResumableTrainingSampler
from ..evaluation import PanopticEvaluator
from .checkpoint import AtomicCheckpointer, check_head_shapes, checkpoint_to_load
from .hooks import GracefulStop
from .train_loop import PanopticTrainLoop, parse_dtype

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
    # In-memory, exact PQ (same numbers as COCOPanopticEvaluator, no PNG round trip).
    return PanopticEvaluator(dataset_name, output_dir=output_folder)


def create_ddp_model(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """DDP wrapper that also works on CPU (gloo): Detectron2 always passes
    device_ids=[local_rank], which DDP rejects for a CPU module."""
    if comm.get_world_size() == 1:
        return model
    device_ids = [comm.get_local_rank()] if torch.device(device).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


class Trainer(DefaultTrainer):
    """DefaultTrainer that survives: atomic checkpoints, SIGTERM/SIGINT save-and-stop, exact
    resume of the data order, DDP on CPU, bf16 autocast on CPU, a loss check naming the bad
    term; plus panoptic evaluators writing metrics.json per dataset."""

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        validate_cfg_datasets(cfg)  # names registered; files present, decodable, consistent
        device_type = torch.device(cfg.MODEL.DEVICE).type
        autocast_dtype = None
        if cfg.SOLVER.AMP.ENABLED:
            autocast_dtype = parse_dtype(cfg.SOLVER.AMP.DTYPE, "SOLVER.AMP.DTYPE")
            if device_type == "cpu" and autocast_dtype != torch.bfloat16:
                raise ValueError("SOLVER.AMP.DTYPE must be bfloat16 on CPU (float16 needs CUDA)")

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, cfg.MODEL.DEVICE)
        self._trainer = PanopticTrainLoop(
            model, data_loader, optimizer, device_type=device_type, autocast_dtype=autocast_dtype
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Detectron2's loader, with a sampler whose position survives a resume."""
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        mapper = DatasetMapper(cfg, True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return build_safe_train_loader(cfg, mapper, dataset=dataset)
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        cls._sampler = ResumableTrainingSampler(len(dataset), seed=seed)
        return build_safe_train_loader(cfg, mapper, dataset=dataset, sampler=cls._sampler)

    def build_hooks(self):
        ret = super().build_hooks()
        for h in ret:
            if isinstance(h, hooks.PeriodicWriter):
                h._period = self.cfg.SOLVER.LOG_PERIOD
        # Write an iteration's log line before its checkpoint: a kill in between then replays
        # that iteration (its line is cut on resume) instead of leaving a gap in the log.
        writers = [h for h in ret if isinstance(h, hooks.PeriodicWriter)]
        ckpt = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicCheckpointer)),
                    None)
        if ckpt is not None:
            ret = [h for h in ret if not isinstance(h, hooks.PeriodicWriter)]
            ret[ckpt:ckpt] = writers
        ret.insert(0, GracefulStop(self.checkpointer))
        ret.insert(0, SkippedSamplesHook(period=self.cfg.SOLVER.LOG_PERIOD))
        return ret

    def state_dict(self) -> dict:
        ret = super().state_dict()
        sampler = getattr(self, "_sampler", None)
        if sampler is not None:
            ret["data_seed"] = sampler.seed
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        sampler = getattr(self, "_sampler", None)
        if sampler is not None and "data_seed" in state_dict:
            sampler.seed = state_dict["data_seed"]

    def resume_or_load(self, resume: bool = True) -> None:
        if comm.is_main_process():  # heads for other classes: say so by name (warning)
            path = checkpoint_to_load(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume)
            check_head_shapes(self.model, path, dataset=", ".join(self.cfg.DATASETS.TRAIN))
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0:
            sampler = getattr(self, "_sampler", None)
            if sampler is not None:
                sampler.skip = self.start_iter * (
                    self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
                )
            if comm.is_main_process():
                _truncate_metrics_log(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                                      self.start_iter)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators = build_panoptic_evaluators(cfg, dataset_name, output_folder)
        return MetricsJSONWriter(
            DatasetEvaluators(evaluators), os.path.join(output_folder, "metrics.json")
        )


def _truncate_metrics_log(path: str, start_iter: int) -> None:
    """Cut the log lines the interrupted run wrote after its last checkpoint, so the resumed run
    continues the log with neither a gap nor duplicated iterations.

    Truncates in place (one syscall) rather than replacing the file: Detectron2's JSONWriter
    already holds it open for appending.
    """
    if not os.path.isfile(path):
        return
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                it = json.loads(line).get("iteration", -1)
            except (json.JSONDecodeError, UnicodeDecodeError):  # a line cut by the kill
                break
            if it >= start_iter or not line.endswith(b"\n"):
                break
            offset += len(line)
    with open(path, "r+b") as f:
        f.truncate(offset)


def setup_cfg(args) -> CfgNode:
    """Config from --config-file and KEY VALUE overrides, with our keys; also default_setup."""
    cfg = get_cfg()
    add_panoptic_config(cfg)
    if args.config_file:
        if not os.path.isfile(args.config_file):
            raise FileNotFoundError(f"--config-file {args.config_file!r} does not exist")
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    # --dataset / DATASETS.PANOPTIC_FOLDERS: registered in every process (DDP workers too).
    eval_only = bool(getattr(args, "eval_only", False))
    notes = configure_panoptic_folders(
        cfg, getattr(args, "dataset", None) or (), args.opts or (), eval_only
    )
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup configures only detectron2's and fvcore's loggers; ours says what it changed.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="panoptic_ext")
    for note in notes:  # what the dataset changed; a command-line value that disagrees warns
        if "command line" in note:
            logger.warning(note)
        else:
            logger.info(note)
    prepare_cfg_folders(cfg, eval_only)
    return cfg


def evaluation_summary(results: dict[str, Any]) -> "OrderedDict[str, float]":
    """PQ/SQ/RQ (all, things, stuff) from a results dict, for one-line reports."""
    pan = results.get("panoptic_seg", {})
    keys = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]
    return OrderedDict((k, float(pan[k])) for k in keys if k in pan)
