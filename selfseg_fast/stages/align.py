"""Stage 2b: cross-clustering consistency. Align the k-means runs of one image and count votes.

The run with the most non-empty clusters is the reference (first such run on ties, as in the
authors' code). Every other run's clusters are matched one-to-one to reference clusters by the
Hungarian algorithm on cluster IoU (maximised; `align_cost="disagreement"` instead minimises the
number of patches where the two binary masks differ, as the released code does). All runs live on
the 32x32 output grid: the 24x24 (384 px) runs are resized with nearest-neighbour first (see
`cluster.py` for why). The vote share P(n|p) is the fraction of runs voting cluster n at patch p.

Reference: NumPy masks + `scipy.optimize.linear_sum_assignment`, one problem at a time.
Fast: the intersection counts of every problem as one joint histogram (`scatter_add`, fixed output
size, no host sync), IoU in float64 from those integer counts (as the reference divides), and the
assignments solved either by SciPy on the host after ONE device-to-host copy of all the small cost
matrices of a batch (`solve_assignments_on_host`, the default) or on the device by
`linear_sum_assignment_batched`, a batched port of the same shortest-augmenting-path algorithm SciPy
runs (Crouse 2016) with fixed loop bounds and masks (no host sync at all), which reproduces SciPy's
assignment exactly, ties and rectangles included (more rows than columns: solved transposed, as SciPy
does). Which one runs is the plan's choice (`selfseg_fast.plan`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from selfseg_fast.host import to_host

EPSILON = 1e-6  # added to vote shares before renormalising (as the authors' code does)


# ---- cost matrices ---------------------------------------------------------------------------------------
def match_scores_reference(run: np.ndarray, ref: np.ndarray, cost: str = "iou") -> tuple[np.ndarray, ...]:
    """Score matrix [len(run ids), len(ref ids)] between the non-empty clusters of two label maps.

    Returns (scores, run_ids, ref_ids); scores are IoU (maximise) or disagreeing patches (minimise).
    """
    run_ids, ref_ids = np.unique(run), np.unique(ref)
    scores = np.zeros((len(run_ids), len(ref_ids)))
    for i, a in enumerate(run_ids):
        for j, b in enumerate(ref_ids):
            ma, mb = run == a, ref == b
            if cost == "iou":
                scores[i, j] = (ma & mb).sum() / (ma | mb).sum()
            else:
                scores[i, j] = (ma != mb).sum()
    return scores, run_ids, ref_ids


def match_scores_batched(runs: torch.Tensor, refs: torch.Tensor, k: int, cost: str = "iou") -> torch.Tensor:
    """[P, N] run labels, [P, N] reference labels (ids < k) -> [P, k, k] float64 scores for all id pairs.

    Pairs involving an empty cluster are meaningless and are masked by the caller.
    """
    inter, size_a, size_b = intersections_torch(runs, refs, k)
    if cost == "iou":
        union = size_a[:, :, None] + size_b[:, None, :] - inter
        return inter / union.clamp_min(1.0)
    return size_a[:, :, None] + size_b[:, None, :] - 2 * inter  # |A xor B|


def intersections_torch(
    runs: torch.Tensor, refs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[P, N] x [P, N] labels -> intersections [P, k, k], run sizes [P, k], reference sizes [P, k]
    (float64 holding exact integer counts): a joint histogram per problem,
    intersection[p, a, b] = #patches with run label a and reference label b."""
    p = runs.shape[0]
    flat = (torch.arange(p, device=runs.device)[:, None] * k + runs) * k + refs  # [P, N]
    counts = torch.zeros(p * k * k, dtype=torch.float64, device=runs.device)
    counts.scatter_add_(
        0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.float64, device=runs.device)
    )
    inter = counts.view(p, k, k)
    return inter, inter.sum(2), inter.sum(1)


