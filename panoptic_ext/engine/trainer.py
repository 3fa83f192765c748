"""Training and evaluation wiring for tools/train_net.py (kept here so the tool stays thin)."""

import contextlib
import json
import logging
import os
import random
import re
import weakref

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import SkippedSamplesHook, validate_cfg_datasets
from ..data import build_train_loader as build_safe_train_loader
from ..data.augment import PanopticDatasetMapper
from ..data.loader import ResumableTrainingSampler, train_dataset_dicts
from ..data.validate import check_dataset_names
from ..deploy.runtime import attach_runtime
from ..evaluation.build import build_evaluator
from ..modeling.loss_balancing import balancing_setting, check_resumed_balancing
from ..utils.io import TEMP_SUFFIX
from ..utils.locks import run_lock
from .checkpoint import AtomicCheckpointer, checkpoint_to_load
from .hooks import GracefulStop, LogWriter, TrainingInterrupted
from .schedule import check_schedule, resolve_epochs
from .train_loop import PanopticTrainLoop, autocast_dtype_for
from .weights import load_weights, trust_weights_file

__all__ = ["Trainer", "check_output_dir", "evaluate_only", "remove_leftovers", "train"]

logger = logging.getLogger(__name__)


def create_ddp_model(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """Detectron2's DDP wrapper, also on CPU (gloo): by default it passes
    device_ids=[local_rank], which DDP rejects for a CPU module."""
    device_ids = [comm.get_local_rank()] if torch.device(device).type == "cuda" else None
    return d2_create_ddp_model(model, device_ids=device_ids, broadcast_buffers=False)


class Trainer(DefaultTrainer):
    """DefaultTrainer that survives: atomic checkpoints, SIGTERM/SIGINT save-and-stop, exact
    resume of the data order, DDP on CPU, bf16 autocast on CPU, a loss check naming the bad
    term; plus panoptic evaluators writing metrics.json per dataset."""

    def __init__(self, cfg: CfgNode):
        # Not super().__init__(cfg): DefaultTrainer.__init__ wraps the model with Detectron2's
        # create_ddp_model, which always passes device_ids=[local_rank]; torch refuses
        # device_ids for a CPU module, so a multi-process CPU (gloo) run could not start, and
        # no hook replaces that call. So these are DefaultTrainer.__init__'s steps in its
        # order, each difference a named step: prepare_cfg, our create_ddp_model,
        # build_train_loop, build_checkpointer. test_init_follows_detectron2 fails when
        # Detectron2 changes its constructor, so such a change is ported here, not missed.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.prepare_cfg(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, cfg.MODEL.DEVICE)
        self._trainer = self.build_train_loop(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def prepare_cfg(cls, cfg: CfgNode) -> CfgNode:
        """The config this run trains with, checked before anything is built: epochs ->
        iterations (a no-op on setup()'s resolved config), then Detectron2's
        REFERENCE_WORLD_SIZE rescaling of those iterations; dataset names and files."""
        cfg = resolve_epochs(cfg)
        check_schedule(cfg)  # batch vs REFERENCE_WORLD_SIZE, warm-up vs training
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        validate_cfg_datasets(cfg)  # names registered; files present, decodable, consistent
        autocast_dtype_for(cfg)  # SOLVER.AMP on this device: refused before the model is built
        return cfg

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """Detectron2's model with TEST.RUNTIME attached, for the evaluations the trainer runs
        (periodic and --eval-only); training steps never call the dense runner."""
        return attach_runtime(super().build_model(cfg), cfg)

    @classmethod
    def build_train_loop(cls, cfg: CfgNode, model: torch.nn.Module, data_loader,
                         optimizer: torch.optim.Optimizer) -> PanopticTrainLoop:
        """The per-iteration step (Detectron2's SimpleTrainer/AMPTrainer in DefaultTrainer):
        autocast where SOLVER.AMP asks and the hardware has it (bf16 on CPU too), and a
        non-finite loss named before anything is applied."""
        return PanopticTrainLoop(model, data_loader, optimizer,
                                 device_type=torch.device(cfg.MODEL.DEVICE).type,
                                 autocast_dtype=autocast_dtype_for(cfg))

    def build_checkpointer(self, cfg: CfgNode, model: torch.nn.Module) -> AtomicCheckpointer:
        """Checkpoints written whole or not at all, read without running code from the file
        unless the config trusts it; the trainer's state goes with them, as in Detectron2."""
        return AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
                                  trust_file=trust_weights_file(cfg))

    @property
    def _sampler(self) -> ResumableTrainingSampler | None:
        """The training loader's sampler when it can resume the data order, else None."""
        sampler = getattr(self.data_loader, "sampler", None)
        return sampler if isinstance(sampler, ResumableTrainingSampler) else None

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Detectron2's loader, with a sampler whose position survives a resume.

        The sampler travels on the loader (``loader.sampler``), not on the class: Detectron2
        calls this again for PreciseBN, and that second loader must not take over the
        position the resume restores.
        """
        dataset = train_dataset_dicts(cfg)  # the dicts an epoch counts (engine/schedule.py)
        mapper = PanopticDatasetMapper(cfg, True)  # crops keep masks and boxes consistent
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return build_safe_train_loader(cfg, mapper, dataset=dataset)
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        sampler = ResumableTrainingSampler(len(dataset), seed=seed)
        loader = build_safe_train_loader(cfg, mapper, dataset=dataset, sampler=sampler)
        loader.sampler = sampler
        _own_generator(loader, seed + comm.get_rank())
        return loader

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        """Detectron2's scheduler, without LR decays at or after MAX_ITER (no effect, and
        fvcore refuses one at MAX_ITER, which rounding in epochs or REFERENCE_WORLD_SIZE
        rescaling can produce)."""
        late = [s for s in cfg.SOLVER.STEPS if s >= cfg.SOLVER.MAX_ITER]
        if late:
            logger.warning(f"SOLVER.STEPS {tuple(late)} are not before SOLVER.MAX_ITER "
                           f"{cfg.SOLVER.MAX_ITER}: those LR decays never happen, dropped")
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.STEPS = tuple(s for s in cfg.SOLVER.STEPS if s < cfg.SOLVER.MAX_ITER)
        return super().build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Detectron2's SGD and parameter groups, with two differences. Learned loss-balancing
        weights (a model's ``no_weight_decay_params()`` names) get no weight decay, which would
        pull every task weight towards 1 regardless of the losses. And torch's fused SGD kernel
        runs where the parameters' device has one: the same update bit for bit as Detectron2's
        foreach SGD, at a third of its time on a 2-core CPU (R-50 + FPN: 25 against 80-110 ms
        a step)."""
        names = getattr(getattr(model, "module", model), "no_weight_decay_params", list)()
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
            overrides={name: {"weight_decay": 0.0} for name in names})
        fused = {p.device.type for p in model.parameters()} <= {"cpu", "cuda"}
        return maybe_add_gradient_clipping(cfg, torch.optim.SGD(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            **({"fused": True} if fused else {"foreach": True})))

    def build_hooks(self):
        ret = super().build_hooks()
        ret = [LogWriter(h._writers, self.cfg.SOLVER.LOG_PERIOD)
               if isinstance(h, hooks.PeriodicWriter) else h for h in ret]
        # Evaluation, then the iteration's log line, then its checkpoint: the writer must come
        # after EvalHook (its PQ goes into that iteration's metrics.json row), and before the
        # checkpoint (a kill in between then replays the iteration, its line is cut on resume,
        # instead of leaving a gap in the log).
        moved = [h for h in ret if isinstance(h, hooks.PeriodicWriter | hooks.PeriodicCheckpointer)]
        moved.sort(key=lambda h: isinstance(h, hooks.PeriodicCheckpointer))
        ret = [h for h in ret if h not in moved]
        at = next((i + 1 for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)), len(ret))
        ret[at:at] = moved
        # Last: a signal's checkpoint then holds the state after the whole iteration (the LR
        # scheduler stepped, the log row written), as the uninterrupted run has it.
        ret.append(GracefulStop(self.checkpointer))
        ret.insert(0, SkippedSamplesHook(period=self.cfg.SOLVER.LOG_PERIOD))
        return ret

    def state_dict(self) -> dict:
        ret = super().state_dict()
        if self._sampler is not None:
            ret["data_seed"] = self._sampler.seed
        ret["rng"] = _rng_state()
        ret["loss_balancing"] = balancing_setting(self.cfg)
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        check_resumed_balancing(state_dict.get("loss_balancing"), balancing_setting(self.cfg),
                                f"the checkpoint in {self.cfg.OUTPUT_DIR}")
        super().load_state_dict(state_dict)
        if self._sampler is not None and "data_seed" in state_dict:
            self._sampler.seed = state_dict["data_seed"]
        # One process: continue its random streams (augmentation, proposal sampling), so the
        # resumed run draws what the uninterrupted one would (exact with NUM_WORKERS 0).
        if comm.get_world_size() == 1 and "rng" in state_dict:
            self._rng_to_restore = state_dict["rng"]

    def run_step(self) -> None:
        rng = getattr(self, "_rng_to_restore", None)
        if rng is not None:
            self._rng_to_restore = None
            _set_rng_state(rng)
        super().run_step()

    def resume_or_load(self, resume: bool = True) -> None:
        """Continue the last checkpoint (``resume`` and one exists), else start from
        MODEL.WEIGHTS through :func:`load_weights`: heads for other classes are re-initialised
        and logged as a partial load (fine-tuning), a file that does not fit at all is an
        error naming it."""
        if resume and self.checkpointer.has_checkpoint():
            super().resume_or_load(resume=True)
        else:
            load_weights(self.model, self.cfg.MODEL.WEIGHTS, purpose="training",
                         allow_partial=True, dataset=", ".join(self.cfg.DATASETS.TRAIN),
                         trust_file=trust_weights_file(self.cfg))
            self.start_iter = 0
        if comm.is_main_process():  # neither a gap nor a repeated iteration in the log
            _truncate_metrics_log(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                                  self.start_iter)
        if self.start_iter > 0 and self._sampler is not None:
            self._sampler.skip = self.start_iter * (
                self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            )

    def after_train(self) -> None:
        """After a failed checkpoint save the run stops with that error: no final evaluation,
        as if the weights had been saved."""
        if self.checkpointer.save_error is not None:
            self._hooks = [h for h in self._hooks if not isinstance(h, hooks.EvalHook)]
        super().after_train()

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        return build_evaluator(cfg, dataset_name, output_folder)


