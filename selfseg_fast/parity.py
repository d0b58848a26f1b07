"""Engine-vs-engine agreement measures (used by the parity tests and the benchmark)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def matched_grid_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of cells on which two label maps agree after matching b's labels to a's one-to-one
    (Hungarian on the co-occurrence counts): cluster ids are arbitrary, the partition is what counts."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    ids_a, inv_a = np.unique(a, return_inverse=True)
    ids_b, inv_b = np.unique(b, return_inverse=True)
    counts = np.zeros((len(ids_a), len(ids_b)))
    np.add.at(counts, (inv_a, inv_b), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / a.size)
