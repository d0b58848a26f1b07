"""Device-to-host transfers of the fast path, in one place: each is one host sync on a GPU."""

from __future__ import annotations

import numpy as np
import torch


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """One device-to-host copy as a NumPy array (read-only use: for a CPU tensor it shares memory).

    `np.from_dlpack` instead of `.numpy()`, so that `OpCounter` counts the copy once (`.cpu()`), not
    twice: `.numpy()` of the copied tensor does not wait for the device."""
    return np.from_dlpack(tensor.detach().cpu())
