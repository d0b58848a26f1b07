"""Embedding selfseg-fast in a service: a load-once segmenter with thread-safe micro-batching.

`MicroBatcher` groups concurrent requests into one batch (up to `max_batch` items, or whatever
arrived within `max_wait_ms` of the first) and runs it on a single worker thread, the one owner of
the GPU. Callers block on `__call__`, hold a `Future` from `submit`, or `await` `asubmit`.
A failing batch is retried item by item, so one bad request never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:  # the batcher itself needs none of the model code
    from selfseg_fast.config import SelfSegConfig
    from selfseg_fast.images import LoadedImage
    from selfseg_fast.pipeline import Segmentation

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Runs `batch_fn(list[T]) -> list[R]` over micro-batches of concurrently submitted items."""

    def __init__(self, batch_fn: Callable[[list[T]], list[R]], max_batch: int = 16, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.batch_fn = batch_fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batch_sizes: list[int] = []  # sizes of the batches run so far (for tests and metrics)
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="selfseg-microbatcher", daemon=True)
        self._worker.start()

    def submit(self, item: T) -> Future[R]:
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future

    def __call__(self, item: T, timeout: float | None = None) -> R:
        return self.submit(item).result(timeout)

    async def asubmit(self, item: T) -> R:
        return await asyncio.wrap_future(self.submit(item))

    def close(self) -> None:
        """Finish what was submitted, then stop the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._worker.join()

    def _collect(self) -> tuple[list, bool]:
        """Block for a first item, then take more until the batch is full or the deadline passes."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                self._run(batch)
                return [], True
            batch.append(entry)
        return batch, False

    def _loop(self) -> None:
        while True:
            batch, stop = self._collect()
            if batch:
                self._run(batch)
            if stop:
                return

    def _run(self, batch: list) -> None:
        items = [item for item, _ in batch]
        futures = [future for _, future in batch]
        self.batch_sizes.append(len(items))
        try:
            results = self.batch_fn(items)
            if len(results) != len(items):
                raise RuntimeError(f"batch_fn returned {len(results)} results for {len(items)} items")
        except Exception as exc:  # isolate the failing item(s): retry one by one
            if len(items) == 1:
                futures[0].set_exception(exc)
            else:
                for entry in batch:
                    self._run([entry])
            return
        for future, result in zip(futures, results):
            future.set_result(result)


@dataclass
class ServiceConfig:
    max_batch: int = 8  # images per micro-batch
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    warmup: bool = True  # run the whole pipeline once at start so the first request is not slow


class SelfSegService:
    """Load once, warm up, then serve `segment(image)` from many threads or `await asegment(image)`."""

    def __init__(self, cfg: SelfSegConfig, service: ServiceConfig | None = None) -> None:
        self.cfg = cfg
        from selfseg_fast.pipeline import SelfSegPipeline

        self.options = service or ServiceConfig()
        self.pipeline = SelfSegPipeline(cfg)
        if self.options.warmup:
            self.warmup()
        self.batcher: MicroBatcher[LoadedImage, Segmentation] = MicroBatcher(
            self.pipeline.run, self.options.max_batch, self.options.max_wait_ms
        )

    def warmup(self) -> None:
        """Run every batch shape the service will see before the first request: one full pass (the
        segmenter included), then the BCC stages at each power-of-two batch size up to `max_batch`
        (with `compile=True` these are the CUDA-graph buckets; otherwise this warms kernels and the
        allocator)."""
        rng = np.random.default_rng(0)
        from selfseg_fast.images import LoadedImage

        rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        image = LoadedImage("warmup", rgb, "RGB", (64, 64))
        self.pipeline.run([image])
        size = 2
        while size <= self.options.max_batch:
            self.pipeline.describe([image] * size)
            size *= 2

    def segment(self, image: LoadedImage, timeout: float | None = None) -> Segmentation:
        return self.batcher(image, timeout)

    async def asegment(self, image: LoadedImage) -> Segmentation:
        return await self.batcher.asubmit(image)

    def close(self) -> None:
        self.batcher.close()
