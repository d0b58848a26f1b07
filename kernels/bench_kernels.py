"""Micro-benchmark of each custom kernel against its torch fallback (and the CPU reference libraries).

    python -m selfseg_kernels.bench_kernels [--device cuda] [--repeat 20] [--csv out.csv]

Rows: k-means assignment (Triton fused distance+argmin vs torch matmul+argmin), the IoU counts of the
alignment (the torch joint histogram), the batched on-device Hungarian (vs SciPy, problem by problem,
which is what the fast engine runs by default), the batched CRF (vs crfseg, image by image), and the
batched majority filter (vs the per-cell loop). Shapes are the engine's: a batch of B images, 4
k-means problems per image, 1024 patches x 1280 dims, k <= 8. Triton rows need CUDA (on CPU the
kernel only runs in Triton's slow interpreter, which is for correctness tests, not timing).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from selfseg_fast.stages.align import intersections_torch, linear_sum_assignment_batched
from selfseg_fast.stages.denoise import clean_batched, clean_reference, crf_batched, crf_reference
from selfseg_kernels.kmeans_assign import assign_nearest_torch, assign_nearest_triton, triton_importable


def _time(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median milliseconds of `fn` over `repeat` runs after one warm-up (CUDA-synchronised)."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def bench(device: torch.device, batch: int, repeat: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []

    def add(kernel: str, impl: str, ms: float) -> None:
        rows.append(
            {"kernel": kernel, "impl": impl, "device": device.type, "batch": batch, "ms": round(ms, 3)}
        )

    p = 4 * batch
    x = torch.randn(p, 1024, 1280, generator=gen).to(device)
    c = torch.randn(p, 8, 1280, generator=gen).to(device)
    valid = torch.ones(p, 8, dtype=torch.bool, device=device)
    x_sq = (x * x).sum(-1)
    add(
        "kmeans_assign", "torch", _time(lambda: assign_nearest_torch(x, x_sq, c, valid, 1e30), device, repeat)
    )
    if device.type == "cuda" and triton_importable():
        add(
            "kmeans_assign",
            "triton",
            _time(lambda: assign_nearest_triton(x, x_sq, c, valid, 1e30), device, repeat),
        )

    runs = torch.randint(0, 8, (3 * batch, 1024), generator=gen).to(device)
    refs = torch.randint(0, 8, (3 * batch, 1024), generator=gen).to(device)
    add("iou_counts", "torch", _time(lambda: intersections_torch(runs, refs, 8), device, repeat))

    cost = torch.rand(3 * batch, 8, 8, generator=gen, dtype=torch.float64)
    n = torch.full((3 * batch,), 8)
    add(
        "hungarian",
        "batched",
        _time(
            lambda: linear_sum_assignment_batched(cost.to(device), n.to(device), n.to(device)), device, repeat
        ),
    )
    cost_np = cost.numpy()
    add(
        "hungarian",
        "scipy loop",
        _time(lambda: [linear_sum_assignment(m) for m in cost_np], torch.device("cpu"), repeat),
    )

    votes = torch.rand(batch, 8, 32, 32, generator=gen)
    votes = votes / votes.sum(1, keepdim=True)
    ok = torch.ones(batch, 8, dtype=torch.bool)
    votes_d, ok_d = votes.to(device), ok.to(device)
    add("crf", "batched", _time(lambda: crf_batched(votes_d, ok_d), device, repeat))
    add(
        "crf",
        "crfseg loop",
        _time(lambda: [crf_reference(v) for v in votes], torch.device("cpu"), max(1, repeat // 4)),
    )

    grids = torch.randint(0, 8, (batch, 32, 32), generator=gen)
    grids_d = grids.to(device)
    add("majority_filter", "batched", _time(lambda: clean_batched(grids_d, 8), device, repeat))
    add(
        "majority_filter",
        "loop",
        _time(lambda: [clean_reference(g.numpy()) for g in grids], torch.device("cpu"), 1),
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--csv", help="also write the rows as CSV")
    args = parser.parse_args(argv)
    rows = bench(torch.device(args.device), args.batch, args.repeat)
    print(f"{'kernel':<16} {'impl':<12} {'device':<6} {'batch':>5} {'ms':>10}")
    for row in rows:
        print(
            f"{row['kernel']:<16} {row['impl']:<12} {row['device']:<6} {row['batch']:>5} {row['ms']:>10.3f}"
        )
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
