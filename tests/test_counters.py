"""The op / host-sync counters (selfseg_fast/counters.py) count what they claim, on CPU tensors."""

from __future__ import annotations

import torch

from selfseg_fast.counters import OpCounter


def test_syncs_are_counted_per_kind_and_stage() -> None:
    x = torch.randn(8, 16)
    with OpCounter() as counter:
        with counter.stage("compute"):
            y = (x @ x.T).relu().sum(1)
            y.view(-1).transpose(0, 0)
        with counter.stage("host"):
            y.max().item()
            y.tolist()
            bool((y > 0).any())
            int(y.argmax())
            y.cpu()
            y.numpy()
    compute, host = counter.get("compute"), counter.get("host")
    assert compute.syncs == 0
    assert compute.launches == 3  # mm, relu, sum: the views launch nothing
    assert compute.ops > compute.launches
    assert host.syncs == 6  # item, tolist, bool, int, cpu, numpy: one each, no double count
    assert set(counter.summary()) == {"compute", "host"}


def test_data_dependent_shapes_are_syncs() -> None:
    y = torch.tensor([3.0, -1.0, 2.0, 3.0])
    with OpCounter() as counter:
        y[y > 0]  # boolean-mask indexing
        torch.unique(y)
        y.nonzero()
        torch.masked_select(y, y > 0)
        torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([2, 1]))
        torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([2, 1]), output_size=3)  # no sync
        torch.where(y > 0, y, 0.0)  # no sync
    sites = counter.get().sync_sites
    assert counter.get().syncs == 5, sites
    assert all("test_counters.py" in site for site in sites)  # the caller is named


def test_nested_stages_count_innermost_and_loops_scale() -> None:
    def loop(n: int) -> OpCounter:
        x = torch.randn(4, 4)
        with OpCounter() as counter, counter.stage("outer"):
            for _ in range(n):
                with counter.stage("inner"):
                    x = x * 2
                _ = float(x.sum())
        return counter

    one, five = loop(1), loop(5)
    assert five.get("inner").launches == 5 * one.get("inner").launches
    assert five.get("outer").syncs == 5 and five.get("inner").syncs == 0
