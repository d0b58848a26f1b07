"""MicroBatcher: batching up to size/deadline, thread safety, error isolation, asyncio entry point,
cancellation, BaseException, close/submit races, backpressure, head-of-line blocking, bisection;
SelfSegService warm-up plan and per-request budget."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

import selfseg_fast.serving as serving
from selfseg_fast.errors import ResourceError, SelfSegError
from selfseg_fast.images import LoadedImage
from selfseg_fast.isolation import Failure, run_isolated
from selfseg_fast.serving import (
    BatcherClosed,
    DeadlineExceeded,
    MicroBatcher,
    SelfSegService,
    ServiceBusy,
    ServiceConfig,
)


def _drained(batcher: MicroBatcher, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while batcher.queue_depth and time.monotonic() < deadline:
        time.sleep(0.001)
    assert batcher.queue_depth == 0


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
    assert list(batcher.batch_sizes) == [1]
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


def test_a_cancelled_request_never_kills_the_worker() -> None:
    # issue 13.1: set_result on a cancelled future raised InvalidStateError in the only worker
    batcher = MicroBatcher(lambda x: (time.sleep(0.2), x)[1], max_batch=1, max_wait_ms=0)
    a, c = batcher.submit(1), batcher.submit(2)
    a.cancel()
    assert c.result(5) == 2
    assert batcher(3, timeout=5) == 3
    batcher.close()


def test_a_request_cancelled_while_queued_is_dropped_unrun() -> None:
    gate, seen = threading.Event(), []

    def fn(items):
        seen.extend(items)
        gate.wait(5)
        return items

    batcher = MicroBatcher(fn, max_batch=1, max_wait_ms=0)
    first = batcher.submit("first")
    _drained(batcher)  # the worker has taken the first item
    queued = batcher.submit("queued")
    assert batcher.queue_depth == 1
    assert queued.cancel()
    assert batcher.queue_depth == 0  # the slot is free at once
    gate.set()
    assert first.result(5) == "first" and batcher("after", timeout=5) == "after"
    assert "queued" not in seen
    with pytest.raises(CancelledError):
        queued.result(0)
    batcher.close()


def test_asyncio_cancellation_drops_the_queued_item() -> None:
    gate, seen = threading.Event(), []

    def fn(items):
        seen.extend(items)
        gate.wait(5)
        return items

    batcher = MicroBatcher(fn, max_batch=1, max_wait_ms=0)
    blocker = batcher.submit("blocker")
    _drained(batcher)  # the worker has taken the first item

    async def cancel_one() -> None:
        task = asyncio.ensure_future(batcher.asubmit("abandoned"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_one())
    gate.set()
    assert blocker.result(5) == "blocker"
    batcher.close()
    assert "abandoned" not in seen


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exception_in_the_batch_fails_the_batch_but_not_the_worker(exc_type) -> None:
    def fn(items):
        if "boom" in items:
            raise exc_type()
        return items

    batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="interrupted"):
        batcher("boom", timeout=5)
    assert batcher("fine", timeout=5) == "fine"
    batcher.close()


def test_close_never_leaves_an_accepted_future_unresolved(monkeypatch) -> None:
    # issue 13.2: a submitter descheduled between its closed-check and its enqueue slipped in behind the
    # stop marker. A slow Future() constructor widens that window to certainty on the old code.
    class SlowFuture(serving.Future):
        def __init__(self) -> None:
            time.sleep(0.02)
            super().__init__()

    monkeypatch.setattr(serving, "Future", SlowFuture)
    batcher = MicroBatcher(lambda items: items, max_batch=4, max_wait_ms=1)
    accepted, stop = [], threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                accepted.append(batcher.submit((k, i)))
            except (BatcherClosed, ServiceBusy):
                return
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.15)
    batcher.close()
    stop.set()
    for t in threads:
        t.join(5)
    assert accepted
    unresolved = [f for f in accepted if not f.done()]
    assert not unresolved, f"{len(unresolved)} of {len(accepted)} accepted futures never finished"


def test_close_under_stress_resolves_everything() -> None:
    batcher = MicroBatcher(lambda items: items, max_batch=8, max_wait_ms=0, max_queue=100_000)
    accepted, stop = [], threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                accepted.append(batcher.submit(1))
            except BatcherClosed:
                return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    batcher.close()
    stop.set()
    for t in threads:
        t.join(5)
    assert all(f.done() for f in accepted)


def test_bounded_queue_refuses_with_service_busy() -> None:
    gate = threading.Event()
    batcher = MicroBatcher(lambda items: (gate.wait(5), items)[1], max_batch=1, max_wait_ms=0, max_queue=2)
    running = batcher.submit(0)
    _drained(batcher)  # the worker has taken the first item
    queued = [batcher.submit(1), batcher.submit(2)]
    with pytest.raises(ServiceBusy, match="busy"):
        batcher.submit(3)
    start = time.monotonic()
    with pytest.raises(ServiceBusy):
        batcher.submit(3, timeout=0.1)  # waits for room, then gives up
    assert time.monotonic() - start >= 0.09
    gate.set()
    assert [f.result(5) for f in (running, *queued)] == [0, 1, 2]
    assert batcher(4, timeout=5) == 4  # room again
    batcher.close()


def test_queued_cost_is_bounded_too() -> None:
    gate = threading.Event()
    batcher = MicroBatcher(
        lambda items: (gate.wait(5), items)[1], max_batch=1, max_wait_ms=0, cost_fn=float, max_queue_cost=10
    )
    running = batcher.submit(100)  # an empty queue always takes one item, whatever its cost
    _drained(batcher)  # the worker has taken the first item
    waiting = [batcher.submit(6), batcher.submit(4)]
    with pytest.raises(ServiceBusy, match="cost"):
        batcher.submit(1)  # 6 + 4 + 1 > 10
    gate.set()
    assert [f.result(5) for f in (running, *waiting)] == [100, 6, 4]
    assert batcher(9, timeout=5) == 9
    batcher.close()


def test_a_small_request_does_not_wait_behind_a_large_one() -> None:
    # issue 13.3: a small request took 11.5 s behind a 3000x3000 one. Cost = seconds of work / 0.02.
    def work(items: list[float]) -> list[float]:
        time.sleep(0.02 * sum(items))
        return items

    batcher = MicroBatcher(work, max_batch=8, max_wait_ms=5, cost_fn=lambda c: c, lane_fn=lambda c: c >= 10)
    assert batcher(1.0, timeout=5) == 1.0  # learns seconds per cost unit
    running = batcher.submit(10.0)  # 0.2 s
    _drained(batcher)  # the worker has taken the first item
    big = batcher.submit(50.0)  # 1 s
    t0 = time.monotonic()
    small = batcher.submit(1.0)  # 0.02 s
    small.result(10)
    small_latency = time.monotonic() - t0
    assert not big.done() or big.result() == 50.0
    assert small_latency < 0.6, small_latency  # old code: batched with the big one (> 1 s)
    assert big.result(10) == 50.0 and running.result(10) == 10.0
    batcher.close()


def test_batch_cost_cap_splits_batches() -> None:
    gate = threading.Event()
    batches: list[list[int]] = []

    def fn(items):
        gate.wait(5)
        batches.append(list(items))
        return items

    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=0, cost_fn=float, max_batch_cost=10)
    first = batcher.submit(1)
    _drained(batcher)  # the worker has taken the first item
    futures = [batcher.submit(x) for x in (6, 6, 3)]
    gate.set()
    assert [f.result(5) for f in futures] == [6, 6, 3] and first.result(5) == 1
    batcher.close()
    assert all(sum(b) <= 10 or len(b) == 1 for b in batches)


def test_a_failed_batch_is_bisected_not_rerun_one_by_one() -> None:
    calls: list[int] = []

    def fn(items):
        calls.append(len(items))
        if 13 in items:
            raise ValueError("13 is bad")
        return [x * 10 for x in items]

    out = run_isolated(fn, list(range(16)))
    assert [o for o in out if not isinstance(o, Failure)] == [x * 10 for x in range(16) if x != 13]
    assert isinstance(out[13], Failure) and "13 is bad" in str(out[13].error)
    assert len(calls) <= 2 * 4 + 1  # a bisection: 9 calls, not 1 + 16
    assert calls.count(1) <= 2  # good items are computed in batches, not one at a time


def test_bisection_answers_the_good_half_before_the_bad_half_is_done() -> None:
    order: list[str] = []

    def fn(items):
        if "bad" in items:
            time.sleep(0.05)
            raise ValueError("bad")
        return items

    batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=50)
    good = batcher.submit("good")
    bad = batcher.submit("bad")
    good.add_done_callback(lambda f: order.append("good"))
    bad.add_done_callback(lambda f: order.append("bad"))
    assert good.result(5) == "good"
    with pytest.raises(ValueError):
        bad.result(5)
    assert order == ["good", "bad"]
    batcher.close()


# ---- SelfSegService without models --------------------------------------------------------------------
class _CountingPipeline:
    def __init__(self) -> None:
        self.described: list[int] = []
        self.runs = 0

    def run(self, images):
        self.runs += 1
        return [image.path for image in images]

    def describe(self, images):
        self.described.append(len(images))
        return [None] * len(images)


def _cfg(engine: str = "reference", compile: bool = False):
    from selfseg_fast.config import SelfSegConfig

    return SelfSegConfig.from_preset("voc").with_overrides({"engine": engine, "compile": compile})


def test_warmup_is_proportional_to_what_the_engine_can_reuse() -> None:
    # issue 13.20: 15 describes on the reference engine (118 s) for nothing
    pipeline = _CountingPipeline()
    SelfSegService(_cfg("reference"), ServiceConfig(max_batch=8), pipeline=pipeline).close()
    assert pipeline.runs == 2 and pipeline.described == []  # the second pass measures the tail (deadlines)
    assert serving.warmup_batch_sizes("fast", False, "cpu", 8) == []
    assert serving.warmup_batch_sizes("fast", False, "cuda", 8) == [8]
    assert serving.warmup_batch_sizes("fast", True, "cuda", 8) == [2, 4, 8]
    assert serving.warmup_batch_sizes("fast", True, "cuda", 6) == [2, 4, 8]  # 5..6 pad to the 8 bucket
    assert serving.warmup_batch_sizes("reference", True, "cuda", 8) == []


def test_service_refuses_images_over_its_pixel_budget_and_lanes_by_size() -> None:
    service = SelfSegService(
        _cfg(), ServiceConfig(max_pixels=10_000, warmup=False), pipeline=_CountingPipeline()
    )
    small = LoadedImage("small", np.zeros((50, 50, 3), np.uint8), "RGB", (50, 50))
    large = LoadedImage("large", np.zeros((101, 100, 3), np.uint8), "RGB", (100, 101))
    assert service.segment(small, timeout=5) == "small"
    with pytest.raises(ResourceError, match="exceeds this service's limit"):
        service.segment(large)
    assert service.size_class(small) == 0
    assert service.size_class(LoadedImage("x", np.zeros((3000, 3000, 3), np.uint8), "RGB", (1, 1))) == 2
    service.close()
    assert not service.ready


class _TailPipeline:
    """run() records each image's caption deadline and reports `tail` seconds of nouns + segment."""

    def __init__(self, tail: float) -> None:
        self.tail, self.deadlines = tail, []

    def run(self, images):
        from selfseg_fast.pipeline import Segmentation
        from selfseg_fast.records import ImageResult

        out = []
        for image in images:
            self.deadlines.append((image.path, image.deadline))
            seconds = {"nouns": self.tail / 2, "segment": self.tail / 2}
            result = ImageResult(image.path, [], {}, {}, [], seconds)
            out.append(Segmentation(result, [], np.zeros((1, 1), np.int64)))
        return out


