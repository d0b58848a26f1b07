"""Stage 2a: k-means on patch features. Reference: scikit-learn. Fast: every problem of a batch at once.

Both follow scikit-learn's Lloyd k-means: greedy k-means++ seeding (2 + ln k candidate centres per
step, the one lowering the potential most wins), Lloyd iterations until the squared centre shift is
<= tol * mean feature variance (or labels stop changing), at most `max_iter` iterations, a final
assignment to the last centres, and empty clusters re-seeded with the points farthest from their
centres. Each problem draws its seeding randomness from its own seed, so a result never depends on
the batch it ran in, and both paths start Lloyd from the same k-means++ centres. Parity: the fast
labels match the reference's (float32 vs float64 may flip near-equidistant points), and inertia is
within 1 % of scikit-learn's own k-means++ over many random problems (tested).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from selfseg_kernels.kmeans_assign import assign_nearest


# ---- reference -----------------------------------------------------------------------------------------
def kmeans_plus_plus_reference(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ (scikit-learn's algorithm) on [N, D] float64 -> [k, D] initial centres.

    Written plainly, one candidate at a time, from the same per-problem random draws the batched
    seeding uses, so both engines start Lloyd from the same centres.
    """
    first, uniforms = _seeding_draws(len(x), [k], [seed])
    centres = [x[int(first[0])]]
    closest = ((x - centres[0]) ** 2).sum(1)
    for step in range(k - 1):
        draws = uniforms[0, step][~torch.isnan(uniforms[0, step])].numpy()
        best_potential, best_index, best_closest = np.inf, -1, None
        for u in draws:
            index = min(int(np.searchsorted(np.cumsum(closest), u * closest.sum())), len(x) - 1)
            candidate_closest = np.minimum(closest, ((x - x[index]) ** 2).sum(1))
            if candidate_closest.sum() < best_potential:
                best_potential, best_index, best_closest = candidate_closest.sum(), index, candidate_closest
        centres.append(x[best_index])
        closest = best_closest
    return np.stack(centres)


def kmeans_reference(
    x: torch.Tensor,  # [N, D] features of one image at one resolution
    k: int,
    seed: int,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    init: str = "seeded",
) -> torch.Tensor:  # [N] int64 labels in 0..k-1
    """scikit-learn's KMeans (Lloyd, float64). `init="seeded"`: k-means++ from our per-problem draws
    (`kmeans_plus_plus_reference`); `init="k-means++"`: scikit-learn's own seeding with random_state."""
    from sklearn.cluster import KMeans

    data = x.detach().to("cpu", torch.float64).numpy()
    k = min(k, len(np.unique(data, axis=0)))  # as many clusters as distinct points at most
    if init == "seeded":
        centred = data - data.mean(0)
        start = kmeans_plus_plus_reference(centred, k, seed) + data.mean(0)
        model = KMeans(n_clusters=k, init=start, n_init=1, max_iter=max_iter, tol=tol)
    else:
        model = KMeans(
            n_clusters=k, init="k-means++", n_init=1, max_iter=max_iter, tol=tol, random_state=seed
        )
    return torch.from_numpy(model.fit_predict(data).astype(np.int64))


