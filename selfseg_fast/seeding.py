"""Deterministic seeds that depend on the run seed and the image's pixels, never on batch position.

So the same image gets the same clusters and captions whether it runs alone, in a batch of 64, first
or last, or after a resume.
"""

from __future__ import annotations

import zlib

import numpy as np

_MASK = 2**31 - 1


def image_seed(run_seed: int, rgb: np.ndarray) -> int:
    """Seed for one image: the run seed mixed with a CRC of its pixels and shape."""
    crc = zlib.crc32(np.ascontiguousarray(rgb).data)
    crc = zlib.crc32(repr(rgb.shape).encode(), crc)
    return (run_seed * 1_000_003 + crc) & _MASK


def derived_seed(seed: int, *parts: int) -> int:
    """A child seed for a sub-task (a k-means run, a cluster's captions) of a seeded task."""
    value = seed
    for part in parts:
        value = (value * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407 + part) & (2**63 - 1)
    return value & _MASK
