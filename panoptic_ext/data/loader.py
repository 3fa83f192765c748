"""The training data loader and its guards against bad data, which the trainer wires in.

* :class:`SafeDatasetMapper` wraps the mapper for samples that fail to load
  (``DATALOADER.ON_BAD_SAMPLE``), :class:`SkipCountingLoader` counts the skipped ones and
  :class:`SkippedSamplesHook` logs that count as the ``data/skipped_samples`` metric;
* :class:`ResumableTrainingSampler` continues a shuffled stream where an interrupted run stopped;
* :func:`build_train_loader` is Detectron2's train loader with all of the above;
* :func:`validate_cfg_datasets`: dataset-name check plus the validation pass
  (``DATALOADER.VALIDATE``), run once and agreed on by every rank.

Skipping. Detectron2's mapper raises from inside a data-loader worker with a message that rarely
names the file ("image file is truncated"). :class:`SafeDatasetMapper` either re-raises naming
the file and the dataset dict index (``error``), or logs the file and returns None (``skip``);
Detectron2's ``MapDataset`` then maps another random index instead.

Skipped samples are counted where they happen, which is a loader worker process. To reach
the main process without shared memory (which does not survive the pickling Detectron2 does
for spawned workers), the count rides along with data: the next good sample produced by the
same mapper copy carries it in ``sample[SKIPPED_KEY]``. :class:`SkipCountingLoader` pops that
field from every batch and sums it into ``num_skipped``. ``MapDataset`` retries right away in
the same worker, so the count arrives with the batch that replaced the bad sample.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import (
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

from .augment import PanopticDatasetMapper
from .validate import (
    DatasetValidationError,
    ValidationReport,
    check_dataset_names,
    check_on_bad_area,
    inspect_file,
)
from .validate import validate_datasets as _validate_datasets

__all__ = [
    "INDEX_KEY",
    "ON_BAD_SAMPLE_CHOICES",
    "SKIPPED_KEY",
    "BadSampleError",
    "ResumableTrainingSampler",
    "SafeDatasetMapper",
    "SkipCountingLoader",
    "SkippedSamplesHook",
    "build_train_loader",
    "check_on_bad_sample",
    "find_bad_file",
    "validate_cfg_datasets",
]

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------- mapper

ON_BAD_SAMPLE_CHOICES = ("error", "skip")
INDEX_KEY = "_dataset_index"  # set on dataset dicts by build_train_loader, popped by the mapper
SKIPPED_KEY = "_skipped"  # on a mapped sample: how many samples this worker skipped before it

# Dataset dict key -> (name used in messages, inspect_file kind), in the order files are read.
_FILE_KEYS = (
    ("file_name", "image", "image"),
    ("sem_seg_file_name", "sem_seg", "sem_seg"),
    ("pan_seg_file_name", "panoptic", "panoptic"),
)


class BadSampleError(RuntimeError):
    """A dataset sample failed to load; the message names the file and the dict index."""


def check_on_bad_sample(value: str, key: str = "DATALOADER.ON_BAD_SAMPLE") -> str:
    """Validate the config value up front, so a typo fails at start-up, not at the first bad
    sample hours later."""
    if value not in ON_BAD_SAMPLE_CHOICES:
        raise ValueError(f"{key}={value!r}; expected one of {list(ON_BAD_SAMPLE_CHOICES)}")
    return value


def _files(dataset_dict: Any) -> list[tuple[str, str, str]]:
    if not isinstance(dataset_dict, dict):
        return []
    return [
        (role, kind, str(dataset_dict[key]))
        for key, role, kind in _FILE_KEYS
        if isinstance(dataset_dict.get(key), str | os.PathLike)
    ]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def find_bad_file(
    files: list[tuple[str, str, str]], exc: BaseException
) -> tuple[str, str] | None:
    """Which of a sample's ``(role, kind, path)`` files caused ``exc``: (role, path) or None.

    Uses the exception's filename or message when they name a file; otherwise re-reads each
    file the way the validator does (only on the failure path, so it costs nothing normally).
    """
    for e in _chain(exc):
        names = {getattr(e, "filename", None), getattr(e, "filename2", None)}
        for role, _, path in files:
            if any(n is not None and os.path.abspath(str(n)) == os.path.abspath(path)
                   for n in names):
                return role, path
    text = " ".join(str(e) for e in _chain(exc))
    for role, _, path in files:
        if path in text:
            return role, path
    for role, kind, path in files:
        if "error" in inspect_file(kind, path):
            return role, path
    return None


class SafeDatasetMapper:
    """Wraps any mapper callable; see the module docstring for ``on_bad_sample`` and counting.

    ``max_consecutive_skips`` stops a run whose data is broken wholesale (wrong root, every
    file unreadable) instead of skipping forever.
    """

    def __init__(
        self,
        mapper: Callable[[dict], Any],
        on_bad_sample: str = "error",
        max_consecutive_skips: int = 100,
    ):
        self.mapper = mapper
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.max_consecutive_skips = max(1, int(max_consecutive_skips))
        self.num_skipped = 0  # in this process only; see SkipCountingLoader for the total
        self._pending = 0  # skipped, not yet reported with a good sample
        self._consecutive = 0

    def __call__(self, dataset_dict: dict) -> Any:
        index = None
        if isinstance(dataset_dict, dict) and INDEX_KEY in dataset_dict:
            dataset_dict = dict(dataset_dict)  # never mutate the dataset's own dict
            index = dataset_dict.pop(INDEX_KEY)
        files = _files(dataset_dict)  # before mapping: mappers pop these keys
        try:
            out = self.mapper(dataset_dict)
        except Exception as exc:
            return self._failed(files, index, exc)
        self._consecutive = 0
        if self._pending and isinstance(out, dict):
            out[SKIPPED_KEY] = self._pending
            self._pending = 0
        return out

    def _failed(self, files: list[tuple[str, str, str]], index: Any, exc: Exception) -> None:
        where = f"dataset dict #{index}" if index is not None else "a dataset dict"
        bad = find_bad_file(files, exc)
        if bad is not None:
            what = f"{bad[0]} file {bad[1]} ({where})"
        else:
            listed = ", ".join(f"{role} {path}" for role, _, path in files) or "no files"
            what = f"{where} ({listed})"
        reason = f"{type(exc).__name__}: {exc}"
        if self.on_bad_sample == "error":
            raise BadSampleError(
                f"Failed to load {what}: {reason}. Fix or remove it (validate_datasets lists "
                "every bad file), or set DATALOADER.ON_BAD_SAMPLE skip to skip such samples."
            ) from exc
        self.num_skipped += 1
        self._pending += 1
        self._consecutive += 1
        logger.warning("Skipping %s: %s", what, reason)
        if self._consecutive >= self.max_consecutive_skips:
            raise BadSampleError(
                f"{self._consecutive} samples in a row failed to load, the last being {what}: "
                f"{reason}. The dataset looks broken as a whole; run validate_datasets on it."
            ) from exc
        return None


class SkipCountingLoader:
    """Iterates a training loader, moving the per-sample skip counts into ``num_skipped``.

    Other attributes are forwarded to the wrapped loader.
    """

    def __init__(self, loader: Any):
        self.loader = loader
        self.num_skipped = 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            samples = batch if isinstance(batch, list | tuple) else [batch]
            for sample in samples:
                if isinstance(sample, dict):
                    self.num_skipped += int(sample.pop(SKIPPED_KEY, 0))
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

# ------------------------------------------------------------------------------------ sampler


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's infinite shuffled sampler, plus `skip`: the number of this rank's indices
    already consumed. Set it (with the same seed) before the loader is first iterated, and a
    resumed run sees exactly the samples the interrupted one would have seen next."""

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.skip = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    def __iter__(self) -> Iterator[int]:
        start = self._rank + self.skip * self._world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)

