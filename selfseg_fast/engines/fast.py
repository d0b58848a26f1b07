"""The fast engine: many images at once through every stage; the host work off the device's way.

Per batch of B images (records at the stage boundaries, `records.py`):
  prepare  seeds + encoder-sized pixels, by worker threads, for batch i+1 while batch i runs
  encode   -> {384: PatchFeatures [B, 576, C], 512: PatchFeatures [B, 1024, C]}  (SDPA ViT, fp16 on CUDA)
  cluster  -> ClusterGrid [B, 32, 32]  (all B x 4 k-means problems batched, Hungarian problems of the
             batch after one copy to the host, CRF and majority filter as convolutions)
  caption  -> CaptionTokens: one sampler over every (image, cluster, cycle) row, one K/V set per image
  nouns    -> on the host-stage thread while the next batch runs on the device: token ids -> text
             (fast tokenizer), spaCy in worker processes, ImageResult per image
Which implementation of each stage runs is the `ExecutionPlan` resolved when the engine is built.
Running out of GPU memory halves the batch, retries it, and keeps the smaller size for the batches
that follow; no image is lost.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.images import LoadedImage
from selfseg_fast.models.blip import load_blip
from selfseg_fast.plan import resolve_plan
from selfseg_fast.records import CaptionTexts, CaptionTokens, DeviceBatch, ImageResult
from selfseg_fast.seeding import derived_seed
from selfseg_fast.stages.adaptive import CycleTracker, deadline_clock, run_rounds
from selfseg_fast.stages.caption import decode_captions, sample_captions
from selfseg_fast.stages.cluster import cluster_grid_batched
from selfseg_fast.stages.features import FastEncoder
from selfseg_fast.stages.nouns import NounExtractor
from selfseg_fast.stages.prepare import HostPrep, PreparedBatch
from selfseg_fast.timing import StageTimer

log = logging.getLogger(__name__)


class FastEngine:
    """Batched engine over the fast stages; same function as the reference engine."""

    name = "fast"

    def __init__(self, cfg: SelfSegConfig) -> None:
        self.cfg = cfg
        self.plan = resolve_plan(cfg, engine="fast")
        self.device = self.plan.device
        bundle = load_blip(cfg, "cpu")
        self.encoder = FastEncoder(bundle, cfg, self.plan)  # its own SDPA copy of the vision tower
        bundle.model.vision_model.to("meta")  # HF's tower is not used by this engine: free its memory
        bundle.model.text_decoder.to(self.device, self.plan.dtype)  # the sampler runs in fp16/bf16 on CUDA
        self.blip = dataclasses.replace(bundle, device=self.device)
        self.prep = HostPrep(cfg.seed, cfg.encoder.resolutions, self.plan)
        self.nouns = NounExtractor(cfg.nouns, workers=self.plan.noun_workers)
        self.batch_size = max(1, cfg.batch_size)  # lowered for good on CUDA out-of-memory
        if self.batch_size * cfg.caption.cycles * max(cfg.cluster.k_values) >= self.nouns.min_parallel:
            self.nouns.start_workers()  # batches big enough for the worker processes: start them now
        self.oom_events = 0
        self._host_stage = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfseg-host")
        log.info(self.plan.note())

    def describe(self, images: list[LoadedImage]) -> list[ImageResult]:
        return list(self.describe_stream(images))

    def describe_stream(self, images: Iterable[LoadedImage]) -> Iterator[ImageResult]:
        """Results in input order. While batch i runs on the device, batch i+1 is being prepared by
        the prep threads and batch i-1's nouns are being found by the host stage."""
        source = iter(images)
        upcoming = self._prepare_next(source)
        pending: Future | None = None
        while upcoming is not None:
            prepared = upcoming.result()
            upcoming = self._prepare_next(source)
            done = [out for chunk in self._split(prepared) for out in self._device_stages_with_backoff(chunk)]
            if pending is not None:
                yield from pending.result()
            pending = self._host_stage.submit(self._host_stages, done)
        if pending is not None:
            yield from pending.result()

    def _prepare_next(self, source: Iterator[LoadedImage]):
        """Start preparing the next batch (of the current batch size), or None at the end."""
        batch = [image for _, image in zip(range(self.batch_size), source)]
        return self.prep.submit(batch) if batch else None

    def _split(self, prepared: PreparedBatch) -> list[PreparedBatch]:
        """A batch prepared before the batch size was lowered runs in pieces of the new size."""
        n, size = len(prepared.images), self.batch_size
        return [_slice(prepared, i, min(n, i + size)) for i in range(0, n, size)]

    # ---- device stages ---------------------------------------------------------------------------------
    def _device_stages_with_backoff(self, prepared: PreparedBatch) -> list[DeviceBatch]:
        """Run the device stages; on CUDA out-of-memory halve the batch (recursively) and keep the
        halved size for every later batch."""
        try:
            return [self._device_stages(prepared)]
        except torch.OutOfMemoryError:
            n = len(prepared.images)
            if n == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = n // 2
            self.batch_size = min(self.batch_size, half)
            self.oom_events += 1
            log.warning("CUDA out of memory at batch %d; batch size is %d from now on", n, self.batch_size)
            first = self._device_stages_with_backoff(_slice(prepared, 0, half))
            return first + self._device_stages_with_backoff(_slice(prepared, half, n))

    @torch.inference_mode()
    def _device_stages(self, prepared: PreparedBatch) -> DeviceBatch:
        cfg, seeds = self.cfg, prepared.seeds
        timer = StageTimer()  # no sync between stages: device time comes from CUDA events (timing.py)
        with timer("encode"):
            features = self.encoder.encode(prepared.pixels)  # {res: PatchFeatures [B, N, C]}
        with timer("cluster"):
            grid = cluster_grid_batched(features, cfg, seeds, self.plan)  # [B, 32, 32]
        with timer("caption"):
            rows = grid.rows()  # (image, cluster id), from the grid's host copy
            row_seeds = [derived_seed(seeds[b], cid) for b, cid in rows]
            top = features[max(features)]  # the 512-px patches feed the captioner
            labels = grid.labels.flatten(1)
            if cfg.caption.adaptive_patience or any(im.deadline is not None for im in prepared.images):
                captions = self._caption_rounds(top.tokens, labels, rows, row_seeds, prepared.images)
            else:
                ids = sample_captions(
                    self.blip, top.tokens, labels, rows, row_seeds, cfg.caption,
                    cuda_graphs=self.plan.sampler_graphs,
                )  # fmt: skip
                captions = CaptionTokens(rows, cfg.caption.cycles, ids)
        per_image = {stage: sec / len(seeds) for stage, sec in timer.as_dict().items()}
        return DeviceBatch(prepared.images, grid, captions, per_image, timer.device_seconds)

    def _caption_rounds(self, tokens, labels, rows, row_seeds, images: list[LoadedImage]) -> CaptionTexts:
        """Adaptive cycles and deadlines (stages/adaptive.py): rounds of `adaptive_round` cycles for the
        rows still active; each round's captions are decoded and tagged here, on the launching thread."""
        cc = self.cfg.caption
        tracker = CycleTracker(len(rows), cc.cycles, cc.adaptive_patience)
        deadlines = [image.deadline for image in images]
        should_stop, expire = deadline_clock([b for b, _ in rows], deadlines)
        if all(d is None for d in deadlines):
            should_stop = None  # adaptive cycles alone: the sampler keeps its sync cadence

        def sample_round(active: list[int], first: int, cycles: int) -> list[list[str]] | None:
            ids = sample_captions(
                self.blip, tokens, labels, [rows[r] for r in active], [row_seeds[r] for r in active],
                dataclasses.replace(cc, cycles=cycles), cuda_graphs=self.plan.sampler_graphs,
                first_cycle=first, should_stop=should_stop,
            )  # fmt: skip
            if ids is None:
                return None
            texts = decode_captions(self.blip.tokenizer, ids, cc)
            return [texts[i * cycles : (i + 1) * cycles] for i in range(len(active))]

        def nouns_of(captions: list[str]) -> list[list[str]]:
            return self.nouns.nouns_for_many([[caption] for caption in captions])

        run_rounds(tracker, cc.adaptive_round, sample_round, nouns_of, expire)
        degraded = [False] * len(images)
        for (b, _), expired in zip(rows, tracker.expired):
            degraded[b] |= expired
        return CaptionTexts(rows, tracker.captions, tracker.nouns, degraded)

    # ---- host stage ------------------------------------------------------------------------------------
    def _host_stages(self, batches: list[DeviceBatch]) -> list[ImageResult]:
        """Token ids -> captions -> nouns -> one ImageResult per image (runs on the host-stage thread)."""
        return [result for batch in batches for result in self._results(batch)]

    def _results(self, batch: DeviceBatch) -> list[ImageResult]:
        cc, tokens = self.cfg.caption, batch.captions
        timer = StageTimer()
        n = len(batch.images)
        with timer("nouns"):
            if isinstance(tokens, CaptionTexts):  # decoded and tagged round by round already
                per_row, found, degraded = tokens.captions, tokens.nouns, tokens.degraded
            else:
                texts = decode_captions(self.blip.tokenizer, tokens.ids, cc)
                per_row = [
                    texts[i * tokens.cycles : (i + 1) * tokens.cycles] for i in range(len(tokens.rows))
                ]
                found, degraded = self.nouns.nouns_for_many(per_row), [False] * n
        captions: list[dict[int, list[str]]] = [{} for _ in range(n)]
        cluster_nouns: list[dict[int, list[str]]] = [{} for _ in range(n)]
        for (b, cid), caps, nouns in zip(tokens.rows, per_row, found):
            captions[b][cid], cluster_nouns[b][cid] = caps, nouns
        device = batch.device_seconds()  # CUDA: the events' times (waited for here, off the launching thread)
        device_stages = {stage: sec / n for stage, sec in device.items()} if device is not None else {}
        seconds = batch.seconds | device_stages | {"nouns": timer.as_dict()["nouns"] / n}
        return [
            ImageResult.build(
                image, batch.grid.host[b], captions[b], cluster_nouns[b], dict(seconds), degraded[b]
            )
            for b, image in enumerate(batch.images)
        ]


def _slice(prepared: PreparedBatch, start: int, stop: int) -> PreparedBatch:
    return PreparedBatch(
        prepared.images[start:stop],
        prepared.seeds[start:stop],
        {res: pixels[start:stop] for res, pixels in prepared.pixels.items()},
    )
