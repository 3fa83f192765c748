"""Training data loader and pre-training checks that the trainer wires in.

* :func:`build_train_loader`: Detectron2's train loader with :class:`SafeDatasetMapper`
  (``DATALOADER.ON_BAD_SAMPLE``) and a skip counter;
* :class:`SkippedSamplesHook`: logs that counter as the ``data/skipped_samples`` metric;
* :func:`validate_cfg_datasets`: dataset-name check plus the validation pass
  (``DATALOADER.VALIDATE``), run once and agreed on by every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import (
    DatasetMapper,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import HookBase
from detectron2.utils import comm

from .mapper import INDEX_KEY, SafeDatasetMapper, SkipCountingLoader, check_on_bad_sample
from .validate import DatasetValidationError, ValidationReport, check_dataset_names
from .validate import validate_datasets as _validate_datasets

__all__ = ["SkippedSamplesHook", "build_train_loader", "validate_cfg_datasets"]

logger = logging.getLogger(__name__)


def _train_dicts(cfg: CfgNode) -> Any:
    """The same dicts Detectron2's config-driven loader would build."""
    return get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def build_train_loader(
    cfg: CfgNode,
    mapper: Callable[[dict], Any] | None = None,
    *,
    dataset: Any = None,
    sampler: Any = None,
) -> SkipCountingLoader:
    """``build_detection_train_loader(cfg, ...)`` whose mapper (default ``DatasetMapper(cfg,
    True)``) is wrapped per ``DATALOADER.ON_BAD_SAMPLE``; ``dataset``/``sampler`` as there.

    Each dict gets its index (so errors can name it); the returned loader counts skipped
    samples in ``num_skipped``.
    """
    mode = check_on_bad_sample(cfg.DATALOADER.ON_BAD_SAMPLE)
    if dataset is None:
        check_dataset_names(cfg, ("DATASETS.TRAIN",))
        dataset = _train_dicts(cfg)
    if isinstance(dataset, list):
        dataset = [{**d, INDEX_KEY: i} for i, d in enumerate(dataset)]
    limit = min(100, len(dataset)) if hasattr(dataset, "__len__") else 100
    if mapper is None:
        mapper = DatasetMapper(cfg, True)
    safe = SafeDatasetMapper(mapper, mode, max_consecutive_skips=limit)
    loader = build_detection_train_loader(cfg, dataset=dataset, mapper=safe, sampler=sampler)
    return SkipCountingLoader(loader)


class SkippedSamplesHook(HookBase):
    """Puts the number of skipped training samples into the event storage every iteration as
    ``data/skipped_samples`` (so it reaches metrics.json next to the losses).

    The loader defaults to the trainer's (``trainer._trainer.data_loader`` in a
    DefaultTrainer). With several ranks the value is the sum over ranks, refreshed every
    ``period`` iterations (one small all_gather; every rank runs this hook at the same step).
    """

    def __init__(self, loader: SkipCountingLoader | None = None, period: int = 20):
        self._loader = loader
        self._period = max(1, int(period))
        self._total = 0

    def before_train(self) -> None:
        if self._loader is None:
            inner = getattr(self.trainer, "_trainer", self.trainer)
            self._loader = getattr(inner, "data_loader", None)
        if not hasattr(self._loader, "num_skipped"):
            logger.warning("Train loader does not count skipped samples; not logging them")
            self._loader = None

    def after_step(self) -> None:
        if self._loader is None:
            return
        local = int(self._loader.num_skipped)
        if comm.get_world_size() == 1:
            self._total = local
        elif (self.trainer.iter + 1) % self._period == 0:
            self._total = sum(comm.all_gather(local))
        self.trainer.storage.put_scalar("data/skipped_samples", self._total, smoothing_hint=False)


def validate_cfg_datasets(cfg: CfgNode, progress: bool = True) -> ValidationReport | None:
    """Check DATASETS.TRAIN/TEST names; then, if DATALOADER.VALIDATE, validate their files.

    Only the main process reads the files (the others would race on the same cache); the
    outcome is shared so every rank raises the same error instead of hanging in a collective.
    """
    check_dataset_names(cfg)
    if not cfg.DATALOADER.VALIDATE:
        return None
    names = list(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))
    report: ValidationReport | None = None
    error: str | None = None
    failure: BaseException | None = None
    if comm.is_main_process():
        try:
            report = _validate_datasets(names, progress=progress)
        except Exception as exc:  # shared below, re-raised on every rank
            failure, error = exc, str(exc)
    if comm.get_world_size() > 1:
        error = comm.all_gather(error)[0]
    if failure is not None:
        raise failure
    if error is not None:
        raise DatasetValidationError(error)
    return report
