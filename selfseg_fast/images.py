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

import io
import logging
import os
import stat
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from selfseg_fast.errors import ImageError, ResourceError, SelfSegError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".jfif"}
)
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # twice Pillow's DecompressionBombWarning threshold

log = logging.getLogger(__name__)


class ImageTooLargeError(ImageError, ResourceError):
    """An image over the pixel limit: an input problem (ImageError) and a refused budget (ResourceError,
    which services answer with 413)."""


@dataclass
class LoadedImage:
    """An image ready for the pipeline."""

    path: str
    rgb: np.ndarray  # [H, W, 3] uint8, upright (EXIF applied)
    original_mode: str  # Pillow mode of the file, e.g. "I;16", "RGBA", "CMYK"
    original_size: tuple[int, int]  # (W, H) as stored in the file, before EXIF rotation
    # A request's deadline (time.monotonic() seconds) for its caption cycles; None: no deadline. Past
    # it, the image keeps the names found so far and its result says `degraded` (stages/adaptive.py).
    deadline: float | None = None
    # A request's own consolidate/taxonomy settings (config overrides, e.g. (("consolidate.mode",
    # "specific"),)); empty: the pipeline's config (selfseg_fast/naming.py).
    naming: tuple[tuple[str, Any], ...] = ()


def display_path(path: str | os.PathLike) -> str:
    """A file name safe to print on one line: control characters (newline, tab, ...) and undecodable
    bytes are shown as escapes (`a\\nb.png`), everything printable (accents too) as is."""
    text = os.fspath(path)
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text
    )


def max_pixels() -> int:
    """SELFSEG_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get("SELFSEG_MAX_PIXELS")
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise SelfSegError(
            f"SELFSEG_MAX_PIXELS={raw!r}: expected a number of pixels, e.g. 300000000"
        ) from None
    if value < 1:
        raise SelfSegError(f"SELFSEG_MAX_PIXELS={raw!r}: must be at least 1")
    return value


def load_image(path: str | os.PathLike, *, limit_pixels: int | None = None) -> LoadedImage:
    """Read `path` into a `LoadedImage`; any failure raises `ImageError` naming the file."""
    path = Path(path)
    shown = display_path(path)
    _check_file(path, shown)
    return _decode(path, shown, str(path), limit_pixels)


def load_image_bytes(data: bytes, name: str = "upload", *, limit_pixels: int | None = None) -> LoadedImage:
    """Like `load_image`, for an image held in memory (an HTTP upload); `name` appears in errors."""
    shown = display_path(name)
    if not data:
        raise ImageError("empty upload (0 bytes)", path=shown)
    return _decode(io.BytesIO(data), shown, name, limit_pixels)


def _check_file(path: Path, shown: str) -> None:
    """Missing, dangling, folder, FIFO/socket/device and empty files, each with its own line (a FIFO
    must never reach Pillow: opening it would block until someone writes to it)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            target = display_path(os.readlink(path))
            raise ImageError(f"dangling symbolic link (points to {target})", path=shown) from None
        raise ImageError("no such file (check the path)", path=shown) from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}", path=shown) from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError("is a folder, not an image (pass the folder to read every image in it)", path=shown)
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device"
        )
        raise ImageError(f"not a regular file ({kind}); only image files can be read", path=shown)
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)", path=shown)


def _decode(source: Path | BinaryIO, shown: str, path_text: str, limit_pixels: int | None) -> LoadedImage:
    limit = max_pixels() if limit_pixels is None else limit_pixels
    _let_pillow_allow(limit)
    with _warnings_as_lines(shown):
        try:
            with Image.open(source) as image:
                width, height = image.size
                if width * height > limit:
                    raise ImageTooLargeError(
                        f"{width}x{height} = {width * height / 1e6:.0f} MPix exceeds the "
                        f"{limit / 1e6:.0f} MPix limit (possible decompression bomb; "
                        "set SELFSEG_MAX_PIXELS to allow)",
                        path=shown,
                    )
                mode = image.mode
                image.seek(0)
                image.load()
                upright = ImageOps.exif_transpose(image)
                rgb = to_rgb8(upright)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError("not an image Pillow can read (unknown or corrupt format)", path=shown) from None
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"refused as a decompression bomb ({exc})", path=shown) from None
        except MemoryError:
            raise ImageTooLargeError("not enough memory to decode this image", path=shown) from None
        except (OSError, SyntaxError, ValueError, TypeError, IndexError, struct_error) as exc:
            reason = (
                "truncated or corrupt file"
                if "truncated" in str(exc).lower() or "broken" in str(exc).lower()
                else f"{type(exc).__name__}: {exc}"
            )
            raise ImageError(f"cannot decode: {reason}", path=shown) from None
    return LoadedImage(path_text, rgb, mode, (width, height))


