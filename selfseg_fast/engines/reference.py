"""The reference engine: one image at a time through the plain, faithful version of every stage.

Everything the fast engine computes is held to this. Slow by design: HF BLIP in fp32 (eager
attention), scikit-learn k-means, SciPy Hungarian, crfseg, HF `generate` per cluster and cycle,
spaCy one caption at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.images import LoadedImage
from selfseg_fast.models.blip import load_blip
from selfseg_fast.plan import resolve_plan
from selfseg_fast.records import ClusterGrid, ImageResult
from selfseg_fast.seeding import derived_seed, image_seed
from selfseg_fast.stages.adaptive import CycleTracker
from selfseg_fast.stages.caption import caption_reference
from selfseg_fast.stages.cluster import cluster_grid_reference
from selfseg_fast.stages.features import encode_reference
from selfseg_fast.stages.nouns import NounExtractor
from selfseg_fast.timing import StageTimer


class ReferenceEngine:
    """Per-image loop over the reference stages (fp32)."""

    name = "reference"

    def __init__(self, cfg: SelfSegConfig) -> None:
        self.cfg = cfg
        self.plan = resolve_plan(cfg, engine="reference")
        self.device = self.plan.device
        self.blip = load_blip(cfg, self.device)
        self.nouns = NounExtractor(cfg.nouns)

    def describe(self, images: list[LoadedImage]) -> list[ImageResult]:
        return [self.describe_one(image) for image in images]

    def describe_stream(self, images: Iterable[LoadedImage]) -> Iterator[ImageResult]:
        for image in images:
            yield self.describe_one(image)

    @torch.inference_mode()
    def describe_one(self, image: LoadedImage) -> ImageResult:
        cfg = self.cfg
        timer = StageTimer(sync=True)
        seed = image_seed(cfg.seed, image.rgb)
        with timer("encode"):
            features = encode_reference(self.blip, [image.rgb], cfg)  # {res: PatchFeatures, B=1}
        with timer("cluster"):
            grid = cluster_grid_reference(features, 0, cfg, seed)  # [32, 32]
        caption_tokens = features[max(features)].tokens[0]  # [32*32, 1024]: the 512-px patches
        captions: dict[int, list[str]] = {}
        degraded = False
        late = None if image.deadline is None else (lambda: time.monotonic() >= image.deadline)
        with timer("caption"):
            for cid, patch_index in ClusterGrid.from_device(grid[None]).patch_indices(0).items():
                index = torch.from_numpy(patch_index).to(caption_tokens.device)
                embeds = caption_tokens[index]  # [n_c, 1024]
                caps = caption_reference(self.blip, embeds, cfg, derived_seed(seed, cid), late)
                if caps is None:  # the deadline passed: the names of the clusters captioned so far
                    degraded = True
                    break
                captions[cid] = caps
        with timer("nouns"):
            if cfg.caption.adaptive_patience:  # the adaptive rule applied to the cycles, in order
                captions = {cid: self._adaptive_prefix(caps) for cid, caps in captions.items()}
            cluster_nouns = {cid: self.nouns.nouns_for_reference(caps) for cid, caps in captions.items()}
        return ImageResult.build(image, grid, captions, cluster_nouns, timer.as_dict(), degraded)

    def _adaptive_prefix(self, captions: list[str]) -> list[str]:
        """The cycles an adaptive run keeps (stages/adaptive.py): up to the stop by patience."""
        tracker = CycleTracker(1, self.cfg.caption.cycles, self.cfg.caption.adaptive_patience)
        for caption, nouns in zip(captions, self.nouns.extract(captions)):
            tracker.add(0, caption, nouns)
        return tracker.captions[0]
