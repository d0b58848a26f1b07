"""k-means: the batched path against the reference (same labels) and against scikit-learn (inertia)."""

from __future__ import annotations

import pytest
import torch

from selfseg_fast.stages.kmeans import inertia, kmeans_batched, kmeans_reference
from selfseg_kernels.kmeans_assign import assign_nearest_torch, assign_nearest_triton, triton


def _blobs(p: int, n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """[p, n, d] points around a few random centres, so k-means has structure to find."""
    centres = torch.randn(p, 6, d, generator=generator) * 2
    which = torch.randint(0, 6, (p, n), generator=generator)
    return centres[torch.arange(p)[:, None], which] + torch.randn(p, n, d, generator=generator)


def test_batched_matches_reference_labels_and_sklearn_inertia():
    gen = torch.Generator().manual_seed(1234)
    ks = [2, 8, 3, 8, 2, 5, 8, 4] * 3
    x = _blobs(len(ks), 300, 40, gen)
    seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (len(ks),), generator=gen)]
    fast = kmeans_batched(x, ks, seeds)
    ratios = []
    for i, (k, seed) in enumerate(zip(ks, seeds)):
        ref = kmeans_reference(x[i], k, seed)
        assert (fast[i] == ref).float().mean() >= 0.99, f"problem {i}: labels differ"
        assert fast[i].max() < k
        sk = kmeans_reference(x[i], k, seed, init="k-means++")  # scikit-learn's own seeding
        ratios.append(inertia(x[i], fast[i]) / inertia(x[i], sk))
    # Same objective as scikit-learn: on average within 1 %, never far worse on one problem.
    assert sum(ratios) / len(ratios) <= 1.01
    assert max(ratios) <= 1.10


def test_result_does_not_depend_on_the_batch():
    gen = torch.Generator().manual_seed(7)
    x = _blobs(3, 200, 16, gen)
    together = kmeans_batched(x, [8, 2, 8], [11, 12, 13])
    alone = kmeans_batched(x[2:3], [8], [13])
    assert torch.equal(together[2], alone[0])


def test_empty_clusters_are_reseeded():
    # 10 distinct points, 8 clusters, many duplicates: every cluster must still be used
    base = torch.randn(10, 5)
    x = base[torch.arange(200) % 10][None]
    labels = kmeans_batched(x, [8], [3])
    assert labels.unique().numel() == 8


@pytest.mark.skipif(triton is None, reason="triton not installed")
def test_triton_assignment_matches_torch():
    gen = torch.Generator().manual_seed(5)
    for p, n, d, k in [(2, 70, 33, 3), (3, 130, 64, 8), (1, 5, 7, 2)]:
        x = torch.randn(p, n, d, generator=gen)
        c = torch.randn(p, k, d, generator=gen)
        valid = torch.rand(p, k, generator=gen) > 0.3
        valid[:, 0] = True
        x_sq = (x * x).sum(-1)
        lt, dt = assign_nearest_triton(x, x_sq, c, valid, 1e30)
        lr, dr = assign_nearest_torch(x, x_sq, c, valid, 1e30)
        torch.testing.assert_close(dt, dr, rtol=1e-4, atol=1e-3)
        assert (lt == lr).float().mean() >= 0.99


@pytest.mark.gpu
def test_cuml_backend_inertia_close_to_sklearn():
    pytest.importorskip("cuml")
    from selfseg_fast.stages.kmeans import kmeans_cuml

    gen = torch.Generator().manual_seed(9)
    x = _blobs(4, 500, 32, gen)
    labels = kmeans_cuml(x.cuda(), [2, 8, 4, 8], [1, 2, 3, 4]).cpu()
    for i, k in enumerate([2, 8, 4, 8]):
        sk = kmeans_reference(x[i], k, i, init="k-means++")
        assert inertia(x[i], labels[i]) <= 1.05 * inertia(x[i], sk)
