"""A small offline dataset WRITTEN in the Cityscapes layout, so every command runs with no download and
the tests exercise the real Cityscapes reader.

Each image is a street-like scene of flat, slightly noisy regions: sky, building, vegetation, road,
sidewalk, a car, a person, and a void strip at the bottom (ego vehicle, label id 1 -> ignored). The
label-id PNG is drawn from the same shapes, so it matches the image pixel for pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from selfseg_fast.evaluation.datasets.cityscapes import CityscapesDataset
from selfseg_fast.paths import cache_path

CITY = "synth"
# label id -> RGB colour of its region in the image
COLOURS = {
    23: (110, 160, 230),  # sky
    11: (140, 110, 90),  # building
    21: (60, 140, 50),  # vegetation
    7: (90, 90, 95),  # road
    8: (200, 180, 170),  # sidewalk
    26: (200, 30, 30),  # car
    24: (240, 200, 40),  # person
    1: (10, 10, 10),  # ego vehicle (void)
}


def default_synthetic_root() -> Path:
    """$SELFSEG_SYNTHETIC_ROOT, else synthetic-cityscapes under the cache root (paths.py)."""
    return cache_path("synthetic_dataset")


def draw_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One random scene as a [H, W] uint8 label-id map."""
    label = np.full((height, width), 23, dtype=np.uint8)  # sky
    horizon = int(height * rng.uniform(0.35, 0.5))
    rows, cols = np.mgrid[0:height, 0:width]
    skyline = (horizon - height * rng.uniform(0.1, 0.25, size=4)).astype(int)
    for i, top in enumerate(skyline):  # four building blocks
        block = (cols >= i * width // 4) & (cols < (i + 1) * width // 4) & (rows >= top) & (rows < horizon)
        label[block] = 11
    cy, cx, r = horizon - height * 0.05, width * rng.uniform(0.2, 0.8), height * rng.uniform(0.1, 0.18)
    label[(rows - cy) ** 2 + (cols - cx) ** 2 < r**2] = 21  # a tree crown
    label[rows >= horizon] = 7  # road
    curb = horizon + int((height - horizon) * 0.25)
    label[(rows >= horizon) & (rows < curb) & (cols < width * 0.3)] = 8  # sidewalk on the left
    car_w, car_h = int(width * rng.uniform(0.2, 0.3)), int(height * rng.uniform(0.12, 0.2))
    x0 = int(rng.uniform(0.3, 0.65) * width)
    y0 = curb
    label[y0 : y0 + car_h, x0 : x0 + car_w] = 26
    px = int(width * rng.uniform(0.05, 0.2))
    label[horizon - height // 10 : curb + height // 20, px : px + max(2, width // 25)] = 24  # person
    label[rows >= height - max(2, height // 16)] = 1  # ego vehicle bonnet (void)
    return label


def render(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[H, W] label ids -> [H, W, 3] uint8 image: region colours plus mild Gaussian noise."""
    lut = np.zeros((256, 3), dtype=np.float32)
    for label_id, colour in COLOURS.items():
        lut[label_id] = colour
    image = lut[label] + rng.normal(0.0, 6.0, size=label.shape + (3,))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_cityscapes(
    root: str | Path, num_images: int = 4, size: tuple[int, int] = (128, 256), seed: int = 0
) -> Path:
    """Write `num_images` (H, W)=`size` scenes into `root` in the Cityscapes val layout; return root."""
    root = Path(root)
    image_dir = root / "leftImg8bit" / "val" / CITY
    label_dir = root / "gtFine" / "val" / CITY
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        label = draw_scene(rng, *size)
        stem = f"{CITY}_{i:06d}_000019"
        Image.fromarray(render(label, rng)).save(image_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(label).save(label_dir / f"{stem}_gtFine_labelIds.png")
    return root


class SyntheticDataset(CityscapesDataset):
    """The synthetic scenes read back with the Cityscapes reader; written on first use if `root` is empty."""

    name = "synthetic"

    def __init__(self, root: str | Path | None = None, num_images: int = 4) -> None:
        root = Path(root) if root is not None else default_synthetic_root()
        if not any((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png")):
            write_synthetic_cityscapes(root, num_images=num_images)
        super().__init__(root, split="val")
