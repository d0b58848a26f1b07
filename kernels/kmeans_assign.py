"""k-means assignment step: nearest valid centre per point, for P problems at once.

`assign_nearest_torch` is the reference (matmul distances + argmin); `assign_nearest_triton` fuses the
distance computation, the invalid-centre mask and the argmin in one kernel, so the [P, N, K] distance
tensor never reaches memory. `assign_nearest(..., use_triton=...)` dispatches; whether Triton is used
is decided once per engine by `selfseg_fast.plan` (CUDA, Triton importable, SELFSEG_DISABLE_TRITON
unset). On CPU the torch path runs; tests call the kernel directly under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch

try:  # optional: GPU machines (and CPU tests in the Triton interpreter)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None


def assign_nearest_torch(
    x: torch.Tensor,  # [P, N, D]
    x_sq: torch.Tensor,  # [P, N] squared norms of x
    centres: torch.Tensor,  # [P, K, D]
    valid: torch.Tensor,  # [P, K] bool: centre exists for this problem
    big: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # labels [P, N] int64, squared distance to that centre [P, N]
    c_sq = (centres * centres).sum(-1)
    d = (x_sq[:, :, None] - 2.0 * torch.bmm(x, centres.transpose(1, 2)) + c_sq[:, None, :]).clamp_min_(0.0)
    d = d.masked_fill(~valid[:, None, :], big)
    dist, labels = d.min(-1)
    return labels, dist


if triton is not None:

    @triton.jit
    def _assign_kernel(
        x_ptr, c_ptr, xsq_ptr, csq_ptr, valid_ptr, labels_ptr, dist_ptr,
        N, D, K,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid_p = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            xb = tl.load(
                x_ptr + pid_p * N * D + offs_n[:, None] * D + offs_d[None, :],
                mask=(offs_n[:, None] < N) & (offs_d[None, :] < D),
                other=0.0,
            )
            cb = tl.load(
                c_ptr + pid_p * K * D + offs_k[None, :] * D + offs_d[:, None],
                mask=(offs_k[None, :] < K) & (offs_d[:, None] < D),
                other=0.0,
            )
            acc += tl.dot(xb, cb, input_precision="ieee")
        xsq = tl.load(xsq_ptr + pid_p * N + offs_n, mask=offs_n < N, other=0.0)
        csq = tl.load(csq_ptr + pid_p * K + offs_k, mask=offs_k < K, other=0.0)
        ok = tl.load(valid_ptr + pid_p * K + offs_k, mask=offs_k < K, other=0) != 0
        d = tl.maximum(xsq[:, None] - 2.0 * acc + csq[None, :], 0.0)
        d = tl.where(ok[None, :], d, float("inf"))
        best = tl.argmin(d, axis=1)
        best_d = tl.min(d, axis=1)
        tl.store(labels_ptr + pid_p * N + offs_n, best.to(tl.int64), mask=offs_n < N)
        tl.store(dist_ptr + pid_p * N + offs_n, best_d, mask=offs_n < N)


def assign_nearest_triton(
    x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor, valid: torch.Tensor, big: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `assign_nearest_torch` (fp32 accumulation); one program per 64 points."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    p, n, d = x.shape
    k = centres.shape[1]
    x32 = x.float().contiguous()
    c32 = centres.float().contiguous()
    csq = (c32 * c32).sum(-1).contiguous()
    labels = torch.empty(p, n, dtype=torch.int64, device=x.device)
    dist = torch.empty(p, n, dtype=torch.float32, device=x.device)
    block_k = max(16, triton.next_power_of_2(k))
    grid = (p, triton.cdiv(n, 64))
    _assign_kernel[grid](
        x32, c32, x_sq.float().contiguous(), csq, valid.to(torch.int8).contiguous(), labels, dist,
        n, d, k, BLOCK_N=64, BLOCK_K=block_k, BLOCK_D=32,
    )  # fmt: skip
    dist = torch.where(torch.isinf(dist), torch.full_like(dist, big), dist)
    return labels, dist.to(x.dtype)


def triton_importable() -> bool:
    """Triton imports here (the plan also requires a CUDA device)."""
    return triton is not None


def assign_nearest(
    x: torch.Tensor,
    x_sq: torch.Tensor,
    centres: torch.Tensor,
    valid: torch.Tensor,
    big: float,
    *,
    use_triton: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: the fused Triton kernel when asked (CUDA fp32 inputs), else the torch reference."""
    if use_triton and x.is_cuda and x.dtype == torch.float32:
        return assign_nearest_triton(x, x_sq, centres, valid, big)
    return assign_nearest_torch(x, x_sq, centres, valid, big)
