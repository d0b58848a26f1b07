"""Stage 0 (fast engine): the host work of a batch, done by worker threads while the device works.

    images (list of [H, W, 3] uint8)
      -> per image, in a thread pool: its seed (run seed + CRC of the pixels, `seeding.py`) and the
         bicubic resize to each encoder resolution (PIL, the same resize as BLIP's processor)
      -> PreparedBatch(seeds [B], pixels {r: [B, r, r, 3] uint8}, page-locked on CUDA)

PIL's resize and zlib's CRC release the GIL, so the threads run in parallel with each other and with
the thread that launches the device work; the engine submits batch i+1 before it runs batch i, so
the device never waits on Python for its next input. Page-locked buffers let the copy to the device
be asynchronous (`non_blocking=True`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from selfseg_fast.images import LoadedImage
from selfseg_fast.plan import ExecutionPlan
from selfseg_fast.seeding import image_seed
from selfseg_fast.stages.features import resize_for_encoder


@dataclass(frozen=True)
class PreparedBatch:
    """A batch's images with their seeds and encoder-sized pixels."""

    images: list[LoadedImage]
    seeds: list[int]  # [B] per-image seeds
    pixels: dict[int, torch.Tensor]  # {resolution r: [B, r, r, 3] uint8 on the host}


class PreparedFuture:
    """The pending preparation of one batch: `result()` waits for its images' tasks."""

    def __init__(self, batch: PreparedBatch, tasks: list[Future]) -> None:
        self._batch, self._tasks = batch, tasks

    def result(self) -> PreparedBatch:
        for task in self._tasks:
            task.result()
        return self._batch


class HostPrep:
    """Prepares batches inline (`prepare`) or in the plan's worker threads (`submit`)."""

    def __init__(self, run_seed: int, resolutions: tuple[int, ...], plan: ExecutionPlan) -> None:
        self.run_seed = run_seed
        self.resolutions = tuple(resolutions)
        self.pinned = plan.pinned_memory
        self.pool = (
            ThreadPoolExecutor(plan.prep_workers, thread_name_prefix="selfseg-prep")
            if plan.prep_workers
            else None
        )

    def submit(self, images: list[LoadedImage]) -> PreparedFuture:
        """Start preparing `images`; each image is one task of the pool."""
        batch = self._allocate(images)
        if self.pool is None:
            for i, image in enumerate(images):
                self._prepare_one(batch, i, image)
            return PreparedFuture(batch, [])
        tasks = [self.pool.submit(self._prepare_one, batch, i, image) for i, image in enumerate(images)]
        return PreparedFuture(batch, tasks)

    def prepare(self, images: list[LoadedImage]) -> PreparedBatch:
        return self.submit(images).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _allocate(self, images: list[LoadedImage]) -> PreparedBatch:
        n = len(images)
        pixels = {
            r: torch.empty((n, r, r, 3), dtype=torch.uint8, pin_memory=self.pinned) for r in self.resolutions
        }
        return PreparedBatch(list(images), [0] * n, pixels)

    def _prepare_one(self, batch: PreparedBatch, i: int, image: LoadedImage) -> None:
        batch.seeds[i] = image_seed(self.run_seed, image.rgb)
        for r, out in batch.pixels.items():
            out[i].numpy()[...] = resize_for_encoder(image.rgb, r)
