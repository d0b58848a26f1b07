"""Embedding selfseg-fast in a service: a load-once segmenter with thread-safe micro-batching.

`MicroBatcher` groups concurrent requests into batches and runs them on a single worker thread, the
one owner of the GPU. Callers block on `__call__`, hold a `Future` from `submit`, or `await` `asubmit`.
What it guarantees:
- **Every accepted request is answered**: with its result or its own exception. A request cancelled
  while it waits is dropped without running; the worker survives any exception the batch function
  raises, `BaseException`s included; `close()` finishes everything it accepted (submission and close
  are serialised by one lock, so nothing slips in behind the stop).
- **Bounded queue**: at most `max_queue` requests, and at most `max_queue_cost` of summed cost, wait;
  beyond that `submit` raises `ServiceBusy` (a service answers 503 + Retry-After) instead of growing
  memory without limit (one item is always accepted into an empty queue, whatever its cost).
- **No head-of-line blocking**: requests are queued in lanes by size class (`lane_fn`) and a batch never
  mixes lanes or exceeds `max_batch_cost` (`cost_fn`); the next batch is the one with the least
  estimated run time minus how long its oldest request has waited (shortest job first with ageing, the
  seconds per cost unit learnt from finished batches), so a small request does not wait behind a queue
  of large ones, and a large one waits at most about its own run time longer.
- **A failed batch is bisected** (`selfseg_fast.isolation`): good items are answered from the half that
  succeeds, the failing item gets its own exception; an interrupt fails the batch without retries.

`SelfSegService` adds per-request deadlines (`deadline_ms`, or `ServiceConfig.deadline_ms` as the
default): a request's deadline counts from its arrival and covers the whole answer. When its batch
starts, the service gives each image its own caption deadline, its request deadline less the time the
stages after captioning took lately (nouns and segmentation of a batch, learnt like the run time), so
the caption cycles of an image stop in time for its answer to be ready by its deadline (within one
decoder step and the estimate's error); such an image keeps the names found so far and its answer
says `degraded` (with no names when its caption time was used up in the queue). A request whose
deadline itself had passed when its batch started (it waited too long in the queue) is not run: it
fails with `DeadlineExceeded` (HTTP 504). The estimate is learnt from a second warm-up pass (the first
holds one-time costs such as starting the noun workers) and from every batch that runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from selfseg_fast.errors import ResourceError, SelfSegError
from selfseg_fast.isolation import Failure, run_isolated

if TYPE_CHECKING:  # the batcher itself needs none of the model code
    from selfseg_fast.config import SelfSegConfig
    from selfseg_fast.images import LoadedImage
    from selfseg_fast.pipeline import Segmentation

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class ServiceBusy(SelfSegError):
    """The request queue is full: try again shortly (HTTP 503 with Retry-After)."""


class DeadlineExceeded(SelfSegError):
    """The request's deadline passed while it waited in the queue (HTTP 504): not run."""


class BatcherClosed(RuntimeError):
    """`submit` after `close()`."""


@dataclass(eq=False)
class _Entry:
    item: Any
    future: Future
    cost: float
    lane: Hashable
    enqueued: float
    taken: bool = False  # removed from its lane (by the worker, or because it was cancelled)