# ---- Hungarian -------------------------------------------------------------------------------------------
def linear_sum_assignment_batched(
    cost: torch.Tensor,  # [P, R, C] float64, only [:n_rows[p], :n_cols[p]] used
    n_rows: torch.Tensor,  # [P] int64
    n_cols: torch.Tensor,  # [P] int64
) -> torch.Tensor:  # [P, R] int64: column of each row (-1: padding row, or a row left unassigned)
    """Minimum-cost assignment for P problems at once: SciPy's algorithm, step for step, on the device.

    Shortest augmenting paths with dual variables (Crouse, IEEE TAES 2016), as in SciPy's
    `rectangular_lsap`, including its scan order (columns in reverse, swap-remove) and its tie rule
    (prefer an unassigned column at equal path cost), so ties resolve the same way. A problem with
    more rows than columns is solved transposed (SciPy does the same), so exactly min(rows, cols)
    rows get a column. Loop bounds are fixed (rows x columns steps; finished problems idle under a
    mask), so nothing waits on the host and the whole solve can be captured in a CUDA graph.
    """
    p, r, c = cost.shape
    m = max(r, c)
    tall = n_rows > n_cols  # [P] solved transposed
    square = torch.zeros(p, m, m, dtype=torch.float64, device=cost.device)
    square[:, :r, :c] = cost
    square = torch.where(tall[:, None, None], square.transpose(1, 2), square)
    col4row = _lsap_wide(square, torch.minimum(n_rows, n_cols), torch.maximum(n_rows, n_cols))  # [P, m]
    # transposed problems: col4row[p, j] is the row given to column j -> invert it
    slot = torch.where(col4row >= 0, col4row, m)
    inverse = torch.full((p, m + 1), -1, dtype=torch.int64, device=cost.device)
    inverse.scatter_(1, slot, torch.arange(m, device=cost.device).expand(p, m).clone())
    return torch.where(tall[:, None], inverse[:, :m], col4row)[:, :r]


def _lsap_wide(cost: torch.Tensor, n_rows: torch.Tensor, n_cols: torch.Tensor) -> torch.Tensor:
    """`linear_sum_assignment_batched` for problems with n_rows <= n_cols: [P, R, C] -> col4row [P, R]."""
    p, r, c = cost.shape
    dev = cost.device
    col_ids, row_ids = torch.arange(c, device=dev), torch.arange(r, device=dev)
    u = torch.zeros(p, r, dtype=torch.float64, device=dev)
    v = torch.zeros(p, c, dtype=torch.float64, device=dev)
    col4row = torch.full((p, r), -1, dtype=torch.int64, device=dev)
    row4col = torch.full((p, c), -1, dtype=torch.int64, device=dev)
    for cur_row in range(r):
        todo = cur_row < n_rows  # [P] problems that still have this row
        sink, min_val, path, spc, sr, sc = _shortest_path(cost, u, v, row4col, n_cols, todo, cur_row)
        # --- dual update ---
        assigned_spc = spc.gather(1, col4row.clamp_min(0))  # [P, R]
        upd_u = sr & (row_ids[None, :] != cur_row) & todo[:, None]
        u = torch.where(upd_u, u + min_val[:, None] - assigned_spc, u)
        u[:, cur_row] += torch.where(todo, min_val, 0.0)
        v = torch.where(sc & todo[:, None], v - (min_val[:, None] - spc), v)
        # --- augment along the path back from the sink ---
        j, walking = sink.clone(), todo.clone()
        for _ in range(r):
            i_back = path.gather(1, j.clamp_min(0)[:, None]).squeeze(1)
            row4col = torch.where(walking[:, None] & (col_ids == j[:, None]), i_back[:, None], row4col)
            prev = col4row.gather(1, i_back.clamp_min(0)[:, None]).squeeze(1)
            col4row = torch.where(walking[:, None] & (row_ids == i_back[:, None]), j[:, None], col4row)
            j = torch.where(walking, prev, j)
            walking = walking & (i_back != cur_row)
    return col4row


