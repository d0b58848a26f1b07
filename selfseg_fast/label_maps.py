"""Label maps as users receive them: pixel shares per name and the label PNG (index into the names,
255 = unlabelled). One place for the `segment` command, folder labelling and the HTTP example."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def pixel_shares(label_map: np.ndarray, names: list[str]) -> dict[str, float]:
    """Each name's share of the image's pixels ([H, W] label map indexing `names`; -1 counts as none)."""
    total = max(1, label_map.size)
    return {name: float((label_map == i).sum()) / total for i, name in enumerate(names)}


def label_map_uint8(label_map: np.ndarray) -> np.ndarray:
    """[H, W] label map -> uint8 values for a label PNG: index into the names, 255 = unlabelled (-1)."""
    return np.where(label_map < 0, 255, label_map).astype(np.uint8)


def label_png_bytes(label_map: np.ndarray) -> bytes:
    """The label map as an 8-bit grayscale PNG (`label_map_uint8` values)."""
    buffer = io.BytesIO()
    Image.fromarray(label_map_uint8(label_map), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
