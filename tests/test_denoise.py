"""CRF and majority filter: batched convolutions against crfseg and the per-cell loop."""

from __future__ import annotations

import numpy as np
import torch

from selfseg_fast.stages.denoise import (
    clean_batched,
    clean_reference,
    crf_batched,
    crf_reference,
    majority_filter_reference,
)


def test_batched_crf_matches_crfseg_with_channel_masks():
    gen = torch.Generator().manual_seed(0)
    counts = [8, 3, 5, 2]
    votes = torch.zeros(len(counts), 8, 32, 32)
    ok = torch.zeros(len(counts), 8, dtype=torch.bool)
    for b, c in enumerate(counts):
        v = torch.rand(c, 32, 32, generator=gen)
        votes[b, :c] = v / v.sum(0)
        ok[b, :c] = True
    fast = crf_batched(votes, ok, 6.0, 0.8, 5)
    for b, c in enumerate(counts):
        ref = crf_reference(votes[b, :c], 6.0, 0.8, 5)
        torch.testing.assert_close(fast[b, :c], ref, rtol=0, atol=1e-5)
        assert torch.isneginf(fast[b, c:]).all()


def test_crf_is_channels_first_smoothing():
    # one stray patch inside a uniform region is voted away by its neighbours
    votes = torch.zeros(2, 16, 16)
    votes[0] = 0.9
    votes[1] = 0.1
    votes[:, 8, 8] = torch.tensor([0.4, 0.6])
    out = crf_reference(votes).argmax(0)
    assert out[8, 8] == 0


def test_majority_filter_batched_equals_loop_and_stops():
    rng = np.random.default_rng(3)
    grids = torch.tensor(rng.integers(0, 6, (5, 32, 32)))
    fast = clean_batched(grids, 8, 3, 8)
    for b in range(5):
        assert np.array_equal(fast[b].numpy(), clean_reference(grids[b].numpy(), 3, 8))


def test_majority_filter_ties_go_to_smallest_label():
    grid = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    # centre window: three 0s, three 1s, three 2s -> 0
    assert majority_filter_reference(grid)[1, 1] == 0


def test_single_channel_crf_is_crfseg_binary_case():
    """crfseg treats one channel as a binary problem (a zero second channel, the difference returned);
    the batched CRF does the same for an image with one cluster, next to images with more."""
    gen = torch.Generator().manual_seed(2)
    votes = torch.rand(3, 4, 16, 16, generator=gen)
    ok = torch.zeros(3, 4, dtype=torch.bool)
    ok[0, :1], ok[1, :3], ok[2, :1] = True, True, True
    fast = crf_batched(votes, ok, 6.0, 0.8, 5)
    for b, c in ((0, 1), (1, 3), (2, 1)):
        torch.testing.assert_close(fast[b, :c], crf_reference(votes[b, :c], 6.0, 0.8, 5), rtol=0, atol=1e-5)
        assert torch.isneginf(fast[b, c:]).all()
    alone = crf_batched(votes[:1, :1], ok[:1, :1])  # a batch whose only channel is the one
    torch.testing.assert_close(alone[0], crf_reference(votes[0, :1]), rtol=0, atol=1e-5)


def test_majority_filter_never_waits_for_the_host():
    from selfseg_fast.counters import OpCounter

    grids = torch.randint(0, 6, (4, 32, 32))
    with OpCounter() as counter:
        clean_batched(grids, 8, 3, 8)
    assert counter.get().syncs == 0
