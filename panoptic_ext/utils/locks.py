"""Inter-process lock, so concurrent processes (DDP ranks, two runs) do one job once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

__all__ = ["file_lock"]


@contextlib.contextmanager
def file_lock(folder: str | os.PathLike, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/name`` for the duration of the block.

    The lock is released by the kernel when the process dies, so a killed run never leaves a
    stale lock behind.
    """
    with open(os.path.join(os.fspath(folder), name), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
