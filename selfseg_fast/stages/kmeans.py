"""Stage 2a: k-means on patch features. Reference: scikit-learn. Fast: every problem of a batch at once.

Both follow scikit-learn's Lloyd k-means: greedy k-means++ seeding (2 + ln k candidate centres per
step, the one lowering the potential most wins), Lloyd iterations until the squared centre shift is
<= tol * mean feature variance (or labels stop changing), at most `max_iter` iterations, a final
assignment to the last centres, and empty clusters re-seeded with the points farthest from their
centres (each moved point also leaves its old cluster's mean, as scikit-learn >= 0.23 does);
`n_init` restarts keep the lowest inertia. Each problem draws its seeding randomness from its own
seed, so a result never depends on the batch it ran in, and both paths start Lloyd from the same
k-means++ centres. Parity: the fast labels match the reference's (float32 vs float64 may flip
near-equidistant points), and inertia is within 1 % of scikit-learn's own k-means++ over many
random problems (tested).

Fast path and the host: the batched loop checks "has every problem converged?" once per
`CHECK_EVERY` iterations (a fixed block of iterations with an on-device convergence mask in between:
a converged problem stops changing), so its host syncs do not grow with the number of problems and
are 1/CHECK_EVERY of the iterations, never one or two per iteration.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from selfseg_fast.seeding import derived_seed
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
    n_init: int = 1,
    init: str = "seeded",
) -> torch.Tensor:  # [N] int64 labels in 0..k-1
    """scikit-learn's KMeans (Lloyd, float64). `init="seeded"`: k-means++ from our per-problem draws
    (`kmeans_plus_plus_reference`), one scikit-learn fit per restart seed (`restart_seeds`), the
    lowest inertia kept (the first on ties, as scikit-learn); `init="k-means++"`: scikit-learn's own
    seeding and restarts with random_state."""
    from sklearn.cluster import KMeans  # heavy import, reference path only

    data = x.detach().to("cpu", torch.float64).numpy()
    k = min(k, len(np.unique(data, axis=0)))  # as many clusters as distinct points at most
    if init != "seeded":
        model = KMeans(
            n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=tol, random_state=seed
        )
        return torch.from_numpy(model.fit_predict(data).astype(np.int64))
    mean = data.mean(0)
    best = None
    for restart_seed in restart_seeds(seed, n_init):
        start = kmeans_plus_plus_reference(data - mean, k, restart_seed) + mean
        model = KMeans(n_clusters=k, init=start, n_init=1, max_iter=max_iter, tol=tol).fit(data)
        if best is None or model.inertia_ < best.inertia_:
            best = model
    return torch.from_numpy(best.labels_.astype(np.int64))


def inertia(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of squared distances of points [N, D] to their cluster means (labels [N])."""
    x = x.double()
    total = 0.0
    for c in labels.unique():
        members = x[labels == c]
        total += float(((members - members.mean(0)) ** 2).sum())
    return total


# Lloyd iterations between two host checks of "has every problem converged?". Each check costs one
# host sync (~tens of microseconds of idle device); each iteration past convergence costs one launch-
# bound iteration (~30 launches). 8 keeps both small: at most 7 wasted iterations, one check per 8.
CHECK_EVERY = 8


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


def restart_seeds(seed: int, n_init: int) -> list[int]:
    """Seeds of the `n_init` restarts of one problem: the problem's own seed first, so n_init=1 is
    the plain run; later restarts derive from it (batch-independent, like every seed here)."""
    return [seed] + [derived_seed(seed, 0x5EED, r) for r in range(1, n_init)]