def test_request_deadlines_become_caption_deadlines_less_the_learnt_tail() -> None:
    pipeline = _TailPipeline(tail=0.2)
    service = SelfSegService(_cfg(), ServiceConfig(deadline_ms=10_000, max_wait_ms=0), pipeline=pipeline)
    assert service.tail_seconds_per_image == pytest.approx(0.2)  # learnt from the warm-up run
    image = LoadedImage("a", np.zeros((8, 8, 3), np.uint8), "RGB", (8, 8))
    sent = time.monotonic()
    service.segment(image, timeout=5)  # the server default
    service.segment(dataclasses.replace(image, path="b"), timeout=5, deadline_ms=3000)  # its own
    (_, a), (_, b) = pipeline.deadlines[-2:]
    assert sent + 10 - 0.2 <= a <= time.monotonic() + 10 - 0.2
    assert sent + 3 - 0.2 <= b <= time.monotonic() + 3 - 0.2
    before = time.monotonic()
    service.segment(dataclasses.replace(image, path="c"), timeout=5, deadline_ms=50)  # runs, degraded
    assert pipeline.deadlines[-1][1] < before  # its caption time went to the tail: none left
    with pytest.raises(SelfSegError, match="deadline_ms"):
        service.segment(image, deadline_ms=-1)
    service.close()


def test_a_request_whose_deadline_passed_in_the_queue_is_not_run() -> None:
    pipeline = _TailPipeline(tail=0.0)
    options = ServiceConfig(warmup=False, max_wait_ms=0, max_batch=4)
    service = SelfSegService(_cfg(), options, pipeline=pipeline)
    gate = threading.Event()
    run = pipeline.run
    pipeline.run = lambda images: gate.wait(5) and run(images)
    image = LoadedImage("first", np.zeros((8, 8, 3), np.uint8), "RGB", (8, 8))
    first = service.submit(image)
    _drained(service.batcher)  # the first batch holds the worker
    late = service.submit(dataclasses.replace(image, path="late"), deadline_ms=20)
    on_time = service.submit(dataclasses.replace(image, path="on time"), deadline_ms=60_000)
    time.sleep(0.05)
    gate.set()
    first.result(5)
    with pytest.raises(DeadlineExceeded, match="deadline passed while queued"):
        late.result(5)
    assert on_time.result(5).description.path == "on time"
    assert [path for path, _ in pipeline.deadlines] == ["first", "on time"]  # "late" never ran
    service.close()
