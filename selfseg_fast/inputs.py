"""What the Python API accepts as an image, turned into the pipeline's internal `LoadedImage`.

    as_images(x) -> (list[LoadedImage], single: bool)

Accepted, alone or in a list, tuple or iterator (the same rules as for files, so a path,
`Image.open(path)` and `np.asarray(Image.open(path))` of an ordinary RGB photo give the same result):
- a path (str or os.PathLike): read by `images.load_image` (EXIF, transparency, 16-bit, pixel limit);
- a PIL image: EXIF orientation applied, then `images.to_rgb8` (palette, RGBA/LA over white, CMYK,
  16-/32-bit and float modes) -- the frame the image is on is used;
- a numpy array: [H, W, 3] RGB (the usual case), [H, W] or [H, W, 1] grayscale, [H, W, 2] gray+alpha,
  [H, W, 4] RGBA (over white), [3, H, W] when the last axis cannot be channels; uint8 as is,
  uint16 scaled by 65535 (like a 16-bit file), bool as 0/255, other integers if they fit 0..255
  (else 0..65535), floats in [0, 1] (x 255);
- a torch tensor: [3, H, W] / [1, H, W] / [4, H, W] (channels first, as torchvision writes them) or
  [H, W], with the numpy rules for its dtype; a 4-D array or tensor is a batch ([B, C, H, W] tensor,
  [B, H, W, C] array).
Anything else, or an unusable array, is one `ImageError` line naming the item (its path, or
`image[i]`) and what to pass instead. Images over the pixel limit are refused as for files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from selfseg_fast.errors import ImageError
from selfseg_fast.images import LoadedImage, load_image, max_pixels, to_rgb8

ACCEPTED = "a path, a PIL image, a numpy array [H, W, 3] uint8, a torch tensor [3, H, W], or a list of them"


def as_images(images: Any) -> tuple[list[LoadedImage], bool]:
    """Coerce one image or a batch; `single` says whether one image (not a list) was given."""
    if isinstance(images, (list, tuple, Iterator)):  # an iterator/generator is a batch too
        out: list[LoadedImage] = []
        for item in images:
            out.extend(_as_batch_or_image(item, f"image[{len(out)}]"))
        return out, False
    batch = _as_batch_or_image(images, "image")
    return batch, not _is_batch_array(images)


def as_image(image: Any, name: str = "image") -> LoadedImage:
    """Coerce exactly one image (see the module docstring)."""
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return _from_pil(image, getattr(image, "filename", "") or name)
    array = _to_numpy(image, name)
    if array is None:
        raise ImageError(f"unsupported input of type {type(image).__name__}; pass {ACCEPTED}", path=name)
    return _from_array(array, name)


def _as_batch_or_image(item: Any, name: str) -> list[LoadedImage]:
    if _is_batch_array(item):
        return [as_image(one, f"{name}[{i}]") for i, one in enumerate(item)]
    return [as_image(item, name)]


def _is_batch_array(item: Any) -> bool:
    return getattr(item, "ndim", 0) == 4 and not isinstance(item, (str, os.PathLike, Image.Image))


def _to_numpy(item: Any, name: str) -> np.ndarray | None:
    """A numpy array in [H, W(, C)] layout, or None for an unsupported type."""
    if isinstance(item, np.ndarray):
        if item.ndim == 3 and item.shape[0] in (1, 3) and item.shape[2] not in (1, 2, 3, 4):
            return item.transpose(1, 2, 0)  # channels first [C, H, W] (HF's image processors guess so too)
        return item
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if isinstance(item, torch.Tensor):
        tensor = item.detach().to("cpu")
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        array = tensor.numpy()
        if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4):
            array = array.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
        elif array.ndim == 3:
            raise ImageError(
                f"tensor of shape {list(item.shape)}: expected channels first, [3, H, W]", path=name
            )
        return array
    return None


def _from_pil(image: Image.Image, name: str) -> LoadedImage:
    width, height = image.size
    _check_pixels(width, height, name)
    mode = image.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            rgb = to_rgb8(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode this PIL image: {exc}", path=name) from None
    return LoadedImage(str(name), rgb, mode, (width, height))


def _from_array(array: np.ndarray, name: str) -> LoadedImage:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ImageError(
            f"array of shape {list(array.shape)}: expected [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W]",
            path=name,
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"empty array of shape {list(array.shape)}", path=name)
    _check_pixels(width, height, name)
    array8 = _to_uint8(array, name)
    if array8.ndim == 2:
        rgb = np.repeat(array8[:, :, None], 3, axis=2)
        mode = "L"
    else:
        mode = {2: "LA", 3: "RGB", 4: "RGBA"}[array8.shape[2]]
        rgb = to_rgb8(Image.fromarray(np.ascontiguousarray(array8), mode=mode))
    return LoadedImage(str(name), np.ascontiguousarray(rgb), f"{mode} ({array.dtype})", (width, height))


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Scale to 0..255 by the dtype's rule (module docstring)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise ImageError(f"integer values {lo}..{hi} outside 0..65535 ({array.dtype})", path=name)
        full = 65535 if (array.dtype == np.uint16 or hi > 255) else 255
        return _rounded(array.astype(np.float64) * (255.0 / full))
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageError("float image with NaN or infinite values", path=name)
        lo, hi = float(values.min()), float(values.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"float values {lo:.3g}..{hi:.3g}: float images must lie in [0, 1] "
                "(or pass uint8 values 0..255)",
                path=name,
            )
        return _rounded(values * 255.0)
    raise ImageError(f"unsupported array dtype {array.dtype}; pass {ACCEPTED}", path=name)


def _rounded(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_pixels(width: int, height: int, name: str) -> None:
    limit = max_pixels()
    if width * height > limit:
        raise ImageError(
            f"{width}x{height} = {width * height / 1e6:.0f} MPix exceeds the {limit / 1e6:.0f} MPix limit "
            "(set SELFSEG_MAX_PIXELS to allow)",
            path=name,
        )


def names_per_image(class_names: Sequence[str] | Sequence[Sequence[str]], count: int) -> list[list[str]]:
    """`segment`'s names: one list for every image (["car", "road"]) or one list per image."""
    if isinstance(class_names, str):
        raise ValueError('class names must be a list, e.g. ["car", "road"], not one string')
    lists = list(class_names)
    if all(isinstance(n, str) for n in lists):
        return [list(lists) for _ in range(count)]  # type: ignore[arg-type]
    if len(lists) != count:
        raise ValueError(f"{count} images but {len(lists)} name lists")
    out = []
    for names in lists:
        if isinstance(names, str):
            raise ValueError("give either one list of names or one list per image, not a mix")
        out.append([str(n) for n in names])
    return out