def _shortest_path(cost, u, v, row4col, n_cols, todo, cur_row):
    """Dijkstra over reduced costs from `cur_row` for every problem with `todo` (SciPy's inner loop):
    -> sink column [P], min_val [P], path [P, C], shortest path costs [P, C], visited rows [P, R] and
    columns [P, C]."""
    p, r, c = cost.shape
    dev = cost.device
    rows, col_ids, row_ids = (
        torch.arange(p, device=dev),
        torch.arange(c, device=dev),
        torch.arange(r, device=dev),
    )
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    path = torch.full((p, c), -1, dtype=torch.int64, device=dev)
    spc = torch.full((p, c), float("inf"), dtype=torch.float64, device=dev)  # shortest path costs
    sr = torch.zeros(p, r, dtype=torch.bool, device=dev)
    sc = torch.zeros(p, c, dtype=torch.bool, device=dev)
    # remaining[it] = n_cols - it - 1 for it < n_cols (SciPy scans columns from the last one)
    remaining = (n_cols[:, None] - 1 - col_ids[None, :]).clamp_min(0)
    num_remaining = n_cols.clone()
    min_val = torch.zeros(p, dtype=torch.float64, device=dev)
    i = torch.full((p,), cur_row, dtype=torch.int64, device=dev)
    sink = torch.full((p,), -1, dtype=torch.int64, device=dev)
    searching = todo.clone()
    for _ in range(c):
        sr = sr | (searching[:, None] & (row_ids == i[:, None]))
        it_valid = col_ids[None, :] < num_remaining[:, None]  # [P, C] positions in `remaining`
        j_at = remaining  # column at each position
        reduced = (
            min_val[:, None]
            + cost[rows[:, None], i[:, None], j_at]
            - u.gather(1, i[:, None])
            - v.gather(1, j_at)
        )
        better = it_valid & (reduced < spc.gather(1, j_at)) & searching[:, None]
        # update path / shortest path costs of the improved columns (scratch column c for the others)
        upd_cols = torch.where(better, j_at, c)
        spc_ext = torch.cat([spc, spc.new_full((p, 1), float("inf"))], 1)
        path_ext = torch.cat([path, path.new_full((p, 1), -1)], 1)
        spc_ext.scatter_(1, upd_cols, torch.where(better, reduced, spc_ext.gather(1, upd_cols)))
        path_ext.scatter_(
            1, upd_cols, torch.where(better, i[:, None].expand_as(upd_cols), path_ext.gather(1, upd_cols))
        )
        spc, path = spc_ext[:, :c], path_ext[:, :c]
        spc_at = spc.gather(1, j_at)
        # SciPy's pick: lowest cost; among equals, the last unassigned one in scan order, else the first
        lowest = torch.where(it_valid, spc_at, inf).min(1).values  # [P]
        at_low = it_valid & (spc_at == lowest[:, None])
        unassigned = row4col.gather(1, j_at) == -1
        pos = col_ids[None, :].expand(p, c)
        last_free = torch.where(at_low & unassigned, pos, -1).max(1).values
        first_any = torch.where(at_low, pos, c).min(1).values
        index = torch.where(searching, torch.where(last_free >= 0, last_free, first_any), 0)  # [P]
        min_val = torch.where(searching, lowest, min_val)
        j = remaining.gather(1, index[:, None]).squeeze(1)
        owner = row4col.gather(1, j[:, None]).squeeze(1)
        found = searching & (owner == -1)
        sink = torch.where(found, j, sink)
        i = torch.where(searching & ~found, owner, i)
        sc = sc | (searching[:, None] & (col_ids == j[:, None]))
        # swap-remove position `index` from `remaining`
        last_col = remaining.gather(1, (num_remaining - 1).clamp_min(0)[:, None])
        new_rem = remaining.scatter(1, index[:, None], last_col)
        remaining = torch.where(searching[:, None], new_rem, remaining)
        num_remaining = torch.where(searching, num_remaining - 1, num_remaining)
        searching = searching & ~found
    return sink, min_val, path, spc, sr, sc


# ---- alignment + votes -----------------------------------------------------------------------------------
def reference_run_index(runs: list[np.ndarray]) -> int:
    """The run with the most non-empty clusters (the first one on ties)."""
    return int(np.argmax([len(np.unique(run)) for run in runs]))


def align_runs_reference(runs: list[np.ndarray], cost: str = "iou") -> list[np.ndarray]:
    """Relabel every run (each [32, 32] int) with the matching reference-run cluster ids (SciPy)."""
    ref_index = reference_run_index(runs)
    ref = runs[ref_index]
    aligned = []
    for index, run in enumerate(runs):
        if index == ref_index:
            aligned.append(run.copy())
            continue
        scores, run_ids, ref_ids = match_scores_reference(run, ref, cost)
        row_ind, col_ind = linear_sum_assignment(scores, maximize=(cost == "iou"))
        relabelled = run.copy()
        for r, c in zip(row_ind, col_ind):
            relabelled[run == run_ids[r]] = ref_ids[c]
        aligned.append(relabelled)
    return aligned


def vote_distribution_reference(aligned: list[np.ndarray]) -> np.ndarray:
    """[R] aligned label maps [H, W] -> P(n|p) as [C, H, W] (C = max id + 1), epsilon-smoothed."""
    n_clusters = int(max(run.max() for run in aligned)) + 1
    votes = np.zeros((n_clusters, *aligned[0].shape))
    for run in aligned:
        for label in range(n_clusters):
            votes[label] += run == label
    votes = votes / len(aligned) + EPSILON
    return votes / votes.sum(0, keepdims=True)


