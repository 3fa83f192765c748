"""Atomic writes: a file appears whole or not at all, for readers in other processes (DDP
ranks, a concurrent run) and after a crash or ``kill -9`` in the middle of a write."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["WriteError", "atomic_write", "atomic_write_json", "atomic_writer", "naming_path",
           "read_json_or_none", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"  # temp files are ".<name>.<random>.tmp" next to the target


class WriteError(OSError):
    """A write that failed, naming the file (an OS error alone often names a temp file or
    nothing at all)."""

    def __init__(self, path: str, cause: BaseException) -> None:
        reason = getattr(cause, "strerror", None) or str(cause)
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path


@contextlib.contextmanager
def naming_path(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError of the block as :class:`WriteError` naming ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(os.fspath(path), e) from e


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


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", *, durable: bool = False
                  ) -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on a clean exit it replaces ``path``, on an error it
    is removed and ``path`` is untouched.

    ``durable`` also fsyncs the file and its folder (checkpoints: the rename must survive a
    power cut, not only a killed process). An OSError is raised as :class:`WriteError`
    naming ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    with naming_path(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX,
                                   dir=folder)
    try:
        with naming_path(path):
            with os.fdopen(fd, mode) as f:
                yield f
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        _fsync_dir(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str, *, durable: bool = False) -> None:
    """Write bytes or text to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w", durable=durable) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """``json.dump`` to ``path`` atomically; keyword arguments go to ``json.dump``."""
    with atomic_writer(path, "w") as f:
        json.dump(obj, f, **dump_kwargs)


def read_json_or_none(path: str | os.PathLike) -> Any:
    """A cache file's content, or None when it is missing or unreadable (then rebuild it)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
