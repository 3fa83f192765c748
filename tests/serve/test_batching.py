"""DynamicBatcher: concurrent submissions grouped up to the size limit, answers in order, a
failure reaches every waiter, and batch size 1 is one request at a time."""

import asyncio
import threading

import pytest

from panoptic_ext.serve.batching import DynamicBatcher


def _run(batcher_kwargs, items, fail=False):
    calls: list[list[int]] = []
    threads: set[str] = set()

    def run(batch):
        calls.append(list(batch))
        threads.add(threading.current_thread().name)
        if fail:
            raise RuntimeError("model failed")
        return [x * 10 for x in batch]

    async def main():
        seen = []
        batcher = DynamicBatcher(run, on_batch=lambda n, s: seen.append(n), **batcher_kwargs)
        await batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(
                *(batcher.submit(x) for x in items), return_exceptions=True), 30), seen
        finally:
            await batcher.stop()

    results, seen = asyncio.run(main())
    return results, calls, seen, threads


def test_groups_concurrent_requests_in_order():
    results, calls, seen, threads = _run(dict(max_batch_size=4, max_wait_ms=50), list(range(10)))
    assert results == [x * 10 for x in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]
    assert sum(calls, []) == list(range(10))
    assert seen == [4, 4, 2]
    assert threads == {"panoptic-model_0"}  # never on the event loop's thread


def test_batch_size_one_is_one_at_a_time():
    results, calls, _, _ = _run(dict(max_batch_size=1, max_wait_ms=50), [1, 2, 3])
    assert results == [10, 20, 30]
    assert calls == [[1], [2], [3]]


def test_failure_reaches_every_waiter():
    results, calls, _, _ = _run(dict(max_batch_size=8, max_wait_ms=5), [1, 2], fail=True)
    assert all(isinstance(r, RuntimeError) and str(r) == "model failed" for r in results)


def test_refuses_a_zero_batch_size():
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        DynamicBatcher(lambda b: b, max_batch_size=0)
