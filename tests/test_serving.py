"""MicroBatcher: batching up to size/deadline, thread safety, error isolation, asyncio entry point."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from selfseg_fast.serving import MicroBatcher


def test_concurrent_requests_are_grouped_and_answered_in_order() -> None:
    calls: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        calls.append(list(items))
        time.sleep(0.01)
        return [2 * x for x in items]

    batcher = MicroBatcher(double, max_batch=4, max_wait_ms=50)
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher(i))) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert results == {i: 2 * i for i in range(10)}
    assert max(batcher.batch_sizes) <= 4
    assert len(batcher.batch_sizes) < 10  # some requests shared a batch
    assert sorted(x for call in calls for x in call) == list(range(10))


def test_deadline_flushes_a_partial_batch() -> None:
    batcher = MicroBatcher(lambda items: items, max_batch=64, max_wait_ms=20)
    start = time.monotonic()
    assert batcher(7, timeout=5) == 7
    assert time.monotonic() - start < 5
    assert batcher.batch_sizes == [1]
    batcher.close()


def test_one_bad_item_does_not_fail_its_neighbours() -> None:
    def fragile(items: list[int]) -> list[int]:
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return items

    batcher = MicroBatcher(fragile, max_batch=8, max_wait_ms=30)
    futures = [batcher.submit(x) for x in (1, -1, 2)]
    assert futures[0].result(5) == 1
    assert futures[2].result(5) == 2
    with pytest.raises(ValueError, match="negative"):
        futures[1].result(5)
    batcher.close()


def test_async_entry_point() -> None:
    batcher = MicroBatcher(lambda items: [x + 1 for x in items], max_batch=8, max_wait_ms=10)

    async def many() -> list[int]:
        return await asyncio.gather(*(batcher.asubmit(i) for i in range(5)))

    assert asyncio.run(many()) == [1, 2, 3, 4, 5]
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(1)
