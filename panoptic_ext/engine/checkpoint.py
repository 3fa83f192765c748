"""Checkpoints that are never left half written, even if the process is killed mid-save."""

import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "atomic_write_bytes"]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, then rename over `path`."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


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
        tmp = f"{save_file}.tmp.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, save_file)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        _fsync_dir(self.save_dir)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_bytes(path, last_filename_basename.encode())

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
