"""Dynamic batching: concurrent requests grouped into one model call.

Requests wait at most `max_wait_ms` after the first one of a batch for others to join, up to
`max_batch_size`. The model runs in one worker thread, never on the event loop, so the server
keeps accepting, decoding and answering while a batch runs; what arrives meanwhile forms the
next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["DynamicBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class DynamicBatcher(Generic[T, R]):
    """Groups `submit`ted items into calls of `run(items) -> results` (same order)."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], max_batch_size: int = 8,
                 max_wait_ms: float = 10.0,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="panoptic-model")

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the one running)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="panoptic-batcher")

    async def stop(self) -> None:
        """Stop taking batches (call after in-flight requests are answered)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._executor.shutdown(wait=True)

    async def submit(self, item: T) -> R:
        if self._queue is None or self._task is None:
            raise RuntimeError("DynamicBatcher.submit before start()")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self) -> list[tuple[T, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [(item, fut) for item, fut in batch if not fut.done()]  # done: client left

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            items = [item for item, _ in batch]
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run, items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
            except Exception as e:  # noqa: BLE001 - every waiter gets the failure
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            finally:
                if self._on_batch is not None:
                    self._on_batch(len(items), time.perf_counter() - t0)
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)