def kmeans_batched(
    x: torch.Tensor,  # [P, N, D] one row per (image, resolution, k) problem; same N within a call
    ks: list[int],  # [P] clusters wanted per problem (<= N)
    seeds: list[int],  # [P] one seed per problem
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    n_init: int = 1,
    init: torch.Tensor | None = None,  # [P, max(ks), D] start centres (x's coordinates); skips k-means++
    use_triton: bool = False,
    check_every: int = CHECK_EVERY,
    cuda_graphs: bool = False,
) -> torch.Tensor:  # [P, N] int64 labels, each problem's labels in 0..k_p-1
    """Lloyd k-means for P problems in one batched computation (padded to max k with a validity mask).

    `n_init` restarts (k-means++ from `restart_seeds`), the lowest inertia kept per problem (the first
    on ties, as scikit-learn). Host syncs: one per `check_every` iterations (never per iteration)."""
    if init is not None and n_init != 1:
        raise ValueError("kmeans_batched: explicit start centres run once (n_init=1), as in scikit-learn")
    p, n, _ = x.shape
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    ks = [int(k) for k in ks]
    mean = work.mean(1, keepdim=True)
    work = work - mean  # centred per problem (as scikit-learn does): a better-conditioned matmul distance
    x_sq = (work * work).sum(-1)  # [P, N]
    tol_abs = work.var(1, unbiased=False).mean(-1) * tol  # [P], scikit-learn's tolerance
    valid = torch.arange(max(ks), device=x.device)[None, :] < torch.as_tensor(ks, device=x.device)[:, None]
    best_labels, best_inertia = None, None
    for restart in range(n_init):
        if init is not None:
            centres = init.to(work.device, work.dtype) - mean
        else:
            draws = _seeding_draws(n, ks, [restart_seeds(s, n_init)[restart] for s in seeds])
            centres = kmeans_plus_plus_batched(work, x_sq, *draws)  # [P, K, D]
        centres = _lloyd(work, x_sq, centres, valid, tol_abs, max_iter, use_triton, check_every, cuda_graphs)
        labels, dist = assign_nearest(work, x_sq, centres, valid, _big(work), use_triton=use_triton)
        inertia = dist.sum(1)  # [P]
        if best_labels is None:
            best_labels, best_inertia = labels, inertia
        else:
            better = inertia < best_inertia
            best_labels = torch.where(better[:, None], labels, best_labels)
            best_inertia = torch.where(better, inertia, best_inertia)
    return best_labels


def _big(work: torch.Tensor) -> float:
    return torch.finfo(work.dtype).max / 4


def _lloyd(
    work: torch.Tensor,  # [P, N, D] centred
    x_sq: torch.Tensor,  # [P, N]
    centres: torch.Tensor,  # [P, K, D] start centres
    valid: torch.Tensor,  # [P, K]
    tol_abs: torch.Tensor,  # [P]
    max_iter: int,
    use_triton: bool,
    check_every: int,
    cuda_graphs: bool = False,
) -> torch.Tensor:  # [P, K, D] final centres
    """Lloyd iterations with an on-device convergence mask: a converged problem stops changing while
    the others go on; the host looks at the mask once per `check_every` iterations. With
    `cuda_graphs` (CUDA), a block of `check_every` iterations is captured once and replayed."""
    p, n, _ = work.shape
    state = (
        centres,
        torch.full((p, n), -1, dtype=torch.int64, device=work.device),
        torch.ones(p, dtype=torch.bool, device=work.device),
    )

    def block(c, labels, active, steps):
        for _ in range(steps):
            c, labels, active = _lloyd_step(work, x_sq, c, labels, active, valid, tol_abs, use_triton)
        return c, labels, active

    graph = _BlockGraph(block, check_every) if cuda_graphs and work.is_cuda else None
    done = 0
    while done < max_iter:
        steps = min(check_every, max_iter - done)
        state = graph(state) if graph is not None and steps == check_every else block(*state, steps)
        done += steps
        if not bool(state[2].any()):  # the only host sync: once per `check_every` iterations
            break
    return state[0]