def _own_generator(loader, seed: int) -> None:
    """Give the torch DataLoader inside ``loader`` its own generator: starting an iterator
    then no longer draws from the global RNG (which a resume restores just before), and
    worker seeds still follow the data seed."""
    for _ in range(4):  # SkipCountingLoader -> AspectRatioGroupedDataset -> DataLoader
        if isinstance(loader, torch.utils.data.DataLoader):
            if loader.generator is None:
                loader.generator = torch.Generator().manual_seed(seed)
            return
        loader = getattr(loader, "loader", None) or getattr(loader, "dataset", None)


def _rng_state() -> dict:
    """This process's random states in types a weights-only ``torch.load`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                      float(gauss)]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


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
    ``resume``), refused when empty, unreadable, or not fitting the test set's model."""
    check_dataset_names(cfg, ("DATASETS.TEST",))
    model = Trainer.build_model(cfg)
    checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    path = checkpoint_to_load(checkpointer, cfg.MODEL.WEIGHTS, resume)
    load_weights(model, path, purpose="--eval-only", dataset=", ".join(cfg.DATASETS.TEST),
                 trust_file=trust_weights_file(cfg))
    return Trainer.test(cfg, model)


_CHECKPOINT_FILES = re.compile(r"^(model_.*\.pth|last_checkpoint)$")
# Temp files of atomic writes (".<name>.<random>.tmp") and of older versions ("x.pth.tmp.<pid>").
_LEFTOVERS = re.compile(r"^\..+\.[^.]+" + re.escape(TEMP_SUFFIX) + r"$|^.+\.pth\.tmp\.\d+$")


