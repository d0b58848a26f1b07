"""The common dataset interface: a list of (image, label) file pairs read lazily into `Sample`s.

A reader only lists its pairs (`_entries`) and decodes one label file into train ids (`_read_label`).
Iteration checks each pair (image readable, label present and readable, same size); a broken pair is
reported by name on stderr as one warning line and skipped, so a long benchmark run goes on (the
benchmark then counts it and exits non-zero unless told `--allow-missing`).

Class names come in three kinds, so that a class's own name always wins (LOVE, `love.Vocabulary`):
- `class_names`: one distinct key per class in train-id order (what results and `iou_per_class` use);
- `class_aliases`: the dataset's own other names of a class (ADE20K-Full's comma-separated names, VOC's
  devkit spellings); part of the dataset's vocabulary;
- `class_synonyms`: words we add (VOC `tv`, Cityscapes `tree` -> vegetation); not the dataset's, so
  LOVE only uses them for the optional synonym shortcut and to read LLM answers.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from selfseg_fast.errors import SelfSegError


class DatasetError(SelfSegError):
    """A dataset root that cannot be used (missing folder or file list, no class names)."""


class SampleError(SelfSegError):
    """One broken image/label pair; the dataset skips it with a warning."""


@dataclass
class Sample:
    """One evaluation image with its ground truth."""

    id: str  # stable, unique within the dataset (used as the results file name)
    image_path: str
    label: np.ndarray  # [H, W] int64 train ids in 0..C-1, or the dataset's ignore_index


@dataclass(frozen=True)
class Entry:
    """An image/label file pair before it is read."""

    id: str
    image_path: Path
    label_path: Path


class Dataset:
    """Base class: `name`, `class_names`, `ignore_index`, `len()`, iteration and indexing."""

    name: str = "dataset"
    ignore_index: int = 255

    def __init__(self, root: str | Path, class_names: list[str], entries: list[Entry]) -> None:
        self.root = Path(root)
        self.class_names = list(class_names)
        self.entries = entries
        self.class_aliases: list[list[str]] = [[] for _ in self.class_names]  # the dataset's other names
        self.class_synonyms: list[list[str]] = [[] for _ in self.class_names]  # ours (LOVE shortcut)
        self.skipped: list[tuple[str, str]] = []  # (id, reason) of pairs skipped so far

    @property
    def background_id(self) -> int | None:
        """Train id of a `background` class (VOC: 0), None where the dataset has none."""
        return self.class_names.index("background") if "background" in self.class_names else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.entries)

    def _read_label(self, path: Path) -> np.ndarray:
        """Decode one label file -> [H, W] int64 train ids (ignore_index where void)."""
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        """Read pair `index`; a broken pair raises `SampleError` naming the file."""
        entry = self.entries[index]
        try:
            with Image.open(entry.image_path) as image:
                width, height = image.size
        except FileNotFoundError:
            raise SampleError("image file is missing", path=str(entry.image_path)) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise SampleError(f"unreadable image ({exc})", path=str(entry.image_path)) from None
        if not entry.label_path.is_file():
            raise SampleError("label file is missing", path=str(entry.label_path))
        try:
            label = self._read_label(entry.label_path)
        except (OSError, SyntaxError, ValueError) as exc:
            raise SampleError(f"unreadable label ({exc})", path=str(entry.label_path)) from None
        if label.shape != (height, width):
            raise SampleError(
                f"label is {label.shape[1]}x{label.shape[0]} but its image is {width}x{height}",
                path=str(entry.label_path),
            )
        return Sample(entry.id, str(entry.image_path), label.astype(np.int64, copy=False))

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            sample = self.try_load(index)
            if sample is not None:
                yield sample

    def try_load(self, index: int) -> Sample | None:
        """`load(index)`, or None after a one-line warning on stderr if the pair is broken."""
        try:
            return self.load(index)
        except SampleError as exc:
            self.skipped.append((self.entries[index].id, str(exc)))
            print(f"warning: skipped {self.entries[index].id}: {exc}", file=sys.stderr)
            return None


def read_index_png(path: Path) -> np.ndarray:
    """A single-channel (or palette) PNG as its raw index values, [H, W] int64."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"expected a single-channel label image, got mode {image.mode}")
        return np.asarray(image, dtype=np.int64)


SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def is_safe_id(sample_id: str) -> bool:
    """A sample id that is one plain file-name stem: letters, digits, `_ . -`, no separators, no `..`,
    not starting with a dot (ids become file names under --out; a crafted id must not escape it)."""
    return bool(SAFE_ID.fullmatch(sample_id)) and ".." not in sample_id


def require_dir(path: Path, what: str, fix: str) -> Path:
    """`path` if it is a folder, else one DatasetError line naming it and the fix."""
    if not path.is_dir():
        raise DatasetError(f"{what} folder not found; {fix}", path=str(path))
    return path
