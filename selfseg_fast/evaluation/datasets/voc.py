"""Pascal VOC 2012 val: `JPEGImages/`, palette PNGs in `SegmentationClass/`, ids in
`ImageSets/Segmentation/val.txt`; 21 classes (background + 20), 255 = void (object borders).

Ids come from a text file and become file names (ours under --out, the dataset's under --root), so
each one is checked first: a plain file-name stem (letters, digits, `_ . -`). An id like
`/abs/path/evil` or `../x` is refused with one line naming the list file and its line; nothing is
read or written outside --root and --out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfseg_fast.evaluation.datasets.base import (
    Dataset,
    DatasetError,
    Entry,
    is_safe_id,
    read_index_png,
    require_dir,
)

# Train ids 0..20 in the order of the VOC devkit; multi-word names spelled as words (as the authors'
# VOC_mapping.json in maxkulicki/maskblip spells them), since the names are read by an LLM.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
    "tv monitor",
)  # fmt: skip
# The devkit's own spellings (VOCdevkit classes list): the dataset's names for three classes.
VOC_DEVKIT_NAMES = {
    "dining table": ["diningtable"],
    "potted plant": ["pottedplant"],
    "tv monitor": ["tvmonitor"],
}
# Words we add (the synonym shortcut and reading LLM answers; WordNet mapper knowledge). Not the dataset's.
VOC_SYNONYMS = {
    "aeroplane": ["airplane"],
    "dining table": ["table"],
    "motorbike": ["motorcycle"],
    "potted plant": ["houseplant"],
    "tv monitor": ["television", "tv", "monitor"],
}


def voc_palette() -> list[int]:
    """The VOC devkit colour map (256 RGB entries, flat): class i's colour from the bits of i
    (bit k of the index sets bit 7-j of channel k%3 for the j-th group of three bits)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


def voc_palette_image(train_ids: np.ndarray):
    """[H, W] train ids (-1: no class) -> a palette PIL image in the devkit's format: the official
    colours, values 0..20; "no class" is written as 0 (background): the devkit format has no
    unlabelled prediction (255 is void in ground truth only)."""
    from PIL import Image

    values = np.where((train_ids >= 0) & (train_ids < len(VOC_CLASSES)), train_ids, 0).astype(np.uint8)
    image = Image.fromarray(values)  # mode L; putpalette makes it P
    image.putpalette(voc_palette())
    return image


class VOCDataset(Dataset):
    """`root` is the VOC2012 folder (the one holding JPEGImages/), or a folder holding VOC2012/ or
    VOCdevkit/VOC2012/."""

    name = "voc"
    ignore_index = 255

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = _find_voc_root(Path(root))
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetError(
                "image list not found; give --root the VOC2012 folder of the VOC 2012 trainval release",
                path=str(list_file),
            )
        ids = read_ids(list_file)
        entries = [
            Entry(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids
        ]
        super().__init__(root, list(VOC_CLASSES), entries)
        self.class_aliases = [list(VOC_DEVKIT_NAMES.get(name, [])) for name in VOC_CLASSES]
        self.class_synonyms = [list(VOC_SYNONYMS.get(name, [])) for name in VOC_CLASSES]

    def _read_label(self, path: Path):
        # Palette PNG: pixel values are the class indices (0..20) and 255 for void.
        return read_index_png(path)


def read_ids(list_file: Path) -> list[str]:
    """The ids of a VOC image list, each validated (see the module docstring)."""
    ids = []
    for number, line in enumerate(list_file.read_text(errors="replace").splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if not is_safe_id(image_id):
            raise DatasetError(
                f"line {number}: {image_id[:80]!r} is not a VOC image id (letters, digits, _ . - only, "
                f"no path); fix or regenerate the list",
                path=str(list_file),
            )
        ids.append(image_id)
    return ids


def _find_voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return require_dir(root / "JPEGImages", "JPEGImages", "give --root the VOC2012 folder").parent