def inertia(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of squared distances of points [N, D] to their cluster means (labels [N])."""
    x = x.double()
    total = 0.0
    for c in labels.unique():
        members = x[labels == c]
        total += float(((members - members.mean(0)) ** 2).sum())
    return total


# ---- fast ----------------------------------------------------------------------------------------------
def _squared_distances(x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[P, N, D], [P, N], [P, K, D] -> [P, N, K] squared Euclidean distances (matmul form, >= 0)."""
    c_sq = (centres * centres).sum(-1)  # [P, K]
    d = x_sq[:, :, None] - 2.0 * torch.bmm(x, centres.transpose(1, 2)) + c_sq[:, None, :]
    return d.clamp_min_(0.0)


def _seeding_draws(n: int, ks: list[int], seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem random draws for k-means++ from each problem's own seed (so a problem's result
    never depends on what else is in the batch): first centre [P] and uniforms [P, k_max - 1, T]
    (NaN where a problem has fewer steps or trials)."""
    k_max = max(ks)
    t_max = 2 + int(math.log(k_max))
    first = torch.empty(len(ks), dtype=torch.int64)
    uniforms = torch.full((len(ks), max(k_max - 1, 0), t_max), float("nan"), dtype=torch.float64)
    for i, (k, seed) in enumerate(zip(ks, seeds)):
        gen = torch.Generator().manual_seed(int(seed))
        first[i] = torch.randint(n, (1,), generator=gen)
        trials = 2 + int(math.log(k))
        uniforms[i, : k - 1, :trials] = torch.rand(k - 1, trials, generator=gen, dtype=torch.float64)
    return first, uniforms


def kmeans_plus_plus_batched(
    x: torch.Tensor,  # [P, N, D]
    x_sq: torch.Tensor,  # [P, N]
    first: torch.Tensor,  # [P] index of the first centre
    uniforms: torch.Tensor,  # [P, k_max - 1, T] draws in [0, 1); NaN = unused trial
) -> torch.Tensor:  # [P, k_max, D]
    """Greedy k-means++ seeding for P problems at once (scikit-learn's variant: 2 + ln k trials)."""
    p, n, _ = x.shape
    rows = torch.arange(p, device=x.device)
    first, uniforms = first.to(x.device), uniforms.to(x.device)
    centres = [x[rows, first]]  # each [P, D]
    closest = _squared_distances(x, x_sq, centres[0][:, None]).squeeze(-1)  # [P, N]
    for step in range(uniforms.shape[1]):
        potential = closest.sum(1, keepdim=True).double()  # [P, 1]
        draw = uniforms[:, step]  # [P, T]
        used = ~torch.isnan(draw)
        u = (draw.nan_to_num(0.0) * potential).to(closest.dtype)
        candidates = torch.searchsorted(closest.cumsum(1), u).clamp_(max=n - 1)  # [P, T]
        cand_points = x[rows[:, None], candidates]  # [P, T, D]
        d_cand = _squared_distances(x, x_sq, cand_points)  # [P, N, T]
        new_closest = torch.minimum(closest[:, :, None], d_cand)  # [P, N, T]
        trial_potential = new_closest.sum(1).masked_fill(~used, float("inf"))
        best = trial_potential.argmin(1)  # [P] (problems past their k keep an unused centre)
        closest = new_closest[rows, :, best]
        centres.append(cand_points[rows, best])
    return torch.stack(centres, 1)


def kmeans_batched(
    x: torch.Tensor,  # [P, N, D] one row per (image, resolution, k) problem; same N within a call
    ks: list[int],  # [P] clusters wanted per problem (<= N)
    seeds: list[int],  # [P] one seed per problem
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> torch.Tensor:  # [P, N] int64 labels, each problem's labels in 0..k_p-1
    """Lloyd k-means for P problems in one batched computation (padded to max k with a validity mask)."""
    p, n, _ = x.shape
    device = x.device
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    ks = [int(k) for k in ks]
    ks_t = torch.as_tensor(ks, device=device, dtype=torch.int64)
    k_max = max(ks)
    valid = torch.arange(k_max, device=device)[None, :] < ks_t[:, None]  # [P, K]
    big = torch.finfo(work.dtype).max / 4

    # Centre the data per problem (as scikit-learn does) for a better-conditioned matmul distance.
    work = work - work.mean(1, keepdim=True)
    x_sq = (work * work).sum(-1)  # [P, N]
    tol_abs = work.var(1, unbiased=False).mean(-1) * tol  # [P], scikit-learn's tolerance
    centres = kmeans_plus_plus_batched(work, x_sq, *_seeding_draws(n, ks, seeds))  # [P, K, D]
    rows = torch.arange(p, device=device)

    labels = torch.full((p, n), -1, dtype=torch.int64, device=device)
    active = torch.ones(p, dtype=torch.bool, device=device)
    for _ in range(max_iter):
        new_labels, dist = assign_nearest(work, x_sq, centres, valid, big)  # [P, N], [P, N]
        one_hot = torch.zeros(p, n, k_max, device=device, dtype=work.dtype)
        one_hot.scatter_(2, new_labels[:, :, None], 1.0)
        counts = one_hot.sum(1)  # [P, K]
        sums = torch.bmm(one_hot.transpose(1, 2), work)  # [P, K, D]
        new_centres = sums / counts.clamp_min(1.0)[:, :, None]
        empty = (counts == 0) & valid
        if bool(empty.any()):  # re-seed empty clusters at the farthest points (scikit-learn's rule)
            order = dist.argsort(1, descending=True)  # [P, N]
            slot = empty.long().cumsum(1) - 1  # [P, K]: 0 for the first empty cluster, 1 ...
            far = order.gather(1, slot.clamp_min(0))  # [P, K]
            new_centres = torch.where(empty[:, :, None], work[rows[:, None], far], new_centres)
        new_centres = torch.where(valid[:, :, None], new_centres, centres)
        shift = ((new_centres - centres) ** 2).sum((1, 2))  # [P]
        unchanged = (new_labels == labels).all(1)
        centres = torch.where(active[:, None, None], new_centres, centres)
        labels = torch.where(active[:, None], new_labels, labels)
        active = active & ~unchanged & (shift > tol_abs)
        if not bool(active.any()):
            break
    final, _ = assign_nearest(work, x_sq, centres, valid, big)
    return final


# ---- cuML ----------------------------------------------------------------------------------------------
def kmeans_cuml(
    x: torch.Tensor, ks: list[int], seeds: list[int], *, max_iter: int = 300, tol: float = 1e-4
) -> torch.Tensor:  # [P, N] int64
    """cuML's KMeans (k-means||, GPU) on each problem of [P, N, D]; needs CUDA tensors and cuML."""
    try:
        import cupy
        from cuml.cluster import KMeans as CumlKMeans
    except ImportError as exc:
        from selfseg_fast.errors import SelfSegError

        raise SelfSegError(
            "--set cluster.kmeans_backend=cuml needs cuML and CuPy on a CUDA machine "
            "(pip install cuml-cu12); the default 'torch' backend needs neither"
        ) from exc
    out = torch.empty(x.shape[:2], dtype=torch.int64, device=x.device)
    for p, (k, seed) in enumerate(zip(ks, seeds)):
        data = cupy.from_dlpack(x[p].float().contiguous())
        model = CumlKMeans(n_clusters=k, max_iter=max_iter, tol=tol, random_state=int(seed), n_init=1)
        out[p] = torch.from_dlpack(model.fit_predict(data).astype(cupy.int64))
    return out