class _BlockGraph:
    """A block of Lloyd iterations as a CUDA graph: the first call runs it for real on a side stream
    (the warm-up capture needs) and captures it; later calls copy the state in and replay."""

    def __init__(self, block, steps: int) -> None:
        self.block, self.steps, self.graph = block, steps, None

    def __call__(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.graph is not None:
            for static, value in zip(self.inputs, state):
                if static is not value:
                    static.copy_(value)
            self.graph.replay()
            return self.outputs
        self.inputs = tuple(t.clone() for t in state)
        side = torch.cuda.Stream(state[0].device)
        side.wait_stream(torch.cuda.current_stream(state[0].device))
        with torch.cuda.stream(side):
            result = tuple(t.clone() for t in self.block(*self.inputs, self.steps))
        torch.cuda.current_stream(state[0].device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records only
            self.outputs = self.block(*self.inputs, self.steps)
        return result


def _lloyd_step(work, x_sq, centres, labels, active, valid, tol_abs, use_triton):
    """One scikit-learn Lloyd iteration for every still-active problem (shapes as in `_lloyd`)."""
    p, n, _ = work.shape
    new_labels, dist = assign_nearest(work, x_sq, centres, valid, _big(work), use_triton=use_triton)
    one_hot = torch.zeros(p, n, centres.shape[1], device=work.device, dtype=work.dtype)
    one_hot.scatter_(2, new_labels[:, :, None], 1.0)
    counts = one_hot.sum(1)  # [P, K]
    sums = torch.bmm(one_hot.transpose(1, 2), work)  # [P, K, D]
    sums, counts = _relocate_empty(work, dist, new_labels, sums, counts, valid)
    new_centres = _average(sums, counts, valid, centres)
    shift = ((new_centres - centres) ** 2).sum((1, 2))  # [P]
    unchanged = (new_labels == labels).all(1)
    centres = torch.where(active[:, None, None], new_centres, centres)
    labels = torch.where(active[:, None], new_labels, labels)
    return centres, labels, active & ~unchanged & (shift > tol_abs)


def _relocate_empty(work, dist, labels, sums, counts, valid):
    """scikit-learn's rule (>= 0.23): each empty cluster takes one of the points farthest from their
    centres (the farthest to the first empty cluster), and that point leaves its old cluster's sum and
    count. Nothing moves when every point sits on its centre. sums [P, K, D], counts [P, K]."""
    k, d = counts.shape[1], work.shape[2]
    empty = (counts == 0) & valid & (dist.amax(1) > 0)[:, None]  # [P, K]
    far_sorted = dist.topk(k, dim=1).indices  # [P, K] farthest points first
    far = far_sorted.gather(1, (empty.long().cumsum(1) - 1).clamp_min(0))  # [P, K] point per empty cluster
    far_points = work.gather(1, far[:, :, None].expand(-1, -1, d))  # [P, K, D]
    moved = empty.to(work.dtype)
    old = labels.gather(1, far)  # [P, K] the clusters those points leave
    sums = sums.scatter_add(1, old[:, :, None].expand(-1, -1, d), -far_points * moved[:, :, None])
    counts = counts.scatter_add(1, old, -moved)
    sums = torch.where(empty[:, :, None], far_points, sums)
    return sums, torch.where(empty, torch.ones_like(counts), counts)


def _average(sums, counts, valid, centres):
    """Means of non-empty clusters; a cluster still empty sits on the largest cluster's mean (as
    scikit-learn places it); padding slots keep their centres."""
    means = sums / counts.clamp_min(1.0)[:, :, None]
    largest = means.gather(1, counts.argmax(1)[:, None, None].expand(-1, 1, means.shape[2]))  # [P, 1, D]
    means = torch.where((counts > 0)[:, :, None], means, largest)
    return torch.where(valid[:, :, None], means, centres)


# ---- cuML ----------------------------------------------------------------------------------------------
def kmeans_cuml(
    x: torch.Tensor,
    ks: list[int],
    seeds: list[int],
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    n_init: int = 1,
) -> torch.Tensor:  # [P, N] int64
    """cuML's KMeans (k-means||, GPU) on each problem of [P, N, D]; needs CUDA tensors, cuML and CuPy
    (the plan checks they import when the engine is built)."""
    import cupy  # optional GPU libraries: imported only when this backend runs
    from cuml.cluster import KMeans as CumlKMeans

    out = torch.empty(x.shape[:2], dtype=torch.int64, device=x.device)
    for p, (k, seed) in enumerate(zip(ks, seeds)):
        data = cupy.from_dlpack(x[p].float().contiguous())
        model = CumlKMeans(n_clusters=k, max_iter=max_iter, tol=tol, random_state=int(seed), n_init=n_init)
        out[p] = torch.from_dlpack(model.fit_predict(data).astype(cupy.int64))
    return out
