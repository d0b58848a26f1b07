"""Stage 2: patch features -> one denoised 32x32 cluster grid per image (BLIP-Cluster-Caption's "Cluster").

    features {384: [B, 576, 1280], 512: [B, 1024, 1280]}          (tokens ++ 2-D sin-cos)
      -> k-means, k in {2, 8}, at each resolution                  (4 runs per image)
      -> each run on the 32x32 grid                                 [B, R, 32*32]
      -> Hungarian alignment to the richest run, vote shares        [B, C, 32, 32]
      -> CRF, argmax, 3x3 majority filter until stable              [B, 32, 32]

How a 24x24 (384 px) run reaches the 32x32 grid (the paper leaves it open): its label map is
resized with nearest-neighbour sampling (cell (i, j) of the 32x32 grid takes the label of 24x24
cell (floor(0.75 i), floor(0.75 j))). Labels are categories, so interpolating them is meaningless;
nearest keeps every run's labels unchanged in kind, lets all runs be compared patch for patch on the
grid the captioner uses (the 512-px patches), and is what the authors' code does (OpenCV
INTER_NEAREST, the same sampling rule).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.plan import ExecutionPlan, resolve_plan
from selfseg_fast.records import ClusterGrid, PatchFeatures
from selfseg_fast.seeding import derived_seed
from selfseg_fast.stages.align import (
    align_and_vote_batched,
    align_runs_reference,
    vote_distribution_reference,
)
from selfseg_fast.stages.denoise import clean_batched, clean_reference, crf_batched, crf_reference
from selfseg_fast.stages.kmeans import kmeans_batched, kmeans_cuml, kmeans_reference


def kmeans_seed(image_seed: int, resolution: int, k: int) -> int:
    """The seed of one k-means run: depends on the image, the resolution and k only."""
    return derived_seed(image_seed, resolution, k)


def to_output_grid(labels: torch.Tensor, grid: tuple[int, int], out: int) -> torch.Tensor:
    """[..., h*w] labels on an h x w grid -> [..., out*out] by nearest-neighbour sampling."""
    lead = labels.shape[:-1]
    maps = labels.reshape(-1, 1, *grid).float()
    resized = F.interpolate(maps, size=(out, out), mode="nearest")
    return resized.long().reshape(*lead, out * out)


# ---- reference -------------------------------------------------------------------------------------------
def cluster_grid_reference(
    features: dict[int, PatchFeatures], b: int, cfg: SelfSegConfig, seed: int
) -> torch.Tensor:  # [32, 32] int64
    """Image `b` of `features` through scikit-learn k-means, SciPy Hungarian, crfseg and the loop filter."""
    cc = cfg.cluster
    out = cc.output_grid
    runs: list[np.ndarray] = []
    for res in sorted(features):
        feats = features[res]
        x = feats.for_clustering()[b]  # [N, C + 256]
        for k in cc.k_values:
            labels = kmeans_reference(
                x,
                k,
                kmeans_seed(seed, res, k),
                max_iter=cc.kmeans_max_iter,
                tol=cc.kmeans_tol,
                n_init=cc.kmeans_n_init,
            )
            runs.append(to_output_grid(labels, feats.grid, out).reshape(out, out).numpy())
    aligned = align_runs_reference(runs, cc.align_cost)
    votes = torch.from_numpy(vote_distribution_reference(aligned))  # [C, 32, 32]
    logits = crf_reference(votes, cc.crf_smoothness_weight, cc.crf_smoothness_theta, cc.crf_iterations)
    grid = logits.argmax(0).numpy()
    grid = clean_reference(grid, cc.majority_filter_size, cc.majority_filter_max_iters)
    return torch.from_numpy(grid.astype(np.int64))


# ---- fast ------------------------------------------------------------------------------------------------
def cluster_grid_batched(
    features: dict[int, PatchFeatures],
    cfg: SelfSegConfig,
    seeds: list[int],
    plan: ExecutionPlan | None = None,
) -> ClusterGrid:  # labels [B, 32, 32] int64 (device and host)
    """Every image of the batch at once: one batched k-means per resolution (all k together), batched
    alignment, CRF and filter on the features' device. Host syncs per batch: one per `CHECK_EVERY`
    k-means iterations per resolution, one for the Hungarian problems (plan.hungarian == "scipy"), one
    for the final grids; none that grows with the number of images."""
    cc = cfg.cluster
    plan = plan or resolve_plan(
        cfg.with_overrides({"engine": "fast"}), next(iter(features.values())).tokens.device
    )
    out = cc.output_grid
    runs = []
    for res in sorted(features):
        feats = features[res]
        x = feats.for_clustering()  # [B, N, D] float32
        bsz = x.shape[0]
        ks = [k for _ in range(bsz) for k in cc.k_values]
        problem_seeds = [kmeans_seed(seeds[i], res, k) for i in range(bsz) for k in cc.k_values]
        problems = x.repeat_interleave(len(cc.k_values), 0)  # [B * len(k), N, D]
        options = {"max_iter": cc.kmeans_max_iter, "tol": cc.kmeans_tol, "n_init": cc.kmeans_n_init}
        if plan.kmeans == "cuml":
            labels = kmeans_cuml(problems, ks, problem_seeds, **options)
        else:
            fast = {"use_triton": plan.kmeans_assign == "triton", "cuda_graphs": plan.kmeans_graphs}
            labels = kmeans_batched(problems, ks, problem_seeds, **fast, **options)
        runs.append(to_output_grid(labels, feats.grid, out).reshape(bsz, len(cc.k_values), out * out))
    runs_t = torch.cat(runs, 1)  # [B, R, 32*32] in the reference's run order (resolution, then k)
    k_max = max(cc.k_values)
    votes, channel_ok = align_and_vote_batched(
        runs_t, k_max, cc.align_cost, plan.hungarian
    )  # [B, k, N], [B, k]
    logits = crf_batched(
        votes.float().reshape(-1, k_max, out, out),
        channel_ok,
        cc.crf_smoothness_weight,
        cc.crf_smoothness_theta,
        cc.crf_iterations,
    )
    grids = clean_batched(logits.argmax(1), k_max, cc.majority_filter_size, cc.majority_filter_max_iters)
    return ClusterGrid.from_device(grids)  # the one copy of the grids to the host
