"""Pascal VOC 2012 val: `JPEGImages/`, palette PNGs in `SegmentationClass/`, ids in
`ImageSets/Segmentation/val.txt`; 21 classes (background + 20), 255 = void (object borders)."""

from __future__ import annotations

from pathlib import Path

from selfseg_fast.evaluation.datasets.base import Dataset, DatasetError, Entry, read_index_png, require_dir

# Train ids 0..20 in the order of the VOC devkit; multi-word names spelled as words (the official
# short forms are "diningtable", "pottedplant", "tvmonitor"), since the names are read by an LLM.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
    "tv monitor",
)  # fmt: skip
# Other words for a class (used to recognise a predicted noun as the class itself, and by the WordNet
# mapper); the LLM prompts list only VOC_CLASSES.
VOC_SYNONYMS = {
    "aeroplane": ["airplane"],
    "dining table": ["table"],
    "motorbike": ["motorcycle"],
    "potted plant": ["houseplant"],
    "tv monitor": ["television", "tv", "monitor"],
}


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
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        entries = [
            Entry(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids
        ]
        super().__init__(root, list(VOC_CLASSES), entries)
        self.class_synonyms = [[name, *VOC_SYNONYMS.get(name, [])] for name in VOC_CLASSES]

    def _read_label(self, path: Path):
        # Palette PNG: pixel values are the class indices (0..20) and 255 for void.
        return read_index_png(path)


def _find_voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return require_dir(root / "JPEGImages", "JPEGImages", "give --root the VOC2012 folder").parent
