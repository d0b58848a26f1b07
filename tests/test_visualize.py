"""Label PNGs (palette up to 255 names, 16-bit above), colours, the overlay with its legend and the
cluster-grid picture."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from selfseg_fast.label_maps import label_png_bytes, pixel_shares, read_label_png
from selfseg_fast.visualize import (
    TAB10,
    _srgb_to_lab,
    cluster_picture,
    legend,
    overlay,
    palette,
    top_nouns,
)


def _stripes(height: int, width: int, n: int) -> np.ndarray:
    return np.broadcast_to((np.arange(width) * n // width)[None, :], (height, width)).astype(np.int64).copy()


def test_label_png_is_a_palette_png_whose_values_are_the_indices():
    label_map = _stripes(6, 40, 5)
    label_map[0, 0] = -1
    image = Image.open(io.BytesIO(label_png_bytes(label_map)))
    assert image.mode == "P"  # colours in any viewer (grayscale indices looked black)
    assert np.array_equal(np.asarray(image)[0, 1:], label_map[0, 1:]) and np.asarray(image)[0, 0] == 255
    colours = np.asarray(image.convert("RGB"))
    assert len({tuple(c) for c in colours[1]}) == 5
    assert np.array_equal(read_label_png(io.BytesIO(label_png_bytes(label_map))), label_map)


def test_more_than_255_names_give_a_16bit_png_that_does_not_wrap():
    label_map = _stripes(4, 600, 300)  # indices 0..299
    label_map[1, 1] = -1
    data = label_png_bytes(label_map, n_names=300)
    back = read_label_png(io.BytesIO(data))
    assert back.max() == 299 and np.array_equal(back, label_map)  # 8 bits would wrap 256 -> 0
    assert Image.open(io.BytesIO(data)).mode.startswith("I")


def test_pixel_shares_count_each_name_once():
    label_map = np.array([[0, 0, 1, -1]])
    assert pixel_shares(label_map, ["a", "b", "c"]) == {"a": 0.5, "b": 0.25, "c": 0.0}


def test_palette_is_tab10_first_then_distinguishable():
    colours = palette(40)
    assert [tuple(int(v) for v in c) for c in colours[:10]] == list(TAB10)
    lab = _srgb_to_lab(colours.astype(float))
    gaps = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(40) * 1e9
    assert gaps.min() > 15  # CIELAB distance: clearly different colours, 40 of them
    assert len({tuple(c) for c in palette(255)}) == 255
    assert np.array_equal(palette(300)[255], palette(300)[0])  # repeats beyond 255


def test_overlay_keeps_the_input_size_names_regions_and_fits_30_names_in_columns():
    rgb = np.full((120, 200, 3), 128, np.uint8)
    label_map = _stripes(120, 200, 32)
    names = [f"thing{i}" for i in range(32)]
    picture = overlay(rgb, label_map, names)
    assert picture.height == 120 and picture.width > 200
    assert np.array_equal(np.asarray(picture)[:, 0], np.asarray(overlay(rgb, label_map, names))[:, 0])
    panel = np.asarray(picture)[:, 200:]
    assert (panel != 255).any()  # a legend was drawn beside
    # a region's name is written on it: its pixels are no longer the plain blend
    plain = (0.5 * palette(32)[label_map] + 0.5 * rgb).astype(np.uint8)
    assert (np.asarray(picture)[:, :200] != plain).any()


def test_legend_uses_columns_when_rows_do_not_fit():
    entries = [((0, 0, 0), f"name {i}") for i in range(30)]
    tall = legend(entries, height=2000, size=12)
    short = legend(entries, height=200, size=12)
    assert short.height <= 200 and short.width > tall.width


def test_cluster_picture_and_top_nouns():
    assert top_nouns(["a dog on grass", "two dogs", "a tree"], ["grass", "dog", "tree"], k=2) == [
        "dog",
        "grass",
    ]
    rgb = np.zeros((64, 96, 3), np.uint8)
    grid = np.zeros((32, 32), np.int64)
    grid[:, 16:] = 3
    picture = cluster_picture(rgb, grid, {0: ["sky"], 3: ["a red car"]}, {0: ["sky"], 3: ["car"]})
    assert picture.height == 64 and picture.width > 96
    left, right = np.asarray(picture)[10, 5], np.asarray(picture)[10, 80]
    assert tuple(left) != tuple(right)  # two clusters, two colours
