"""Pictures of a result: the label overlay with its legend, and the 32x32 cluster grid with each
cluster's top nouns (the BCC stage).

- Colours: matplotlib's `tab10` (the categorical palette most users know) first, then extended by
  Glasbey's method (each next colour is the one farthest in CIELAB from every colour already used,
  white, black and the unlabelled grey), so 30+ names stay distinguishable. Deterministic.
- Text: Pillow's bundled default TrueType font at a size scaled to the picture (`ImageFont.load_default
  (size=...)`, Pillow >= 10.1 with FreeType; no system font is assumed), drawn with a contrasting
  outline so names stay readable on any colour.
- The picture keeps the input's size; the legend is a panel beside it, in as many columns as its
  height needs. Names are also written on every region that covers enough of the picture, at the point
  deepest inside the region (largest distance to its border).
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TAB10 = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
_AVOID = ((255, 255, 255), (0, 0, 0), (224, 224, 224))  # white, black, the unlabelled grey
MAX_PALETTE = 255


def palette(n: int) -> np.ndarray:
    """n distinct colours, [n, 3] uint8 (more than 255 repeat the 255 of `_glasbey`)."""
    base = _glasbey()
    index = np.arange(max(0, n)) % len(base)
    return base[index]


@functools.lru_cache(maxsize=1)
def _glasbey() -> np.ndarray:
    levels = np.arange(0, 256, 15, dtype=np.float64)  # 18 levels per channel: 5832 candidates
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = _srgb_to_lab(grid)
    chosen = [np.array(c, np.float64) for c in TAB10]
    nearest = np.full(len(grid), np.inf)
    for colour in [*chosen, *(np.array(c, np.float64) for c in _AVOID)]:
        nearest = np.minimum(nearest, np.linalg.norm(lab - _srgb_to_lab(colour[None]), axis=1))
    while len(chosen) < MAX_PALETTE:
        pick = int(np.argmax(nearest))
        chosen.append(grid[pick])
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[pick], axis=1))
    return np.array(chosen, dtype=np.uint8)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """[N, 3] sRGB 0..255 -> CIELAB (D65)."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = (
        linear
        @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
        / np.array([0.95047, 1.0, 1.08883])
    )
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled TrueType font at `size` px (falls back to its bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def text_size_for(width: int, height: int) -> int:
    return int(max(12, min(32, round(min(width, height) / 30))))


# ---- the label overlay -------------------------------------------------------------------------------
def overlay(
    rgb: np.ndarray,  # [H, W, 3] uint8
    label_map: np.ndarray,  # [H, W] int, index into names, -1 unlabelled
    names: list[str],
    shares: dict[str, float] | None = None,
    *,
    alpha: float = 0.5,
    min_region_share: float = 0.02,
) -> Image.Image:
    """The picture (input size) with each name's colour blended in and its name written on large
    regions, plus a legend panel beside it (names by pixel share, with the share)."""
    colours = palette(len(names))
    height, width = label_map.shape
    painted = np.where((label_map >= 0)[..., None], colours[np.clip(label_map, 0, None)], rgb)
    picture = Image.fromarray(_blend(painted, rgb, alpha))
    size = text_size_for(width, height)
    shares = shares if shares is not None else _shares(label_map, len(names), names)
    draw = ImageDraw.Draw(picture)
    for index, (y, x) in _region_anchors(label_map, len(names), min_region_share).items():
        _outlined_text(draw, (x, y), names[index], size, anchor="mm")
    present = sorted(
        (i for i, n in enumerate(names) if shares.get(n, 0) > 0), key=lambda i: -shares[names[i]]
    )
    entries = [
        (tuple(int(c) for c in colours[i]), f"{names[i]} ({100 * shares[names[i]]:.1f}%)") for i in present
    ]
    return beside(picture, legend(entries, height, size))


def _blend(top: np.ndarray, base: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * top + (1 - alpha) * base as uint8, in float32 (a 12 MPix picture: 144 MB, not 288)."""
    a = np.float32(alpha)
    return (a * top.astype(np.float32) + (np.float32(1) - a) * base.astype(np.float32)).astype(np.uint8)


def _shares(label_map: np.ndarray, n: int, names: list[str]) -> dict[str, float]:
    counts = np.bincount(label_map[label_map >= 0].ravel(), minlength=n)
    return {name: float(counts[i]) / max(1, label_map.size) for i, name in enumerate(names)}


def _region_anchors(label_map: np.ndarray, n: int, min_share: float) -> dict[int, tuple[int, int]]:
    """{index: (y, x)} for each name covering at least `min_share` of the picture: the pixel farthest
    from its region's border (computed on a copy at most 256 px on a side)."""
    from scipy.ndimage import distance_transform_edt

    height, width = label_map.shape
    step = max(1, math.ceil(max(height, width) / 256))
    small = label_map[::step, ::step]
    counts = np.bincount(small[small >= 0].ravel(), minlength=n)
    anchors = {}
    for index in np.flatnonzero(counts >= min_share * small.size):
        depth = distance_transform_edt(np.pad(small == index, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        anchors[int(index)] = (min(height - 1, y * step + step // 2), min(width - 1, x * step + step // 2))
    return anchors


def _outlined_text(draw: ImageDraw.ImageDraw, xy, text: str, size: int, anchor: str = "la") -> None:
    draw.text(
        xy, text, font=font(size), fill=(255, 255, 255), stroke_width=max(1, size // 8),
        stroke_fill=(0, 0, 0), anchor=anchor,
    )  # fmt: skip


def legend(entries: list[tuple[tuple[int, int, int], str]], height: int, size: int) -> Image.Image:
    """Swatch + text rows, in columns so the panel is no taller than `height` (at least one row)."""
    face = font(size)
    row = int(size * 1.5)
    pad = max(4, size // 2)
    if not entries:
        entries = [((255, 255, 255), "(nothing named)")]
    rows_per_column = max(1, (height - 2 * pad) // row)
    columns = math.ceil(len(entries) / rows_per_column)
    rows_per_column = math.ceil(len(entries) / columns)
    text_width = max(
        int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=face)) for _, t in entries
    )
    column_width = size + pad + text_width + 2 * pad
    panel = Image.new(
        "RGB", (columns * column_width + pad, max(height, rows_per_column * row + 2 * pad)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(panel)
    for k, (colour, text) in enumerate(entries):
        x = pad + (k // rows_per_column) * column_width
        y = pad + (k % rows_per_column) * row
        draw.rectangle([x, y, x + size, y + size], fill=colour, outline=(0, 0, 0))
        draw.text((x + size + pad, y + size // 2), text, font=face, fill=(0, 0, 0), anchor="lm")
    return panel


def beside(picture: Image.Image, panel: Image.Image) -> Image.Image:
    """`picture` unchanged at the left, `panel` at its right, on white."""
    canvas = Image.new(
        "RGB", (picture.width + panel.width, max(picture.height, panel.height)), (255, 255, 255)
    )
    canvas.paste(picture, (0, 0))
    canvas.paste(panel, (picture.width, 0))
    return canvas


# ---- the cluster grid ----------------------------------------------------------------------------------
def top_nouns(captions: list[str], nouns: list[str], k: int = 3) -> list[str]:
    """The cluster's nouns ranked by how many of its captions mention them (a word starting with the
    noun, so "dogs" counts for "dog"); ties keep the extractor's first-seen order."""
    counts = {
        noun: sum(bool(re.search(rf"\b{re.escape(noun)}", c, flags=re.IGNORECASE)) for c in captions)
        for noun in nouns
    }
    return sorted(nouns, key=lambda noun: -counts[noun])[:k]


def cluster_picture(
    rgb: np.ndarray,  # [H, W, 3] uint8
    cluster_grid: np.ndarray | list,  # [32, 32] cluster ids (over the whole picture)
    captions: dict[int, list[str]],
    cluster_nouns: dict[int, list[str]],
    *,
    alpha: float = 0.45,
) -> Image.Image:
    """The picture (input size) with the cluster grid blended in (nearest-neighbour, one cell = 1/32 of
    each side), cell lines, cluster borders, each cluster's id written on it, and a legend beside it:
    `cluster id: its top nouns`."""
    grid = np.asarray(cluster_grid, dtype=np.int64)
    height, width = rgb.shape[:2]
    rows = np.minimum(np.arange(height) * grid.shape[0] // height, grid.shape[0] - 1)
    cols = np.minimum(np.arange(width) * grid.shape[1] // width, grid.shape[1] - 1)
    ids = sorted(int(c) for c in np.unique(grid))
    lookup = np.zeros(max(ids) + 1, np.int64)
    lookup[ids] = np.arange(len(ids))
    slots = lookup[grid][rows][:, cols]  # [H, W] index into ids
    colours = palette(len(ids))
    picture = _blend(colours[slots], rgb, alpha)
    cell_lines = np.zeros((height, width), bool)
    if height >= 4 * grid.shape[0] and width >= 4 * grid.shape[1]:  # faint cell lines where cells are visible
        cell_lines[1:][rows[1:] != rows[:-1]] = True
        cell_lines[:, 1:][:, cols[1:] != cols[:-1]] = True
    picture[cell_lines] = (3 * picture[cell_lines].astype(np.uint16) + 255) // 4
    border = np.zeros((height, width), bool)
    border[1:, :] |= slots[1:, :] != slots[:-1, :]
    border[:, 1:] |= slots[:, 1:] != slots[:, :-1]
    picture[border] = 0
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    size = text_size_for(width, height)
    for k, (y, x) in _region_anchors(slots, len(ids), 0.0).items():
        _outlined_text(draw, (x, y), str(ids[k]), size, anchor="mm")
    entries = []
    for k, cid in enumerate(ids):
        nouns = top_nouns(captions.get(cid, []), cluster_nouns.get(cid, []))
        entries.append((tuple(int(v) for v in colours[k]), f"{cid}: {', '.join(nouns) or '(no nouns)'}"))
    return beside(image, legend(entries, height, size))
