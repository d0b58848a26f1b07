"""Typed records passed between the BCC stages; each states its tensor shapes once.

B = images in a batch, N = patches (H*W), C = token dim, R = captioned clusters (rows) of a batch.

    encode  -> PatchFeatures per resolution
    cluster -> ClusterGrid
    caption -> CaptionTokens (token ids on the host)
    (DeviceBatch: the above, handed to the host stage)
    nouns   -> text decoded and nouns found off the critical path -> ImageResult per image
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from selfseg_fast.host import to_host
from selfseg_fast.images import LoadedImage


@dataclass(frozen=True)
class PatchFeatures:
    """BLIP patch embeddings of one resolution for a batch of images."""

    resolution: int  # input side in px (384 or 512)
    grid: tuple[int, int]  # (H, W) patch grid, e.g. (24, 24) or (32, 32)
    tokens: torch.Tensor  # [B, H*W, C] BLIP patch embeddings (no CLS), in the encoder's dtype
    position: torch.Tensor  # [H*W, P] 2-D sin-cos embedding (float32, P = 256), clustering only

    def for_clustering(self) -> torch.Tensor:
        """[B, H*W, C + P] float32: tokens ++ position, what k-means clusters."""
        tokens = self.tokens.float()
        return torch.cat([tokens, self.position.to(tokens.device).expand(tokens.shape[0], -1, -1)], -1)


@dataclass(frozen=True)
class ClusterGrid:
    """The denoised cluster map of each image of a batch on the output grid (32 x 32)."""

    labels: torch.Tensor  # [B, 32, 32] int64 cluster ids on the compute device (ids need not be contiguous)
    host: np.ndarray  # [B, 32, 32] int64, the same labels on the host (one copy per batch)

    @classmethod
    def from_device(cls, labels: torch.Tensor) -> ClusterGrid:
        return cls(labels, to_host(labels))

    def cluster_ids(self, b: int) -> list[int]:
        """Cluster ids present in image `b`, ascending."""
        return [int(c) for c in np.unique(self.host[b])]

    def rows(self) -> list[tuple[int, int]]:
        """(image, cluster id) for every cluster of every image: image-major, ids ascending."""
        return [(b, c) for b in range(len(self.host)) for c in self.cluster_ids(b)]

    def patch_indices(self, b: int) -> dict[int, np.ndarray]:
        """{cluster id: flat patch indices} of image `b` (host arrays; no device sync)."""
        flat = self.host[b].reshape(-1)
        return {c: np.flatnonzero(flat == c) for c in self.cluster_ids(b)}


@dataclass(frozen=True)
class CaptionTokens:
    """The sampler's output for a batch: token ids of every (row, cycle) on the host."""

    rows: list[tuple[int, int]]  # (image, cluster id) per captioned cluster
    cycles: int
    ids: np.ndarray  # [R * cycles, T] int64 ([DEC] + prompt first; [SEP] then padding at the end)


@dataclass(frozen=True)
class CaptionTexts:
    """Adaptive or deadline-bound captioning (stages/adaptive.py): each row ran its own number of
    cycles, already decoded and tagged on the way."""

    rows: list[tuple[int, int]]  # (image, cluster id) per captioned cluster
    captions: list[list[str]]  # per row: the captions of the cycles it ran
    nouns: list[list[str]]  # per row: its nouns, first-seen order
    degraded: list[bool]  # per image: a deadline stopped some of its rows


@dataclass(frozen=True)
class DeviceBatch:
    """What the device stages hand to the host stage for one batch."""

    images: list[LoadedImage]  # [B]
    grid: ClusterGrid
    captions: CaptionTokens | CaptionTexts
    seconds: dict[str, float]  # device stage -> host seconds per image
    device_seconds: Callable[[], dict[str, float] | None] = lambda: None  # resolves CUDA events (or None)


@dataclass
class ImageResult:
    """Everything the BCC pipeline found for one image (JSON-serialisable via `to_json`)."""

    path: str
    cluster_grid: list[list[int]]  # 32x32
    captions: dict[int, list[str]]  # cluster id -> captions
    cluster_nouns: dict[int, list[str]]  # cluster id -> nouns
    nouns: list[str]  # union over clusters, first-seen order
    stage_seconds: dict[str, float] = field(default_factory=dict)
    degraded: bool = False  # a deadline cut the caption cycles short: the names found so far

    @classmethod
    def build(
        cls,
        image: LoadedImage,
        grid: np.ndarray | torch.Tensor,  # [32, 32] cluster ids
        captions: dict[int, list[str]],
        cluster_nouns: dict[int, list[str]],
        stage_seconds: dict[str, float],
        degraded: bool = False,
    ) -> ImageResult:
        """One image's record; the noun union keeps first-seen order over clusters in id order."""
        union = list(dict.fromkeys(noun for cid in sorted(cluster_nouns) for noun in cluster_nouns[cid]))
        return cls(
            path=image.path,
            cluster_grid=np.asarray(grid, dtype=np.int64).tolist(),
            captions={int(c): list(v) for c, v in captions.items()},
            cluster_nouns={int(c): list(v) for c, v in cluster_nouns.items()},
            nouns=union,
            stage_seconds=stage_seconds,
            degraded=degraded,
        )

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "nouns": self.nouns,
            "clusters": {
                str(c): {"captions": self.captions.get(c, []), "nouns": self.cluster_nouns.get(c, [])}
                for c in sorted(self.captions)
            },
            "cluster_grid": self.cluster_grid,
            "stage_seconds": self.stage_seconds,
            "degraded": self.degraded,
        }
