"""Checkpoints that are never left half written, even if the process is killed mid-save (the
head-shape check lives in :mod:`.weights`, with the one reader of weight files)."""

import logging
import os
from typing import Any
from urllib.parse import parse_qs

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.io import WriteError, atomic_write, atomic_writer
from .weights import read_checkpoint

__all__ = ["AtomicCheckpointer", "CheckpointSaveError", "checkpoint_to_load"]

logger = logging.getLogger(__name__)


class CheckpointSaveError(OSError):
    """A checkpoint that could not be written: the run stops with this message."""


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose checkpoint files and `last_checkpoint` pointer appear whole
    or not at all: a SIGKILL during a save leaves the previous checkpoint and pointer intact.
    Files are read by :func:`read_checkpoint` (no code from them runs unless ``trust_file``,
    from :func:`~.weights.trust_weights_file`)."""

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, trust_file: bool = False,
                 **kwargs: Any):
        super().__init__(model, save_dir, **kwargs)
        self.trust_file = trust_file
        self.save_error: CheckpointSaveError | None = None  # set by a failed save

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
        try:
            with atomic_writer(save_file, durable=True) as f:
                torch.save(data, f)
            self.tag_last_checkpoint(basename)
        except (OSError, RuntimeError) as e:  # torch's writer raises RuntimeError (disk full)
            previous = (f"the previous checkpoint ({super().get_checkpoint_file()}) is intact"
                        if self.has_checkpoint() else "no earlier checkpoint exists")
            self.save_error = CheckpointSaveError(
                f"{e if isinstance(e, WriteError) else WriteError(save_file, e)}; {previous}. "
                "Free space or fix the folder's permissions, then rerun with --resume")
            raise self.save_error from e

    def _load_file(self, filename: str) -> dict[str, Any]:
        """Every checkpoint read (resume included) goes through :func:`read_checkpoint`."""
        data = read_checkpoint(filename, trust_file=self.trust_file)
        parsed = getattr(self, "_parsed_url_during_load", None)
        if parsed is not None and parse_qs(parsed.query).get("matching_heuristics") == ["True"]:
            data["matching_heuristics"] = True
        return data

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


def checkpoint_to_load(checkpointer: DetectionCheckpointer, weights: str, resume: bool) -> str:
    """The file ``checkpointer.resume_or_load(weights, resume)`` will read ("" for none)."""
    if resume and checkpointer.has_checkpoint():
        return checkpointer.get_checkpoint_file()
    return weights or ""
