"""The whole clustering stage: batched path against the reference on structured features."""

from __future__ import annotations

import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.records import PatchFeatures
from selfseg_fast.stages.cluster import (
    cluster_grid_batched,
    cluster_grid_reference,
    cluster_patch_indices,
    to_output_grid,
)


def _features(b: int, g: int, gen: torch.Generator, d: int = 48) -> PatchFeatures:
    """Patch features with 4 spatial regions of distinct means plus noise, and a small position term."""
    yy, xx = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    region = ((yy >= g // 2).long() * 2 + (xx >= g // 3).long()).reshape(-1)
    means = torch.randn(b, 4, d, generator=gen) * 3
    tokens = means[:, region] + torch.randn(b, g * g, d, generator=gen)
    pos = 0.1 * torch.randn(g * g, 16, generator=gen).expand(b, -1, -1)
    return PatchFeatures(g * 16, (g, g), tokens, torch.cat([tokens, pos], -1))


def test_batched_grid_equals_reference_grid():
    gen = torch.Generator().manual_seed(0)
    for cfg in (SelfSegConfig(), SelfSegConfig().authors_code("autoseg")):
        feats = {384: _features(3, 24, gen), 512: _features(3, 32, gen)}
        seeds = [101, 202, 303]
        fast = cluster_grid_batched(feats, cfg, seeds)
        assert fast.shape == (3, 32, 32)
        for b in range(3):
            ref = cluster_grid_reference(feats, b, cfg, seeds[b])
            assert (ref == fast[b]).float().mean() >= 0.99


def test_nearest_resize_24_to_32():
    labels = torch.arange(24 * 24)
    out = to_output_grid(labels, (24, 24), 32).reshape(32, 32)
    for i in (0, 5, 31):
        for j in (0, 7, 31):
            assert out[i, j] == (i * 3 // 4) * 24 + (j * 3 // 4)


def test_patch_indices_cover_grid():
    grid = torch.randint(0, 4, (32, 32))
    idx = cluster_patch_indices(grid)
    assert sorted(idx) == sorted(grid.unique().tolist())
    assert sum(len(v) for v in idx.values()) == 1024
