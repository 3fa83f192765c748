"""Checkpoints that are never left half written, even if the process is killed mid-save; and
a check that a checkpoint's heads fit the model's classes."""

import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..utils.io import atomic_write, atomic_writer

__all__ = [
    "AtomicCheckpointer",
    "HeadShapeMismatch",
    "atomic_write_bytes",
    "check_head_shapes",
    "checkpoint_to_load",
]

logger = logging.getLogger(__name__)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Kept for old imports: :func:`panoptic_ext.utils.io.atomic_write` with ``durable``."""
    atomic_write(path, data, durable=True)


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose checkpoint files and `last_checkpoint` pointer appear whole
    or not at all: a SIGKILL during a save leaves the previous checkpoint and pointer intact."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_writer(save_file, durable=True) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, last_filename_basename, durable=True)

    def get_checkpoint_file(self) -> str:
        """The pointed-to checkpoint; a pointer to a missing file is an error, not a silent
        restart from scratch."""
        path = super().get_checkpoint_file()
        if path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"{os.path.join(self.save_dir, 'last_checkpoint')} points to {path}, which does "
                "not exist; fix the pointer (or delete it to start over)"
            )
        return path


# ----------------------------------------------------------------------------- head shapes

# Parameter -> (what it is, config key, how its first dimension counts classes).
_HEADS: dict[str, tuple[str, str, str]] = {
    "roi_heads.box_predictor.cls_score.weight":
        ("box classifier", "MODEL.ROI_HEADS.NUM_CLASSES", "things+1"),
    "roi_heads.box_predictor.bbox_pred.weight":
        ("box regressor", "MODEL.ROI_HEADS.NUM_CLASSES", "4*things"),
    "roi_heads.mask_head.predictor.weight":
        ("mask predictor", "MODEL.ROI_HEADS.NUM_CLASSES", "things"),
    "sem_seg_head.predictor.weight":
        ("semantic predictor", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "stuff+1"),
}


class HeadShapeMismatch(ValueError):
    """A checkpoint's heads were trained for other classes than the model has."""


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 'es'}"


def _classes(rows: int, rule: str) -> str:
    """How many classes a head's first dimension stands for, in words."""
    if rule == "things+1":
        return _n(rows - 1, "thing class")
    if rule in ("4*things", "things"):
        count = rows // 4 if rule == "4*things" else rows
        return _n(count, "thing class") + (" (or class-agnostic)" if count == 1 else "")
    return f"{_n(rows, 'semantic class')} ({rows - 1} stuff + 'things')"


def _read_model_state(path: str) -> Mapping[str, Any]:
    """The model weights of a checkpoint file (.pth/.pt: torch; .pkl: Detectron2/Caffe2)."""
    local = path if os.path.isfile(path) else PathManager.get_local_path(path)
    if local.endswith(".pkl"):
        with open(local, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    else:
        try:  # mmap: only the shapes are needed, not the bytes
            data = torch.load(local, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be mapped
            data = torch.load(local, map_location="cpu", weights_only=False)
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        return data["model"]
    return data if isinstance(data, Mapping) else {}


def check_head_shapes(
    model: torch.nn.Module,
    checkpoint: str | Mapping[str, Any],
    *,
    strict: bool = False,
    dataset: str = "",
) -> list[str]:
    """Compare the class-dependent head weights of ``checkpoint`` (a path or a state dict)
    with ``model``'s, and name every head whose class count differs.

    Detectron2 skips such weights with a terse shape warning; for evaluation that silently
    means untrained heads, so ``strict`` raises :class:`HeadShapeMismatch`; otherwise
    (fine-tuning on other categories, where re-initialised heads are expected) one warning
    is logged. ``dataset`` names where the model's classes come from, for the message.
    Returns the mismatch descriptions (empty when all fit or the heads are absent).
    """
    source = checkpoint if isinstance(checkpoint, str) else "the checkpoint"
    if isinstance(checkpoint, str):
        if not checkpoint:
            return []
        try:
            state = _read_model_state(checkpoint)
        except Exception as exc:  # Detectron2's own load reports an unreadable file better
            if strict:
                raise
            logger.debug("Head check skipped: cannot read %s (%s)", checkpoint, exc)
            return []
    else:
        state = checkpoint
    ours = getattr(model, "module", model).state_dict()
    problems = []
    for key, (what, cfg_key, rule) in _HEADS.items():
        if key not in state or key not in ours:
            continue
        theirs, mine = tuple(np.shape(state[key])), tuple(ours[key].shape)
        if theirs[:1] != mine[:1]:
            problems.append(
                f"{key} ({what}): checkpoint has {_classes(theirs[0], rule)}, the model "
                f"{_classes(mine[0], rule)} ({cfg_key})"
            )
    if not problems:
        return problems
    origin = f" of {dataset}" if dataset else ""
    listing = "\n  ".join(problems)
    if strict:
        raise HeadShapeMismatch(
            f"Checkpoint {source} does not fit the model's heads, which follow the "
            f"categories{origin}:\n  {listing}\nEvaluating it would use untrained heads. "
            "Use a checkpoint trained on these categories (or evaluate on the dataset it was "
            "trained on); if the class counts are wrong, set the config key shown."
        )
    logger.warning(
        f"Checkpoint {source} was trained for other classes than the model's heads "
        f"(categories{origin}):\n  {listing}\nThese heads start from random weights and "
        "learn the new categories, as expected when fine-tuning on another dataset; if not "
        "intended, set MODEL.WEIGHTS to a checkpoint trained on these categories."
    )
    return problems


def checkpoint_to_load(checkpointer: DetectionCheckpointer, weights: str, resume: bool) -> str:
    """The file ``checkpointer.resume_or_load(weights, resume)`` will read ("" for none)."""
    if resume and checkpointer.has_checkpoint():
        return checkpointer.get_checkpoint_file()
    return weights or ""