# ---- Pillow's own bomb check and warnings ----------------------------------------------------------------
def _let_pillow_allow(limit: int) -> None:
    """Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS on its own, before our check: raise its
    threshold (never lower it) so that SELFSEG_MAX_PIXELS above Pillow's default takes effect. Our own
    check, which runs first on the header's size, stays the limit."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and 2 * current < limit:
        Image.MAX_IMAGE_PIXELS = (limit + 1) // 2


_local = threading.local()
_hook_lock = threading.Lock()


class _warnings_as_lines:
    """Warnings raised while decoding one file (Pillow's corrupt-EXIF or palette notes, numpy overflow
    in a float image) become one log line each, naming the file: `FILE: UserWarning: text`.

    Thread-safe without `warnings.catch_warnings` (which swaps process-wide state and is not): a
    `showwarning` wrapper, installed once, sends warnings raised on a thread that is decoding to that
    thread's list and everything else to the previous handler; an appended filter makes Pillow's and
    this module's warnings "always" shown (instead of once per code location), so every file reports
    its own. Filters set earlier (e.g. a user's "ignore") still win."""

    def __init__(self, shown: str) -> None:
        self.shown = shown

    def __enter__(self) -> None:
        _install_hook()
        self.outer = getattr(_local, "sink", None)
        _local.sink = []

    def __exit__(self, *exc) -> None:
        caught, _local.sink = _local.sink, self.outer
        for category, message in caught:
            if category is Image.DecompressionBombWarning:
                continue  # our own limit decides
            log.warning("%s: %s: %s", self.shown, category.__name__, " ".join(str(message).split()))


def _install_hook() -> None:
    if getattr(warnings.showwarning, "_selfseg_route", False):
        return
    with _hook_lock:
        if getattr(warnings.showwarning, "_selfseg_route", False):
            return
        previous = warnings.showwarning

        def route(message, category, filename, lineno, file=None, line=None):
            sink = getattr(_local, "sink", None)
            if sink is not None:
                sink.append((category, message))
            else:
                previous(message, category, filename, lineno, file, line)

        route._selfseg_route = True  # type: ignore[attr-defined]
        warnings.showwarning = route
        for module in (r"PIL(\..*)?", r"selfseg_fast\.images"):
            warnings.filterwarnings("always", module=module, append=True)


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


def iter_image_paths(
    args: Iterable[str | os.PathLike], *, exclude: Iterable[str | os.PathLike] = ()
) -> list[Path]:
    """Expand CLI arguments: files as given (even odd extensions: they fail later with a clear line),
    folders to their image files (sorted, recursive). A folder without any image is an error, raised
    before any work starts (a typo in a folder name should not look like a finished run).

    Inside folders: symlinked subfolders are followed (each real folder once: a link loop or a second
    link to a folder already read is reported and skipped); dangling links, FIFOs, sockets and devices
    with an image extension are kept, so that each gets its one-line error instead of vanishing (a FIFO
    is never opened). `exclude`: folders to leave out (e.g. an output folder inside the input)."""
    excluded = {os.path.realpath(e) for e in exclude}
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(_walk_images(path, excluded))
            if not found:
                raise ImageError(
                    f"no image files in this folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})",
                    path=display_path(path),
                )
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def _walk_images(root: Path, excluded: set[str]) -> Iterable[Path]:
    seen: dict[str, Path] = {}
    pending = [root]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in excluded:
            continue
        if real in seen:
            log.warning(
                "%s: skipped: links to %s, which is already read (a symlink loop or a second link)",
                display_path(folder),
                display_path(seen[real]),
            )
            continue
        seen[real] = folder
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning(
                "%s: skipped: cannot list this folder (%s)", display_path(folder), exc.strerror or exc
            )
            continue
        for entry in entries:
            entry_path = Path(entry.path)
            if entry.is_dir(follow_symlinks=True):
                pending.append(entry_path)
            elif entry_path.suffix.lower() in IMAGE_EXTENSIONS:
                yield entry_path  # regular files, and dangling links / FIFOs that will fail by name


def load_images(paths: Iterable[str | os.PathLike]) -> list[LoadedImage | ImageError]:
    """Load each path; a failure is returned in its place (a multi-image run keeps going)."""
    out: list[LoadedImage | ImageError] = []
    for path in paths:
        try:
            out.append(load_image(path))
        except ImageError as exc:
            out.append(exc)
    return out
