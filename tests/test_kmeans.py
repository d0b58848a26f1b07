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


def test_empty_cluster_relocation_removes_the_point_from_its_old_cluster():
    """scikit-learn >= 0.23: the point moved into an empty cluster also leaves its old cluster's mean
    (issue 12's example: the far-away start centre 100 is empty after the first assignment)."""
    from sklearn.cluster import KMeans

    x = torch.tensor([[-0.3], [-1.3], [-2.7], [-0.4], [0.8], [0.4], [0.6], [-1.8]], dtype=torch.float64)
    init = torch.tensor([[100.0], [0.6], [0.4]], dtype=torch.float64)
    want = KMeans(3, init=init.numpy(), n_init=1).fit(x.numpy()).labels_
    assert want.tolist() == [2, 2, 0, 2, 1, 1, 1, 0]
    for dtype in (torch.float64, torch.float32):
        got = kmeans_batched(x[None].to(dtype), [3], [0], init=init[None].to(dtype))[0]
        assert got.tolist() == want.tolist()


def test_relocation_matches_sklearn_from_the_same_start_centres():
    """Random problems whose start centres leave one or two clusters empty: same labels as scikit-learn
    started from the same centres (float64, so rounding cannot flip a point)."""
    from sklearn.cluster import KMeans

    gen = torch.Generator().manual_seed(11)
    checked = 0
    for trial in range(12):
        k = 3 + trial % 4
        x = _blobs(1, 60, 3, gen)[0].double()
        init = x[torch.randperm(60, generator=gen)[:k]].clone()
        init[: 1 + trial % 2] += 50.0  # far away: empty after the first assignment
        want = KMeans(k, init=init.numpy(), n_init=1, tol=1e-4).fit(x.numpy()).labels_
        got = kmeans_batched(x[None], [k], [0], init=init[None])[0]
        assert got.tolist() == want.tolist(), f"trial {trial}"
        checked += 1
    assert checked == 12


def test_restarts_keep_the_best_inertia_in_both_paths():
    """kmeans_n_init: n restarts from `restart_seeds`, lowest inertia kept; fast and reference agree."""
    gen = torch.Generator().manual_seed(3)
    ks = [8, 5, 8, 6]
    x = _blobs(len(ks), 150, 12, gen)
    seeds = [21, 22, 23, 24]
    one = kmeans_batched(x, ks, seeds)
    three = kmeans_batched(x, ks, seeds, n_init=3)
    for i, (k, seed) in enumerate(zip(ks, seeds)):
        assert inertia(x[i], three[i]) <= inertia(x[i], one[i]) + 1e-6
        ref = kmeans_reference(x[i], k, seed, n_init=3)
        assert (three[i] == ref).float().mean() >= 0.99
    assert any(not torch.equal(a, b) for a, b in zip(one, three))  # the restarts changed something


def test_host_syncs_are_one_per_block_of_iterations_whatever_the_problems(monkeypatch):
    """One host check per CHECK_EVERY Lloyd iterations (a convergence mask in between), never one per
    iteration; the same count for 2 or 32 problems of the same difficulty."""
    import selfseg_fast.stages.kmeans as km
    from selfseg_fast.counters import OpCounter

    steps = []
    real_step = km._lloyd_step
    monkeypatch.setattr(km, "_lloyd_step", lambda *a: steps.append(1) or real_step(*a))
    gen = torch.Generator().manual_seed(8)
    base = torch.randn(2, 200, 16, generator=gen)  # no structure: many iterations
    syncs = []
    for copies in (1, 16):
        steps.clear()
        with OpCounter() as counter:
            kmeans_batched(base.repeat(copies, 1, 1), [8] * 2 * copies, [5, 6] * copies)
        syncs.append(counter.get().syncs)
        assert counter.get().syncs == -(-len(steps) // km.CHECK_EVERY)
    assert syncs[0] == syncs[1] and len(steps) > 2 * syncs[1], (syncs, len(steps))


@pytest.mark.gpu
def test_cuda_graph_blocks_equal_eager():
    gen = torch.Generator().manual_seed(12)
    x = _blobs(6, 300, 24, gen).cuda()
    ks, seeds = [2, 8, 3, 8, 5, 8], list(range(6))
    eager = kmeans_batched(x, ks, seeds, check_every=4)
    graphed = kmeans_batched(x, ks, seeds, check_every=4, cuda_graphs=True)
    assert torch.equal(eager, graphed)