def remove_leftovers(folder: str) -> list[str]:
    """Delete temp files an interrupted save left in ``folder`` (a ``kill -9`` mid-write), so
    they do not pile up (a checkpoint's size each); returns their names, each logged. Call it
    only while holding the folder's run lock: a live run's temp files are not leftovers."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) and _LEFTOVERS.match(entry.name):
            size = entry.stat().st_size
            os.remove(entry.path)
            removed.append(entry.name)
            logger.warning(f"Removed {entry.path} ({size / 2**20:.1f} MiB), left by an "
                           "interrupted save")
    return removed


def check_output_dir(cfg: CfgNode, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run into a folder that holds another run's checkpoints (it would mix
    both runs' logs and replace model_final.pth), unless ``resume`` or ``overwrite``;
    ``overwrite`` deletes those checkpoints and metrics.json, logged."""
    folder = cfg.OUTPUT_DIR
    if resume:
        return
    found = sorted(f for f in os.listdir(folder) if _CHECKPOINT_FILES.match(f)
                   ) if os.path.isdir(folder) else []
    if found and not overwrite:
        shown = ", ".join(found[:4]) + (f", ... ({len(found)} files)" if len(found) > 4 else "")
        raise FileExistsError(
            f"OUTPUT_DIR {folder} already holds checkpoints of an earlier run ({shown}). Pass "
            "--resume to continue that run, --overwrite to delete them and start over, or "
            "set another OUTPUT_DIR"
        )
    if not overwrite:
        return
    comm.synchronize()  # every rank has looked before the main one deletes
    if comm.is_main_process() and found:
        for f in [*found, "metrics.json"]:
            if os.path.isfile(os.path.join(folder, f)):
                os.remove(os.path.join(folder, f))
        logger.warning(f"--overwrite: deleted {', '.join(found)} and metrics.json in {folder}")
    comm.synchronize()


def train(cfg: CfgNode, resume: bool = False, overwrite: bool = False):
    """Train (continuing the last checkpoint with ``resume``); one run per OUTPUT_DIR (a lock
    held while training; a folder with checkpoints needs ``resume`` or ``overwrite``). A
    SIGTERM/SIGINT stop is a normal end with a checkpoint, reported with how to continue."""
    check_output_dir(cfg, resume, overwrite)
    lock = run_lock(cfg.OUTPUT_DIR) if comm.is_main_process() else contextlib.nullcontext()
    with lock:
        if comm.is_main_process():
            remove_leftovers(cfg.OUTPUT_DIR)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=resume)
        try:
            return trainer.train()
        except TrainingInterrupted as e:
            logger.warning(f"Training {e}; saved {e.checkpoint}. Rerun with --resume to "
                           "continue.")
            return None
