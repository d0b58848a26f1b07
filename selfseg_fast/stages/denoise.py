"""Stage 2c: denoise the vote map. CRF (Gaussian mean field), then a 3x3 majority filter until stable.

CRF: `crfseg`'s model (Potts compatibility, spatial Gaussian kernel only: the vote map has no image
channels), with the paper's smoothness weight 6 and theta 0.8, its default 11-tap filter and 5
mean-field iterations. Its input is the vote distribution P(n|p) used as the unary logits, laid out
channels-first [B, C, H, W] as crfseg expects. (The authors' code passed a channels-last tensor, so
crfseg smoothed along the cluster axis instead of across the image; we do it as documented.)

Majority filter: each cell takes the most frequent label of its 3x3 neighbourhood (edges replicated,
ties to the smallest label, as the authors' histogram argmax does), repeated until nothing changes or
8 times.

Reference: crfseg itself and a per-cell loop. Fast: the same mean field as batched separable
convolutions with a channel mask (images of a batch may have different cluster counts), and the
majority filter as one-hot 3x3 box sums with a per-image stop.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from selfseg_fast.optional_deps import require


# ---- CRF -------------------------------------------------------------------------------------------------
def crf_reference(
    votes: torch.Tensor,  # [C, H, W] vote shares
    weight: float = 6.0,
    theta: float = 0.8,
    iterations: int = 5,
    filter_size: int = 11,
) -> torch.Tensor:  # [C, H, W] CRF logits
    """crfseg's CRF on one vote map (channels first)."""
    crf = require("crfseg").CRF(
        n_spatial_dims=2,
        filter_size=filter_size,
        n_iter=iterations,
        requires_grad=False,
        returns="logits",
        smoothness_weight=weight,
        smoothness_theta=theta,
    )
    with torch.no_grad():
        return crf(votes[None].float())[0]


def gaussian_taps(theta: float, filter_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """1-D Gaussian taps exp(-(d/theta)^2 / 2) with a zeroed centre (no self-message), like crfseg."""
    d = torch.arange(-(filter_size // 2), filter_size // 2 + 1, device=device, dtype=dtype)
    taps = torch.exp(-((d / theta) ** 2) / 2)
    taps[filter_size // 2] = 0
    return taps


def _separable_filter(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Zero-padded separable filter of every channel map: [B, C, H, W] -> same shape.

    crfseg zeroes the centre tap of each 1-D pass, so the 2-D kernel is the outer product of two
    zero-centred filters (a cross-free kernel): exactly what the two passes below compute.
    """
    b, c, h, w = x.shape
    pad = taps.numel() // 2
    flat = x.reshape(b * c, 1, h, w)
    flat = F.conv2d(flat, taps.view(1, 1, -1, 1), padding=(pad, 0))  # along H
    flat = F.conv2d(flat, taps.view(1, 1, 1, -1), padding=(0, pad))  # along W
    return flat.reshape(b, c, h, w)


def crf_batched(
    votes: torch.Tensor,  # [B, C, H, W] vote shares
    channel_ok: torch.Tensor,  # [B, C] bool: channel exists for this image (channels 0..C_b-1)
    weight: float = 6.0,
    theta: float = 0.8,
    iterations: int = 5,
    filter_size: int = 11,
) -> torch.Tensor:  # [B, C, H, W] logits (-inf in absent channels)
    """crfseg's mean field for a whole batch: softmax, Gaussian message, Potts transform, add unary.

    An image with a single channel is crfseg's binary case: a zero-unary second channel takes part in
    the mean field and the output is the difference of the two channels' logits."""
    b, c, h, w = votes.shape
    if c == 1:  # room for the binary case's second channel
        votes = torch.cat([votes, votes.new_zeros(b, 1, h, w)], 1)
        channel_ok = torch.cat([channel_ok, channel_ok.new_zeros(b, 1)], 1)
    taps = gaussian_taps(theta, filter_size, votes.device, votes.dtype)
    binary = (channel_ok.sum(1) == 1)[:, None] & (torch.arange(votes.shape[1], device=votes.device) == 1)
    unary = votes.masked_fill(~(channel_ok | binary)[:, :, None, None], float("-inf"))
    unary = torch.where(binary[:, :, None, None], 0.0, unary)
    x = unary
    for _ in range(iterations):
        q = torch.softmax(x, dim=1)  # absent channels get probability 0
        x = unary + weight * _separable_filter(q, taps)  # Potts: -(-message)
    is_binary = binary.any(1)[:, None, None]  # [B, 1, 1]
    first = torch.where(is_binary, x[:, 0] - x[:, 1], x[:, 0])
    rest = torch.where(is_binary[:, None], float("-inf"), x[:, 1:])
    return torch.cat([first[:, None], rest], 1)[:, :c]


# ---- majority filter -------------------------------------------------------------------------------------
def majority_filter_reference(grid: np.ndarray, size: int = 3) -> np.ndarray:
    """One pass of the mode filter over a label map [H, W] (edges replicated, ties -> smallest label)."""
    pad = size // 2
    padded = np.pad(grid, pad, mode="edge")
    out = np.empty_like(grid)
    for y in range(grid.shape[0]):
        for x in range(grid.shape[1]):
            window = padded[y : y + size, x : x + size].ravel()
            out[y, x] = np.bincount(window).argmax()
    return out


def clean_reference(grid: np.ndarray, size: int = 3, max_iters: int = 8) -> np.ndarray:
    """Majority filter until stable or `max_iters` passes."""
    for _ in range(max_iters):
        new = majority_filter_reference(grid, size)
        if np.array_equal(new, grid):
            break
        grid = new
    return grid


def clean_batched(grids: torch.Tensor, n_labels: int, size: int = 3, max_iters: int = 8) -> torch.Tensor:
    """[B, H, W] labels (< n_labels) -> filtered [B, H, W]; each image stops when it is stable (an
    on-device mask: all `max_iters` passes run, a stable image no longer changes; no host sync)."""
    pad = size // 2
    box = torch.ones(n_labels, 1, size, size, device=grids.device)
    labels = torch.arange(n_labels, device=grids.device)[None, :, None, None]
    active = torch.ones(grids.shape[0], dtype=torch.bool, device=grids.device)
    for _ in range(max_iters):
        one_hot = (grids[:, None] == labels).float()  # [B, L, H, W]
        counts = F.conv2d(F.pad(one_hot, (pad,) * 4, mode="replicate"), box, groups=n_labels)
        new = counts.argmax(1)  # first maximum = smallest label on ties
        active = active & (new != grids).flatten(1).any(1)
        grids = torch.where(active[:, None, None], new, grids)
    return grids
