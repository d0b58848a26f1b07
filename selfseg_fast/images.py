"""Load any image a user throws at us as 8-bit RGB, or fail with one line naming the file and the reason.

Conversions (what a user gets, and why):
- EXIF orientation is applied first, so the picture is upright as a viewer shows it.
- Transparency (RGBA, LA, palette with a transparent index) is composited over white: BLIP was
  trained on photos, and white is how browsers show transparent regions of product-style images.
- 16-bit and 32-bit integer images (I;16, I;16B, I) are scaled by their bit depth's full range
  (65535, or the observed maximum for 32-bit), never clipped to 255: a 16-bit PNG keeps its contrast.
- Float images (F) are scaled from their own [min, max] range to [0, 255].
- Grayscale, bilevel, CMYK, YCbCr, LAB and palette images are converted with Pillow's conversions.
- GIF/WebP animations and multi-page TIFFs: the first frame.
- Decompression bombs: images over `max_pixels` (default 2x Pillow's warning limit, ~179 MPix)
  are refused before decoding; raise the limit with `SELFSEG_MAX_PIXELS` if you really mean it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from selfseg_fast.errors import ImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".jfif"}
)
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # twice Pillow's DecompressionBombWarning threshold


@dataclass
class LoadedImage:
    """An image ready for the pipeline."""

    path: str
    rgb: np.ndarray  # [H, W, 3] uint8, upright (EXIF applied)
    original_mode: str  # Pillow mode of the file, e.g. "I;16", "RGBA", "CMYK"
    original_size: tuple[int, int]  # (W, H) as stored in the file, before EXIF rotation


def max_pixels() -> int:
    return int(os.environ.get("SELFSEG_MAX_PIXELS", DEFAULT_MAX_PIXELS))


def load_image(path: str | os.PathLike, *, limit_pixels: int | None = None) -> LoadedImage:
    """Read `path` into a `LoadedImage`; any failure raises `ImageError` naming the file."""
    path = Path(path)
    limit = max_pixels() if limit_pixels is None else limit_pixels
    if not path.exists():
        raise ImageError("no such file (check the path)", path=str(path))
    if path.is_dir():
        raise ImageError(
            "is a folder, not an image (pass the folder to read every image in it)", path=str(path)
        )
    if path.stat().st_size == 0:
        raise ImageError("empty file (0 bytes)", path=str(path))
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > limit:
                raise ImageError(
                    f"{width}x{height} = {width * height / 1e6:.0f} MPix exceeds the "
                    f"{limit / 1e6:.0f} MPix limit (possible decompression bomb; "
                    "set SELFSEG_MAX_PIXELS to allow)",
                    path=str(path),
                )
            mode = image.mode
            image.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
                upright = ImageOps.exif_transpose(image)
            rgb = to_rgb8(upright)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read (unknown or corrupt format)", path=str(path)) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused as a decompression bomb ({exc})", path=str(path)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = (
            "truncated or corrupt file"
            if "truncated" in str(exc).lower() or "broken" in str(exc).lower()
            else str(exc)
        )
        raise ImageError(f"cannot decode: {reason}", path=str(path)) from None
    return LoadedImage(str(path), rgb, mode, (width, height))


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> [H, W, 3] uint8 RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        full = 65535.0 if mode.startswith("I;16") else max(float(values.max()), 1.0)
        if mode == "I" and values.max() <= 65535 and values.min() >= 0:
            full = 65535.0 if values.max() > 255 else 255.0  # 16-bit PNGs load as "I" in Pillow
        gray = np.clip(np.rint(values / full * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(values, nan=lo) - lo) / (hi - lo if hi > lo else 1.0)
        gray = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" or mode == "PA" or mode == "LA" or (mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def iter_image_paths(args: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand CLI arguments: files as given (even odd extensions: they fail later with a clear line),
    folders to their image files (sorted, recursive). A folder without any image is an error, raised
    before any work starts (a typo in a folder name should not look like a finished run)."""
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImageError(
                    f"no image files in this folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})",
                    path=str(path),
                )
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def load_images(paths: Iterable[str | os.PathLike]) -> list[LoadedImage | ImageError]:
    """Load each path; a failure is returned in its place (a multi-image run keeps going)."""
    out: list[LoadedImage | ImageError] = []
    for path in paths:
        try:
            out.append(load_image(path))
        except ImageError as exc:
            out.append(exc)
    return out
