"""The fast engine: many images at once through every stage, the noun stage overlapped with the GPU.

Per batch of B images (shapes at the stage boundaries):
  encode   images -> {384: [B, 576, 1024+256], 512: [B, 1024, 1024+256]}  (SDPA ViT, fp16 on CUDA)
  cluster  -> [B, 32, 32]   (all B x 4 k-means problems in one batched computation; batched
                             Hungarian, CRF and majority filter as convolutions)
  caption  -> one batched sampler over every (image, cluster, cycle) row
  nouns    -> spaCy `nlp.pipe` on a worker thread while the next batch runs on the GPU
Running out of GPU memory halves the batch and retries it; no image is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.engines.base import build_result, resolve_device
from selfseg_fast.images import LoadedImage
from selfseg_fast.models.blip import load_blip
from selfseg_fast.records import ImageResult
from selfseg_fast.seeding import derived_seed, image_seed
from selfseg_fast.stages.caption import caption_batched
from selfseg_fast.stages.cluster import cluster_grid_batched, cluster_patch_indices
from selfseg_fast.stages.features import FastEncoder
from selfseg_fast.stages.nouns import NounExtractor
from selfseg_fast.timing import StageTimer

log = logging.getLogger(__name__)


class FastEngine:
    """Batched engine over the fast stages; same function as the reference engine."""

    name = "fast"

    def __init__(self, cfg: SelfSegConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg)
        self.blip = load_blip(cfg, self.device)
        self.encoder = FastEncoder(self.blip, cfg, self.device)  # its own SDPA copy of the vision tower
        if self.device.type == "cuda" and self.encoder.dtype != torch.float32:
            self.blip.model.text_decoder.to(self.encoder.dtype)  # the caption sampler runs in fp16/bf16 too
        self.nouns = NounExtractor(cfg.nouns)
        self.batch_size = max(1, cfg.batch_size)
        log.info(self.paths_note())
        self._noun_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfseg-nouns")

    def paths_note(self) -> str:
        """One line naming which implementation of each stage runs here (optional GPU libraries)."""
        from selfseg_fast.stages.align import cupy_available, resolve_hungarian_solver
        from selfseg_kernels.kmeans_assign import triton_usable

        cc, on_gpu = self.cfg.cluster, self.device.type == "cuda"
        kmeans = "cuML" if cc.kmeans_backend == "cuml" else "batched torch"
        if cc.kmeans_backend == "torch":
            kmeans += " + Triton assignment" if triton_usable(self.device) else " (torch assignment)"
        solver = resolve_hungarian_solver(cc.hungarian_solver, self.device)
        return (
            f"fast engine on {self.device}: encoder SDPA {str(self.encoder.dtype).removeprefix('torch.')}"
            f"{' compiled' if self.cfg.compile else ''}; k-means {kmeans}; "
            f"IoU {'CuPy' if on_gpu and cupy_available() else 'torch'}; Hungarian {solver}; "
            f"CRF/filter conv; captions batched sampler"
        )

    def describe(self, images: list[LoadedImage]) -> list[ImageResult]:
        return list(self.describe_stream(images))

    def describe_stream(self, images: Iterable[LoadedImage]) -> Iterator[ImageResult]:
        """Results in input order; batch i's nouns are found while batch i+1 runs on the GPU."""
        pending: Future | None = None
        for batch in _batches(images, self.batch_size):
            gpu_part = self._gpu_stages_with_backoff(batch)
            if pending is not None:
                yield from pending.result()
            pending = self._noun_worker.submit(self._noun_stage, batch, *gpu_part)
        if pending is not None:
            yield from pending.result()

    # ---- GPU stages ------------------------------------------------------------------------------
    def _gpu_stages_with_backoff(self, batch: list[LoadedImage]) -> tuple:
        """Run the GPU stages; on CUDA out-of-memory split the batch in halves (recursively)."""
        try:
            return self._gpu_stages(batch)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch) // 2
            self.batch_size = max(1, half)
            log.warning("CUDA out of memory at batch %d; halving the batch to %d", len(batch), half)
            first = self._gpu_stages_with_backoff(batch[:half])
            second = self._gpu_stages_with_backoff(batch[half:])
            return _concat_gpu_parts(first, second)

    @torch.inference_mode()
    def _gpu_stages(self, batch: list[LoadedImage]) -> tuple:
        cfg = self.cfg
        timer = StageTimer(sync=True)
        seeds = [image_seed(cfg.seed, image.rgb) for image in batch]
        with timer("encode"):
            features = self.encoder([image.rgb for image in batch])  # {res: PatchFeatures [B, ...]}
        with timer("cluster"):
            grids = cluster_grid_batched(features, cfg, seeds)  # [B, 32, 32]
        caption_tokens = features[max(features)].tokens  # [B, 1024, 1024]: the 512-px patches
        rows: list[tuple[int, int]] = []  # (image index, cluster id) per captioned cluster
        cluster_embeds: list[torch.Tensor] = []  # each [n_c, 1024]
        row_seeds: list[int] = []
        with timer("caption"):
            for b in range(len(batch)):
                for cid, patch_index in cluster_patch_indices(grids[b]).items():
                    rows.append((b, cid))
                    cluster_embeds.append(caption_tokens[b, patch_index.to(caption_tokens.device)])
                    row_seeds.append(derived_seed(seeds[b], cid))
            texts = caption_batched(self.blip, cluster_embeds, cfg, row_seeds)  # [n_rows][cycles]
        captions: list[dict[int, list[str]]] = [{} for _ in batch]
        for (b, cid), caps in zip(rows, texts):
            captions[b][cid] = caps
        per_image = {stage: sec / len(batch) for stage, sec in timer.as_dict().items()}
        return grids.cpu(), captions, [dict(per_image) for _ in batch]

    # ---- CPU stage -------------------------------------------------------------------------------
    def _noun_stage(
        self,
        batch: list[LoadedImage],
        grids: torch.Tensor,
        captions: list[dict[int, list[str]]],
        stage_seconds: list[dict[str, float]],
    ) -> list[ImageResult]:
        timer = StageTimer()
        with timer("nouns"):
            flat = [(b, cid, caps) for b, per in enumerate(captions) for cid, caps in per.items()]
            found = self.nouns.nouns_for_many([caps for _, _, caps in flat])
        cluster_nouns: list[dict[int, list[str]]] = [{} for _ in batch]
        for (b, cid, _), nouns in zip(flat, found):
            cluster_nouns[b][cid] = nouns
        noun_seconds = {"nouns": timer.as_dict()["nouns"] / max(1, len(batch))}
        return [
            build_result(image, grids[b], captions[b], cluster_nouns[b], stage_seconds[b] | noun_seconds)
            for b, image in enumerate(batch)
        ]


def _batches(images: Iterable[LoadedImage], size: int) -> Iterator[list[LoadedImage]]:
    batch: list[LoadedImage] = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _concat_gpu_parts(first: tuple, second: tuple) -> tuple:
    grids = torch.cat([first[0], second[0]])
    return grids, first[1] + second[1], first[2] + second[2]
