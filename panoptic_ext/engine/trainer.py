"""Training and evaluation wiring for tools/train_net.py (kept here so the tool stays thin)."""

import json
import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetMapper,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..data import SkippedSamplesHook, validate_cfg_datasets
from ..data import build_train_loader as build_safe_train_loader
from ..data.loader import ResumableTrainingSampler
from ..data.validate import check_dataset_names
from ..evaluation.build import MetricsJSONWriter, build_evaluator, build_panoptic_evaluators
from .checkpoint import AtomicCheckpointer, check_head_shapes, checkpoint_to_load
from .defaults import setup_cfg
from .hooks import GracefulStop, TrainingInterrupted
from .train_loop import PanopticTrainLoop, parse_dtype

# MetricsJSONWriter, build_panoptic_evaluators and setup_cfg are kept here for old imports.
__all__ = ["MetricsJSONWriter", "Trainer", "build_panoptic_evaluators", "evaluate_only",
           "setup_cfg", "train"]

logger = logging.getLogger(__name__)


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
        # This run's sampler (None for other samplers: then no exact data-order resume).
        sampler = getattr(data_loader, "sampler", None)
        self._sampler = sampler if isinstance(sampler, ResumableTrainingSampler) else None
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
        """Detectron2's loader, with a sampler whose position survives a resume.

        The sampler travels on the loader (``loader.sampler``), not on the class: Detectron2
        calls this again for PreciseBN, and that second loader must not take over the
        position the resume restores.
        """
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        mapper = DatasetMapper(cfg, True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return build_safe_train_loader(cfg, mapper, dataset=dataset)
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        sampler = ResumableTrainingSampler(len(dataset), seed=seed)
        loader = build_safe_train_loader(cfg, mapper, dataset=dataset, sampler=sampler)
        loader.sampler = sampler
        return loader

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
        if self._sampler is not None:
            ret["data_seed"] = self._sampler.seed
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self._sampler is not None and "data_seed" in state_dict:
            self._sampler.seed = state_dict["data_seed"]

    def resume_or_load(self, resume: bool = True) -> None:
        if comm.is_main_process():  # heads for other classes: say so by name (warning)
            path = checkpoint_to_load(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume)
            check_head_shapes(self.model, path, dataset=", ".join(self.cfg.DATASETS.TRAIN))
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0:
            if self._sampler is not None:
                self._sampler.skip = self.start_iter * (
                    self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
                )
            if comm.is_main_process():
                _truncate_metrics_log(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                                      self.start_iter)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        return build_evaluator(cfg, dataset_name, output_folder)


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


def evaluate_only(cfg: CfgNode, resume: bool = False):
    """``--eval-only``: the weights of ``MODEL.WEIGHTS`` (or the last checkpoint with
    ``resume``), refused when the heads do not fit the test set's categories."""
    check_dataset_names(cfg, ("DATASETS.TEST",))
    model = Trainer.build_model(cfg)
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    path = checkpoint_to_load(checkpointer, cfg.MODEL.WEIGHTS, resume)
    check_head_shapes(model, path, strict=True, dataset=", ".join(cfg.DATASETS.TEST))
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    return Trainer.test(cfg, model)


def train(cfg: CfgNode, resume: bool = False):
    """Train (continuing the last checkpoint with ``resume``); a SIGTERM/SIGINT stop is a
    normal end with a checkpoint, reported with how to continue."""
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    try:
        return trainer.train()
    except TrainingInterrupted as e:
        logger.warning(f"Training {e}; saved {e.checkpoint}. Rerun with --resume to continue.")
        return None
