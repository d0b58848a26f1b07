"""Typed records passed between the BCC stages; each states its tensor shapes once.

B = images in a batch, R = resolutions, N = patches (H*W), D = feature dim, K = max clusters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PatchFeatures:
    """BLIP patch embeddings of one resolution for a batch of images."""

    resolution: int  # input side in px (384 or 512)
    grid: tuple[int, int]  # (H, W) patch grid, e.g. (24, 24) or (32, 32)
    tokens: torch.Tensor  # [B, H*W, 1024] BLIP ViT-L patch embeddings (no CLS)
    with_position: torch.Tensor  # [B, H*W, 1024 + 256] tokens ++ 2-D sin-cos embedding (for k-means)


@dataclass
class ClusterGrid:
    """The denoised cluster map of each image on the output grid."""

    labels: torch.Tensor  # [B, 32, 32] int64, cluster ids 0..K-1 (ids need not be contiguous)

    def cluster_ids(self, b: int) -> list[int]:
        return sorted(int(c) for c in torch.unique(self.labels[b]))


@dataclass
class Captions:
    """Captions per image, per cluster: per_cluster[b][cluster_id] -> list of `cycles` strings."""

    per_cluster: list[dict[int, list[str]]]


@dataclass
class ImageResult:
    """Everything the BCC pipeline found for one image (JSON-serialisable via `to_json`)."""

    path: str
    cluster_grid: list[list[int]]  # 32x32
    captions: dict[int, list[str]]  # cluster id -> captions
    cluster_nouns: dict[int, list[str]]  # cluster id -> nouns
    nouns: list[str]  # union over clusters, first-seen order
    stage_seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None

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
            "error": self.error,
        }
