"""A small offline dataset WRITTEN in the Cityscapes layout, so every command runs with no download and
the tests exercise the real Cityscapes reader.

Each image is a street-like scene of flat, slightly noisy regions: sky, building, vegetation, road,
sidewalk, a car, a person, and a void strip at the bottom (ego vehicle, label id 1 -> ignored). The
label-id PNG is drawn from the same shapes, so it matches the image pixel for pixel.

The set is written atomically and validated on every open (a manifest of file hashes, written last):
a killed write never leaves a folder that later runs would score as 0 images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.evaluation.datasets.base import DatasetError
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


MANIFEST = "synthetic.json"  # written last: its presence and hashes mark a complete set
_OUR_ENTRIES = {"leftImg8bit", "gtFine", MANIFEST}


def write_synthetic_cityscapes(
    root: str | Path, num_images: int = 4, size: tuple[int, int] = (128, 256), seed: int = 0
) -> Path:
    """Write `num_images` (H, W)=`size` scenes into `root` in the Cityscapes val layout; return root.

    Atomic: the set is written into a temporary sibling folder, its manifest (file names and SHA-256)
    last, and the folder is renamed onto `root` in one step; a killed write leaves `root` untouched
    (a stale temporary folder at worst). A `root` holding anything but a synthetic set is refused."""
    root = Path(root)
    if root.exists() and not _is_ours(root):
        raise DatasetError(
            "folder is not empty and holds no synthetic dataset; pass a new or empty --root", path=str(root)
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        files = _write_scenes(tmp, num_images, size, seed)
        manifest = {"format": 1, "num_images": num_images, "size": list(size), "seed": seed, "files": files}
        write_json_atomic(tmp / MANIFEST, manifest, sort_keys=True)
        _swap_in(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_scenes(folder: Path, num_images: int, size: tuple[int, int], seed: int) -> dict[str, str]:
    image_dir = folder / "leftImg8bit" / "val" / CITY
    label_dir = folder / "gtFine" / "val" / CITY
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    files = {}
    for i in range(num_images):
        label = draw_scene(rng, *size)
        stem = f"{CITY}_{i:06d}_000019"
        pairs = (
            (image_dir / f"{stem}_leftImg8bit.png", render(label, rng)),
            (label_dir / f"{stem}_gtFine_labelIds.png", label),
        )
        for path, array in pairs:
            Image.fromarray(array).save(path)
            files[path.relative_to(folder).as_posix()] = _sha256(path)
    return files


def _swap_in(tmp: Path, root: Path) -> None:
    """Rename the finished `tmp` onto `root`; a stale or partial set of ours is moved aside first."""
    stale = None
    if root.exists() and any(root.iterdir()):
        stale = root.with_name(f".{root.name}.stale-{os.getpid()}")
        os.replace(root, stale)
    try:
        os.replace(tmp, root)  # replaces an empty folder in one step
    except OSError:
        if validate_synthetic(root) is not None:  # not another process's finished set: a real failure
            raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def validate_synthetic(root: Path) -> str | None:
    """None if `root` holds a complete synthetic set (manifest present, every file there with its
    hash), else the reason it does not."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no complete manifest"
    if not files or len(files) != 2 * int(manifest.get("num_images", -1)):
        return "manifest lists the wrong number of files"
    for relative, digest in files.items():
        path = root / relative
        if not path.is_file() or _sha256(path) != digest:
            return f"{relative} is missing or changed"
    return None


def _previous_settings(root: Path, num_images: int) -> dict:
    """The settings of the set a manifest describes (so a damaged set is rewritten as it was)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        return {
            "num_images": int(manifest["num_images"]),
            "size": tuple(manifest["size"]),
            "seed": int(manifest["seed"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {"num_images": num_images}


def _is_ours(root: Path) -> bool:
    return root.is_dir() and {p.name for p in root.iterdir()} <= _OUR_ENTRIES


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SyntheticDataset(CityscapesDataset):
    """The synthetic scenes read back with the Cityscapes reader. Validated on every open; a missing,
    partial or changed set (e.g. from a killed earlier write) is written again (atomically)."""

    name = "synthetic"

    def __init__(self, root: str | Path | None = None, num_images: int = 4) -> None:
        root = Path(root) if root is not None else default_synthetic_root()
        if validate_synthetic(root) is not None:
            write_synthetic_cityscapes(root, **_previous_settings(root, num_images))
            reason = validate_synthetic(root)
            if reason is not None:
                raise DatasetError(f"synthetic dataset could not be written ({reason})", path=str(root))
        super().__init__(root, split="val")
