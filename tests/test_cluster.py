"""The whole clustering stage: batched path against the reference on structured features."""

from __future__ import annotations

import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.records import ClusterGrid, PatchFeatures
from selfseg_fast.stages.cluster import cluster_grid_batched, cluster_grid_reference, to_output_grid


def _features(b: int, g: int, gen: torch.Generator, d: int = 48) -> PatchFeatures:
    """Patch features with 4 spatial regions of distinct means plus noise, and a small position term."""
    yy, xx = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    region = ((yy >= g // 2).long() * 2 + (xx >= g // 3).long()).reshape(-1)
    means = torch.randn(b, 4, d, generator=gen) * 3
    tokens = means[:, region] + torch.randn(b, g * g, d, generator=gen)
    pos = 0.1 * torch.randn(g * g, 16, generator=gen)
    return PatchFeatures(g * 16, (g, g), tokens, pos)


def test_batched_grid_equals_reference_grid():
    gen = torch.Generator().manual_seed(0)
    for cfg in (SelfSegConfig(), SelfSegConfig().authors_code("autoseg")):
        feats = {384: _features(3, 24, gen), 512: _features(3, 32, gen)}
        seeds = [101, 202, 303]
        fast = cluster_grid_batched(feats, cfg, seeds).labels
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


def test_patch_indices_and_rows_cover_grid():
    grids = torch.randint(0, 4, (2, 32, 32))
    grids[1][grids[1] == 2] = 3
    record = ClusterGrid.from_device(grids)
    for b in range(2):
        idx = record.patch_indices(b)
        assert sorted(idx) == sorted(grids[b].unique().tolist()) == record.cluster_ids(b)
        assert sum(len(v) for v in idx.values()) == 1024
        assert all((grids[b].reshape(-1)[torch.from_numpy(v)] == c).all() for c, v in idx.items())
    assert record.rows() == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 3)]


def test_cluster_stage_syncs_do_not_grow_with_the_batch():
    """Host syncs of the whole clustering stage: one k-means check per CHECK_EVERY iterations and
    resolution, one Hungarian copy, one copy of the grids; the same for 1 image or 4 like it."""
    from selfseg_fast.counters import OpCounter

    gen = torch.Generator().manual_seed(1)
    one = {384: _features(1, 24, gen), 512: _features(1, 32, gen)}
    counts = []
    for b in (1, 4):
        feats = {
            r: PatchFeatures(f.resolution, f.grid, f.tokens.repeat(b, 1, 1), f.position)
            for r, f in one.items()
        }
        with OpCounter() as counter:
            cluster_grid_batched(feats, SelfSegConfig(), [7] * b)
        counts.append(counter.get().syncs)
    assert counts[0] == counts[1] <= 6, counts


def test_kmeans_restarts_reach_both_paths():
    gen = torch.Generator().manual_seed(2)
    cfg = SelfSegConfig().with_overrides({"cluster.kmeans_n_init": 3})
    feats = {384: _features(2, 24, gen), 512: _features(2, 32, gen)}
    fast = cluster_grid_batched(feats, cfg, [5, 6]).labels
    for b in range(2):
        assert (cluster_grid_reference(feats, b, cfg, [5, 6][b]) == fast[b]).float().mean() >= 0.99