class MicroBatcher(Generic[T, R]):
    """Runs `batch_fn(list[T]) -> list[R]` over micro-batches of concurrently submitted items.

    max_batch: items per batch; max_wait_ms: how long the oldest item of a batch waits for company;
    max_queue / max_queue_cost: how many items, and how much summed cost, may wait; cost_fn / lane_fn /
    max_batch_cost: see the module docstring."""

    def __init__(
        self,
        batch_fn: Callable[[list[T]], list[R]],
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        *,
        max_queue: int = 256,
        cost_fn: Callable[[T], float] | None = None,
        lane_fn: Callable[[T], Hashable] | None = None,
        max_batch_cost: float | None = None,
        max_queue_cost: float | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.batch_fn = batch_fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.cost_fn = cost_fn
        self.lane_fn = lane_fn
        self.max_batch_cost = max_batch_cost
        self.max_queue_cost = max_queue_cost
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # sizes of recent batches (metrics, tests)
        self.seconds_per_cost = 0.0  # learnt from finished batches (0: plain FIFO until then)
        self._cond = threading.Condition()
        self._lanes: dict[Hashable, deque[_Entry]] = {}
        self._pending = 0
        self._pending_cost = 0.0
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="selfseg-microbatcher", daemon=True)
        self._worker.start()

    # ---- callers ---------------------------------------------------------------------------------
    def submit(self, item: T, *, timeout: float = 0.0) -> Future[R]:
        """Queue `item`; wait up to `timeout` s for room, then raise `ServiceBusy`."""
        cost = float(self.cost_fn(item)) if self.cost_fn else 1.0
        lane = self.lane_fn(item) if self.lane_fn else None
        future: Future[R] = Future()
        entry = _Entry(item, future, cost, lane, 0.0)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed and self._full(cost):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceBusy(
                        f"busy: {self._pending} requests queued (limits: {self.max_queue} requests, "
                        f"{self.max_queue_cost or 'no'} cost units); retry shortly"
                    )
                self._cond.wait(remaining)
            if self._closed:
                raise BatcherClosed("MicroBatcher is closed")
            entry.enqueued = time.monotonic()
            self._lanes.setdefault(lane, deque()).append(entry)
            self._pending += 1
            self._pending_cost += cost
            self._cond.notify_all()
        future.add_done_callback(lambda f, e=entry: self._forget_if_cancelled(e))
        return future

    def __call__(self, item: T, timeout: float | None = None) -> R:
        return self.submit(item).result(timeout)

    async def asubmit(self, item: T) -> R:
        """Await the result; cancelling the awaiting task drops the item if it has not started."""
        return await asyncio.wrap_future(self.submit(item))

    def _full(self, cost: float) -> bool:
        if self._pending >= self.max_queue:
            return True
        limit = self.max_queue_cost
        return bool(limit and self._pending and self._pending_cost + cost > limit)

    @property
    def queue_depth(self) -> int:
        return self._pending

    @property
    def alive(self) -> bool:
        return self._worker.is_alive() and not self._closed

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting, finish everything accepted, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        if not self._worker.is_alive():  # a worker that died (it should not) leaves nothing hanging
            with self._cond:
                leftovers = [e for lane in self._lanes.values() for e in lane]
                self._lanes.clear()
                self._pending, self._pending_cost = 0, 0.0
            for e in leftovers:
                _settle(e.future, Failure(BatcherClosed("MicroBatcher closed before this item ran")))

    # ---- the worker ------------------------------------------------------------------------------
    def _forget_if_cancelled(self, entry: _Entry) -> None:
        if not entry.future.cancelled():
            return
        with self._cond:
            if entry.taken:
                return
            entry.taken = True
            lane = self._lanes.get(entry.lane)
            if lane is not None:
                lane.remove(entry)
                if not lane:
                    del self._lanes[entry.lane]
            self._pending -= 1
            self._pending_cost -= entry.cost
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive anything
                log.exception("micro-batcher: batch failed outside the batch function")
                for e in batch:
                    _settle(e.future, Failure(exc if isinstance(exc, Exception) else RuntimeError(repr(exc))))

    def _next_batch(self) -> list[_Entry] | None:
        """Block until a batch is due (full, or its oldest item waited `max_wait`); None when closed
        and drained."""
        with self._cond:
            while True:
                if self._pending == 0:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                lane = self._choose_lane(now)
                entries = self._lanes[lane]
                take = self._fitting(entries)
                full = take == self.max_batch or take < len(entries)
                due = entries[0].enqueued + self.max_wait
                if full or now >= due or self._closed:
                    batch = [entries.popleft() for _ in range(take)]
                    for e in batch:
                        e.taken = True
                    if not entries:
                        del self._lanes[lane]
                    self._pending -= take
                    self._pending_cost -= sum(e.cost for e in batch)
                    self._cond.notify_all()  # room for waiting submitters
                    return batch
                self._cond.wait(due - now)

    def _fitting(self, entries: deque[_Entry]) -> int:
        """How many of the lane's oldest entries fit one batch (count and cost; at least one)."""
        n, cost = 0, 0.0
        for e in entries:
            if n == self.max_batch or (n and self.max_batch_cost and cost + e.cost > self.max_batch_cost):
                break
            n, cost = n + 1, cost + e.cost
        return n

    def _choose_lane(self, now: float) -> Hashable:
        """Least (estimated run time - wait of the oldest item); ties go to the oldest."""

        def score(lane: Hashable) -> tuple[float, float]:
            entries = self._lanes[lane]
            take = self._fitting(entries)
            cost = sum(entries[i].cost for i in range(take))
            waited = now - entries[0].enqueued
            return self.seconds_per_cost * cost - waited, -waited

        return min(self._lanes, key=score)

    def _run(self, batch: list[_Entry]) -> None:
        live = [e for e in batch if e.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes.append(len(live))
        start = time.monotonic()
        try:
            outcomes = run_isolated(
                self.batch_fn, [e.item for e in live], lambda i, out: _settle(live[i].future, out)
            )
        except BaseException as exc:  # interrupt inside batch_fn: fail the batch (no retries), keep serving
            error = RuntimeError(f"batch interrupted: {exc!r}")
            error.__cause__ = exc
            for e in live:
                _settle(e.future, Failure(error))
            return
        if not any(isinstance(o, Failure) for o in outcomes):
            total = sum(e.cost for e in live)
            if total > 0:
                rate = (time.monotonic() - start) / total
                old = self.seconds_per_cost
                self.seconds_per_cost = rate if not old else 0.7 * old + 0.3 * rate


def _settle(future: Future, outcome: Any) -> None:
    """Resolve a running future once (a second resolution, or one of a cancelled future, is a no-op)."""
    try:
        if isinstance(outcome, Failure):
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


# ---- the self-guided pipeline as a service ---------------------------------------------------------------
@dataclass
class ServiceConfig:
    max_batch: int = 8  # images per micro-batch
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    warmup: bool = True  # run the pipeline before the first request (see `warmup_batch_sizes`)
    max_queue: int = 64  # requests allowed to wait; more are refused with ServiceBusy (HTTP 503)
    max_queued_megapixels: float = 400.0  # summed (1 + MPix) of waiting images (~3 MB of RGB per MPix)
    max_pixels: int = 50_000_000  # per request; larger images are refused with ResourceError (HTTP 413)
    max_batch_megapixels: float = 64.0  # a batch's summed cost (1 + megapixels per image)
    size_classes_mp: tuple[float, ...] = field(default=(1.0, 4.0, 16.0))  # lane boundaries in MPix
    # Default per-request deadline in ms from arrival (None: none); a request may give its own. Past it
    # the caption cycles stop and the answer is `degraded`; see the module docstring.
    deadline_ms: float | None = None


def image_megapixels(image: LoadedImage) -> float:
    height, width = image.rgb.shape[:2]
    return height * width / 1e6


def warmup_batch_sizes(engine: str, compile: bool, device_type: str, max_batch: int) -> list[int]:
    """Batch sizes to describe after the one full single-image pass: only what changes later latency.
    Reference engine: none (it runs one image at a time, the first pass covers it). Fast engine with
    `compile`: every power-of-two bucket up to the one `max_batch` pads to (each is a compiled shape /
    CUDA graph). Fast engine on CUDA otherwise: `max_batch` once (kernel choice, allocator). On CPU: none."""
    if engine != "fast" or max_batch <= 1:
        return []
    if compile:
        top = 1 << (max_batch - 1).bit_length()
        return [1 << k for k in range(1, int(math.log2(top)) + 1)]
    return [max_batch] if device_type == "cuda" else []


class SelfSegService:
    """Load once, warm up, then serve `segment(image)` from many threads or `await asegment(image)`.

    `pipeline`: an already built `SelfSegPipeline` (or anything with `run`/`describe`), e.g. for tests."""

    def __init__(self, cfg: SelfSegConfig, service: ServiceConfig | None = None, *, pipeline=None) -> None:
        self.cfg = cfg
        self.options = service or ServiceConfig()
        default = self.options.deadline_ms
        if default is not None and not (math.isfinite(default) and default > 0):
            raise ValueError(f"ServiceConfig.deadline_ms = {default!r}: must be a positive number of ms")
        if pipeline is None:
            from selfseg_fast.pipeline import SelfSegPipeline

            pipeline = SelfSegPipeline(cfg)
        self.pipeline = pipeline
        self.warmup_seconds = 0.0
        self.tail_seconds_per_image = 0.0  # nouns + segmentation per image, learnt (deadlines)
        if self.options.warmup:
            start = time.perf_counter()
            self.warmup()
            self.warmup_seconds = time.perf_counter() - start
        opts = self.options
        self.batcher: MicroBatcher[LoadedImage, Segmentation] = MicroBatcher(
            self._run_batch,
            opts.max_batch,
            opts.max_wait_ms,
            max_queue=opts.max_queue,
            cost_fn=lambda image: 1.0 + image_megapixels(image),
            lane_fn=self.size_class,
            max_batch_cost=opts.max_batch_megapixels,
            max_queue_cost=opts.max_queued_megapixels,
        )

    def size_class(self, image: LoadedImage) -> int:
        mp = image_megapixels(image)
        return sum(mp > bound for bound in self.options.size_classes_mp)

    def warmup(self) -> None:
        """Two full single-image passes (segmenter included; the second, past one-time costs, measures
        the time after captioning that deadlines reserve), then `warmup_batch_sizes`."""
        from selfseg_fast.images import LoadedImage

        rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        image = LoadedImage("warmup", rgb, "RGB", (64, 64))
        self.pipeline.run([image])
        self._learn_tail(self.pipeline.run([image]))  # the first pass held one-time costs
        device = getattr(getattr(self.pipeline, "device", None), "type", "cpu")
        for size in warmup_batch_sizes(self.cfg.engine, self.cfg.compile, device, self.options.max_batch):
            self.pipeline.describe([image] * size)

    def check(self, image: LoadedImage) -> None:
        """Refuse an image over the per-request pixel budget (ResourceError, HTTP 413)."""
        height, width = image.rgb.shape[:2]
        if height * width > self.options.max_pixels:
            raise ResourceError(
                f"{width}x{height} = {height * width / 1e6:.1f} MPix exceeds this service's limit of "
                f"{self.options.max_pixels / 1e6:.1f} MPix per image (ServiceConfig.max_pixels)",
                path=image.path,
            )

    def submit(self, image: LoadedImage, deadline_ms: float | None = None) -> Future[Segmentation]:
        """Queue one image; `deadline_ms` from now (default `ServiceConfig.deadline_ms`; None: none)."""
        self.check(image)
        deadline_ms = self.options.deadline_ms if deadline_ms is None else deadline_ms
        if deadline_ms is not None:
            if not (isinstance(deadline_ms, (int, float)) and math.isfinite(deadline_ms) and deadline_ms > 0):
                raise SelfSegError(f"deadline_ms = {deadline_ms!r}: must be a positive number of ms")
            image = dataclasses.replace(image, deadline=time.monotonic() + deadline_ms / 1000)
        return self.batcher.submit(image)

    def segment(
        self, image: LoadedImage, timeout: float | None = None, deadline_ms: float | None = None
    ) -> Segmentation:
        return self.submit(image, deadline_ms).result(timeout)

    async def asegment(self, image: LoadedImage, deadline_ms: float | None = None) -> Segmentation:
        return await asyncio.wrap_future(self.submit(image, deadline_ms))

    # ---- deadlines -----------------------------------------------------------------------------------
    def _run_batch(self, images: list[LoadedImage]) -> list:
        """The batch function: request deadlines -> caption deadlines (less the learnt tail of the
        batch); images already past their request deadline fail with DeadlineExceeded, the rest run
        together (one whose caption deadline has passed comes back degraded, with no names)."""
        tail = self.tail_seconds_per_image * len(images)
        now = time.monotonic()
        out: list = [None] * len(images)
        run: list[int] = []
        images = list(images)  # the caller's list is re-run as is if the batch fails (bisection)
        for i, image in enumerate(images):
            if image.deadline is None:
                run.append(i)
                continue
            if now >= image.deadline:
                out[i] = Failure(
                    DeadlineExceeded(
                        f"deadline passed while queued ({(now - image.deadline) * 1000:.0f} ms ago): not "
                        "run; retry with a larger deadline_ms or later"
                    )
                )
                continue
            images[i] = dataclasses.replace(image, deadline=image.deadline - tail)
            run.append(i)
        if run:
            results = self.pipeline.run([images[i] for i in run])
            self._learn_tail(results)
            for i, result in zip(run, results):
                out[i] = result
        return out

    def _learn_tail(self, results: list) -> None:
        """Seconds per image of the stages after captioning (nouns, segment), as a moving average."""
        seconds = [getattr(getattr(r, "description", None), "stage_seconds", None) for r in results]
        tails = [s.get("nouns", 0.0) + s.get("segment", 0.0) for s in seconds if s]
        if not tails:
            return
        rate = sum(tails) / len(tails)
        old = self.tail_seconds_per_image
        self.tail_seconds_per_image = rate if not old else 0.7 * old + 0.3 * rate

    @property
    def ready(self) -> bool:
        return self.batcher.alive

    def close(self) -> None:
        self.batcher.close()