def solve_assignments_on_host(cost: torch.Tensor, n_rows: torch.Tensor, n_cols: torch.Tensor) -> torch.Tensor:
    """`linear_sum_assignment_batched`'s contract, solved by SciPy problem by problem on the CPU after
    ONE device-to-host copy of the small cost matrices and their sizes (microseconds per 8x8 problem);
    the result goes back to the device without a wait."""
    p, r, c = cost.shape
    sizes = torch.stack([n_rows, n_cols], 1).to(cost.dtype)  # [P, 2]
    packed = to_host(torch.cat([cost.reshape(p, r * c), sizes], 1))  # the one host sync
    out = np.full((p, r), -1, dtype=np.int64)
    for i in range(p):
        n_r, n_c = int(packed[i, -2]), int(packed[i, -1])
        row, col = linear_sum_assignment(packed[i, : r * c].reshape(r, c)[:n_r, :n_c])
        out[i, row] = col
    return torch.from_numpy(out).to(cost.device, non_blocking=True)


def align_and_vote_batched(
    runs: torch.Tensor, k: int, cost: str = "iou", solver: str = "scipy"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path for B images at once: runs [B, R, N] labels (< k) -> (vote shares [B, k, N], channel
    mask [B, k]).

    Clusters are compacted per run (non-empty ones, ascending ids) so that the Hungarian problems
    are exactly SciPy's: rows = run clusters, columns = reference clusters. Channels above an image's
    largest reference id do not exist in the reference path: they get zero mass and a False mask.
    """
    b, r, n = runs.shape
    dev = runs.device
    ids = torch.arange(k, device=dev)
    present = (runs[..., None] == ids).any(2)  # [B, R, k]
    n_present = present.sum(-1)  # [B, R]
    ref_index = n_present.argmax(1)  # [B] first max, like np.argmax
    bi = torch.arange(b, device=dev)
    refs = runs[bi, ref_index]  # [B, N]
    scores = match_scores_batched(runs.reshape(b * r, n), refs.repeat_interleave(r, 0), k, cost)  # [BR, k, k]
    # compact: sorted non-empty ids first
    present_f = present.reshape(b * r, k)
    ref_present = present[bi, ref_index].repeat_interleave(r, 0)  # [BR, k]
    order_run = torch.argsort((~present_f).to(torch.int8), dim=1, stable=True)  # non-empty ids first
    order_ref = torch.argsort((~ref_present).to(torch.int8), dim=1, stable=True)
    compact = scores.gather(1, order_run[:, :, None].expand(-1, -1, k)).gather(
        2, order_ref[:, None, :].expand(-1, k, -1)
    )
    signed = -compact if cost == "iou" else compact
    solve = linear_sum_assignment_batched if solver == "batched" else solve_assignments_on_host
    col = solve(signed, present_f.sum(1), ref_present.sum(1))  # [BR, k] (identical results)
    # mapping run id -> ref id (padding positions write to a scratch column k)
    mapping = torch.zeros(b * r, k + 1, dtype=torch.int64, device=dev)
    valid = col >= 0
    ref_id = order_ref.gather(1, col.clamp_min(0))  # position -> matched ref id
    mapping.scatter_(1, torch.where(valid, order_run, k), torch.where(valid, ref_id, 0))
    mapping = mapping[:, :k]
    # the reference run keeps its own ids
    is_ref = (torch.arange(r, device=dev)[None, :] == ref_index[:, None]).reshape(-1)
    identity = torch.arange(k, device=dev)[None, :].expand(b * r, k)
    mapping = torch.where(is_ref[:, None], identity, mapping)
    aligned = mapping.gather(1, runs.reshape(b * r, n)).reshape(b, r, n)
    n_channels = refs.max(1).values + 1  # [B]: the reference path's C = max id + 1
    channel_ok = torch.arange(k, device=dev)[None, :] < n_channels[:, None]  # [B, k]
    votes = (aligned[..., None] == ids).sum(1).transpose(
        1, 2
    ).double() / r + EPSILON  # [B, k, N] (tiny: fp64 = the reference's numbers)
    votes = torch.where(channel_ok[:, :, None], votes, 0.0)
    return votes / votes.sum(1, keepdim=True), channel_ok
