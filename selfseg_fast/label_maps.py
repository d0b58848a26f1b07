"""Label maps as users receive them: pixel shares per name and the label PNG. One place for the `segment`
command, folder labelling and the HTTP example.

The label PNG holds, per pixel, the index of its name in the image's name list:
- up to 255 names: an 8-bit **palette** PNG (index = pixel value, 255 = unlabelled); its colour table is
  `visualize.palette`, so it looks like the overlay in any viewer while `np.asarray(Image.open(f))`
  still gives the indices (as VOC's label PNGs do);
- more than 255 names: a **16-bit** grayscale PNG (index = pixel value, 65535 = unlabelled), since an
  8-bit file would wrap indices around. `read_label_png` reads both back as int64 with -1 = unlabelled.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

UNLABELLED_8BIT = 255
UNLABELLED_16BIT = 65535


def pixel_shares(label_map: np.ndarray, names: list[str]) -> dict[str, float]:
    """Each name's share of the image's pixels ([H, W] label map indexing `names`; -1 counts as none)."""
    total = max(1, label_map.size)
    counts = np.bincount(label_map[label_map >= 0].ravel(), minlength=len(names)) if len(names) else []
    return {name: float(counts[i]) / total for i, name in enumerate(names)}


def needs_16bit(label_map: np.ndarray, n_names: int | None = None) -> bool:
    """True when the indices do not fit an 8-bit PNG beside the unlabelled value 255."""
    top = int(label_map.max(initial=-1))
    return max(top + 1, n_names or 0) > UNLABELLED_8BIT


def label_map_uint8(label_map: np.ndarray) -> np.ndarray:
    """[H, W] label map -> uint8 values: index into the names, 255 = unlabelled (-1). At most 255 names."""
    if needs_16bit(label_map):
        raise ValueError("more than 255 names do not fit 8 bits: use label_png_bytes (16-bit)")
    return np.where(label_map < 0, UNLABELLED_8BIT, label_map).astype(np.uint8)


def label_png_image(label_map: np.ndarray, n_names: int | None = None) -> Image.Image:
    """The label map as a Pillow image: palette ("P") up to 255 names, 16-bit ("I;16") above."""
    if needs_16bit(label_map, n_names):
        values = np.where(label_map < 0, UNLABELLED_16BIT, label_map).astype(np.uint16)
        return Image.fromarray(values)  # uint16 -> "I;16"
    from selfseg_fast.visualize import palette

    image = Image.fromarray(label_map_uint8(label_map), mode="P")
    table = np.zeros((256, 3), np.uint8)
    table[:UNLABELLED_8BIT] = palette(UNLABELLED_8BIT)
    table[UNLABELLED_8BIT] = UNLABELLED_COLOUR
    image.putpalette(table.ravel().tolist())
    return image


UNLABELLED_COLOUR = (224, 224, 224)  # light grey, as a viewer shows unlabelled pixels


def label_png_bytes(label_map: np.ndarray, n_names: int | None = None) -> bytes:
    """The label PNG's bytes (see the module docstring)."""
    buffer = io.BytesIO()
    label_png_image(label_map, n_names).save(buffer, format="PNG")
    return buffer.getvalue()


def read_label_png(source) -> np.ndarray:
    """A label PNG (path or file object) back to an [H, W] int64 map with -1 = unlabelled."""
    with Image.open(source) as image:
        values = np.asarray(image).astype(np.int64)
        unlabelled = UNLABELLED_8BIT if image.mode in ("P", "L") else UNLABELLED_16BIT
    return np.where(values == unlabelled, -1, values)
