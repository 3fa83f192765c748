"""Process pools that never hang, whatever the parent process did before.

A ``fork``-ed child inherits the memory of OpenCV's (and torch's/OpenMP's) thread pools but
not their threads; its first parallel call (``cv2.setNumThreads``, a large ``cvtColor``)
then waits forever on a lock held by a thread that does not exist. A notebook that evaluated
one folder in-process and then a larger one in a pool hung that way. Here children start
from a fresh interpreter through a ``forkserver`` (started once per process, after which
every worker is a cheap fork of that clean server).

Unlike a plain forkserver/spawn pool, the children do not re-run the caller's ``__main__``
script: a script without an ``if __name__ == "__main__":`` guard would otherwise start pools
recursively, its workers would die at start-up and the pool would wait for them forever.
Functions given to these pools must therefore live in importable modules (not ``__main__``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.pool
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["safe_context", "safe_pool"]

try:  # POSIX with fd passing: a forkserver whose children skip the caller's __main__
    from multiprocessing import popen_forkserver, spawn

    class _Popen(popen_forkserver.Popen):
        def _launch(self, process_obj: Any) -> None:
            original = spawn.get_preparation_data

            def without_main(name: str) -> dict:
                data = original(name)
                data.pop("init_main_from_path", None)
                data.pop("init_main_from_name", None)
                return data

            # popen_forkserver looks the function up in ``spawn`` at call time; the module
            # attribute is only swapped for this one call on this thread's launch.
            popen_forkserver.spawn = _SpawnView(without_main)
            try:
                super()._launch(process_obj)
            finally:
                popen_forkserver.spawn = spawn

    class _SpawnView:
        """``spawn`` with another ``get_preparation_data`` (everything else delegated)."""

        def __init__(self, get_preparation_data: Callable[[str], dict]) -> None:
            self.get_preparation_data = get_preparation_data

        def __getattr__(self, name: str) -> Any:
            return getattr(spawn, name)

    class _Process(multiprocessing.context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> _Popen:  # noqa: N802 - multiprocessing's name
            return _Popen(process_obj)

    class _Context(multiprocessing.context.ForkServerContext):
        Process = _Process

    _FORKSERVER: multiprocessing.context.BaseContext | None = _Context()
    _FORKSERVER._check_available()
except (ImportError, AttributeError, ValueError):  # no forkserver here (Windows)
    _FORKSERVER = None


def safe_context(preload: Sequence[str] = ()) -> multiprocessing.context.BaseContext:
    """A start method whose children share no thread-pool state with this process.

    ``preload`` names modules the forkserver imports once, so that each worker starts warm
    (only effective before the process's forkserver first starts).
    """
    if _FORKSERVER is None:
        return multiprocessing.get_context("spawn")
    if preload:
        _FORKSERVER.set_forkserver_preload(list(preload))
    return _FORKSERVER


def safe_pool(
    processes: int,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    preload: Sequence[str] = (),
) -> multiprocessing.pool.Pool:
    """``multiprocessing.Pool`` from :func:`safe_context` (use it as a context manager)."""
    return safe_context(preload).Pool(processes=processes, initializer=initializer,
                                      initargs=initargs)
