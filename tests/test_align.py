"""Alignment: batched Hungarian exactly as SciPy (ties included), batched votes exactly as the reference."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from selfseg_fast.stages.align import (
    align_and_vote_batched,
    align_runs_reference,
    linear_sum_assignment_batched,
    match_scores_batched,
    match_scores_reference,
    reference_run_index,
    vote_distribution_reference,
)


def test_hungarian_matches_scipy_exactly_with_ties_and_rectangles():
    rng = np.random.default_rng(0)
    problems = 300
    n_rows = rng.integers(1, 9, problems)
    n_cols = np.array([rng.integers(r, 9) for r in n_rows])
    cost = np.zeros((problems, 8, 8))
    for p in range(problems):
        shape = (n_rows[p], n_cols[p])
        # a third continuous, a third with many ties, a third all-equal (pure tie-breaking)
        kind = p % 3
        block = (
            rng.random(shape)
            if kind == 0
            else rng.integers(0, 3, shape) / 2.0
            if kind == 1
            else np.ones(shape)
        )
        cost[p, : shape[0], : shape[1]] = block
    got = linear_sum_assignment_batched(torch.tensor(cost), torch.tensor(n_rows), torch.tensor(n_cols))
    for p in range(problems):
        rows, cols = linear_sum_assignment(cost[p, : n_rows[p], : n_cols[p]])
        assert np.array_equal(rows, np.arange(n_rows[p]))
        assert np.array_equal(got[p, : n_rows[p]].numpy(), cols), f"problem {p}"
        assert (got[p, n_rows[p] :] == -1).all()


def test_iou_scores_match_reference():
    rng = np.random.default_rng(1)
    run, ref = rng.integers(0, 5, (32, 32)), rng.integers(0, 8, (32, 32))
    ref[ref == 3] = 4  # an empty reference cluster
    for cost in ("iou", "disagreement"):
        scores, run_ids, ref_ids = match_scores_reference(run, ref, cost)
        batched = match_scores_batched(
            torch.tensor(run).reshape(1, -1), torch.tensor(ref).reshape(1, -1), 8, cost
        )[0]
        np.testing.assert_allclose(batched[run_ids][:, ref_ids].numpy(), scores, rtol=0, atol=1e-12)


def _random_runs(rng, b, r, k_values):
    runs = np.zeros((b, r, 32, 32), dtype=np.int64)
    for i in range(b):
        base = rng.integers(0, 8, (4, 4)).repeat(8, 0).repeat(8, 1)
        for j in range(r):
            k = k_values[j % len(k_values)]
            noisy = np.where(rng.random((32, 32)) < 0.2, rng.integers(0, 8, (32, 32)), base)
            perm = rng.permutation(8)  # runs label the same regions with other ids
            runs[i, j] = perm[noisy] % k
    return runs


def test_batched_alignment_and_votes_equal_reference():
    rng = np.random.default_rng(2)
    for cost, solver in (("iou", "batched"), ("disagreement", "batched"), ("iou", "scipy")):
        runs = _random_runs(rng, 6, 4, [2, 8])
        votes, ok = align_and_vote_batched(torch.tensor(runs).reshape(6, 4, -1), 8, cost, solver)
        for b in range(6):
            aligned = align_runs_reference(list(runs[b]), cost)
            ref_votes = vote_distribution_reference(aligned)  # [C, 32, 32]
            c = ref_votes.shape[0]
            assert int(ok[b].sum()) == c
            np.testing.assert_allclose(votes[b, :c].reshape(c, 32, 32).numpy(), ref_votes, rtol=0, atol=1e-12)
            assert (votes[b, c:] == 0).all()


def test_reference_run_is_first_with_most_clusters():
    runs = [np.array([[0, 1]]), np.array([[0, 2]]), np.array([[0, 0]])]
    assert reference_run_index(runs) == 0


def test_torch_intersections_count_label_pairs():
    from selfseg_fast.stages.align import intersections_torch

    gen = torch.Generator().manual_seed(0)
    runs, refs = torch.randint(0, 5, (3, 200), generator=gen), torch.randint(0, 5, (3, 200), generator=gen)
    inter, size_a, size_b = intersections_torch(runs, refs, 5)
    for p in range(3):
        for a in range(5):
            assert size_a[p, a] == (runs[p] == a).sum() and size_b[p, a] == (refs[p] == a).sum()
            for b in range(5):
                assert inter[p, a, b] == ((runs[p] == a) & (refs[p] == b)).sum()


def test_hungarian_with_more_rows_than_columns_is_solved_transposed():
    """Tall problems: exactly SciPy's assignment (rows left out get -1), on the device and on the host
    (issue 12: a 5 x 3 problem used to return a partial, non-optimal assignment)."""
    from selfseg_fast.stages.align import solve_assignments_on_host

    rng = np.random.default_rng(5)
    problems = 120
    n_rows, n_cols = rng.integers(1, 9, problems), rng.integers(1, 9, problems)
    cost = np.zeros((problems, 8, 8))
    for p in range(problems):
        shape = (n_rows[p], n_cols[p])
        cost[p, : shape[0], : shape[1]] = rng.random(shape) if p % 2 else rng.integers(0, 3, shape) / 2.0
    args = torch.tensor(cost), torch.tensor(n_rows), torch.tensor(n_cols)
    for got in (linear_sum_assignment_batched(*args), solve_assignments_on_host(*args)):
        for p in range(problems):
            rows, cols = linear_sum_assignment(cost[p, : n_rows[p], : n_cols[p]])
            want = np.full(8, -1)
            want[rows] = cols
            assert np.array_equal(got[p].numpy(), want), f"problem {p}"
    assert (n_rows > n_cols).sum() > 30  # the test is about tall problems


def test_alignment_host_syncs_per_batch_are_constant():
    """The on-device solver never waits for the host; the SciPy solver copies all the small problems of
    a batch at once: one sync, for 1 image or 6."""
    from selfseg_fast.counters import OpCounter

    rng = np.random.default_rng(4)
    for b in (1, 6):
        runs = torch.tensor(_random_runs(rng, b, 4, [2, 8])).reshape(b, 4, -1)
        for solver, syncs in (("batched", 0), ("scipy", 1)):
            with OpCounter() as counter:
                align_and_vote_batched(runs, 8, "iou", solver)
            assert counter.get().syncs == syncs, (b, solver, counter.get().sync_sites)
