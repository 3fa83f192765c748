"""Inter-process lock, so concurrent processes (DDP ranks, two runs) do one job once.

Standard library only: copied next to the exported runner with the rest of this package."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

__all__ = ["RunLockedError", "file_lock", "run_lock"]


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


class RunLockedError(RuntimeError):
    """Another live process holds the run lock of this folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, name: str = ".run.lock", what: str = "a training run",
             option: str = "OUTPUT_DIR") -> Iterator[None]:
    """Hold ``folder/name`` (holding ``pid host``) for the block, so only one process writes
    the folder's outputs; a second one gets :class:`RunLockedError` naming the folder and pid.

    ``option`` is the setting that names the folder, for the message. A lock left by a killed
    process (its pid no longer running on this host) is taken over,
    with a log line; a lock from another host is respected (its pid cannot be checked here).
    """
    import logging
    import socket

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    host = socket.gethostname()
    me = f"{os.getpid()} {host}\n"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    parts = f.read().split()
            except FileNotFoundError:
                continue  # released meanwhile: try again
            pid = int(parts[0]) if parts and parts[0].isdigit() else -1
            other_host = parts[1] if len(parts) > 1 else host
            if pid > 0 and (other_host != host or _alive(pid)):
                raise RunLockedError(
                    f"{folder} is in use by {what} (pid {pid} on {other_host}, lock file "
                    f"{path}); wait for it to end or use another {option}. If no such "
                    "process runs, delete the lock file") from None
            logging.getLogger(__name__).warning(
                f"Removing stale lock {path} (pid {pid} on {other_host} no longer runs)")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    else:
        raise RunLockedError(f"cannot take the lock {path}; another process keeps taking it")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            with open(path) as f:
                mine = f.read() == me
            if mine:
                os.remove(path)