# ----------------------------------------------------------------------- loader, hook, checks


def train_dataset_dicts(cfg: CfgNode) -> Any:
    """The same dicts Detectron2's config-driven loader would build; a training set without
    any segment, or with no image left after filtering, is an error naming DATASETS.TRAIN
    (Detectron2 only asserts "No valid data found", or trains on nothing)."""
    names = tuple(cfg.DATASETS.TRAIN)
    dicts = get_detection_dataset_dicts(
        names,
        filter_empty=False,  # below, so an empty result gets our message
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    if not isinstance(dicts, list):  # an iterable dataset: nothing to check up front
        return dicts
    if not any(d.get("annotations") or d.get("segments_info") for d in dicts):
        raise ValueError(
            f"DATASETS.TRAIN {names} has no segment in any of its {len(dicts)} images (no "
            "instance, no segments_info): there is nothing to learn. Check the dataset's "
            "annotation JSON")
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and "annotations" in dicts[0]:
        dicts = filter_images_with_only_crowd_annotations(dicts)
        if not dicts:
            raise ValueError(
                f"DATASETS.TRAIN {names} has no image left after filtering: none has a "
                "non-crowd instance. Pass DATALOADER.FILTER_EMPTY_ANNOTATIONS False to train "
                "on stuff only, or check the instance annotations")
    return dicts


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
        dataset = train_dataset_dicts(cfg)
    if isinstance(dataset, list):
        dataset = [{**d, INDEX_KEY: i} for i, d in enumerate(dataset)]
    limit = min(100, len(dataset)) if hasattr(dataset, "__len__") else 100
    if mapper is None:
        mapper = PanopticDatasetMapper(cfg, True)
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
            report = _validate_datasets(
                names, progress=progress,
                on_bad_area=check_on_bad_area(cfg.DATALOADER.ON_BAD_AREA))
        except Exception as exc:  # shared below, re-raised on every rank
            failure, error = exc, str(exc)
    if comm.get_world_size() > 1:
        error = comm.all_gather(error)[0]
    if failure is not None:
        raise failure
    if error is not None:
        raise DatasetValidationError(error)
    return report
