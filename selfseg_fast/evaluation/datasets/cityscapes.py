"""Cityscapes val: `leftImg8bit/val/<city>/*_leftImg8bit.png` with `gtFine/val/<city>/*_gtFine_labelIds.png`.

Label ids (0..33, -1) map to the 19 evaluation train ids with the official table of the Cityscapes
definition (cityscapesscripts/helpers/labels.py); every other id (void, ignored-in-eval) -> 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfseg_fast.evaluation.datasets.base import Dataset, DatasetError, Entry, read_index_png, require_dir

# The 19 evaluation classes, in train-id order 0..18.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
# Words we add, taken from the class definitions on the Cityscapes website (e.g. vegetation: "trees,
# hedges, all kinds of vertical vegetation"; terrain: "grass, all kinds of horizontal vegetation, soil or
# sand"). Not class names of the dataset: LOVE uses them only for its optional synonym shortcut and to
# read LLM answers (the paper sends every such noun to the LLM).
CITYSCAPES_SYNONYMS = {
    "vegetation": ["tree", "hedge", "bush"],
    "terrain": ["grass", "soil", "sand"],
    "person": ["pedestrian"],
    "rider": ["cyclist", "motorcyclist"],
    "train": ["tram"],
    "traffic sign": ["sign"],
}

# labelId -> trainId for the evaluated labels; all other label ids are ignored (255).
LABEL_ID_TO_TRAIN_ID = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
IGNORE = 255
NUM_LABEL_IDS = 34  # ids 0..33 (license plate is -1 and only appears in instance files)


def label_id_lut() -> np.ndarray:
    """[256] int64 lookup table labelId -> trainId (255 for everything not evaluated)."""
    lut = np.full(256, IGNORE, dtype=np.int64)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def train_id_to_label_id() -> np.ndarray:
    """[19] int64: the label id of each train id (to write predictions in the official format)."""
    out = np.zeros(len(CITYSCAPES_CLASSES), dtype=np.int64)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        out[train_id] = label_id
    return out


def label_ids_image(train_ids: np.ndarray):
    """[H, W] train ids (-1: no class) -> the 8-bit labelIds PIL image that cityscapesscripts'
    `csEvalPixelLevelSemanticLabeling` reads; "no class" -> 0 (unlabeled), which it scores as a miss."""
    from PIL import Image

    lut = train_id_to_label_id()
    valid = (train_ids >= 0) & (train_ids < len(lut))
    values = np.where(valid, lut[np.clip(train_ids, 0, len(lut) - 1)], 0).astype(np.uint8)
    return Image.fromarray(values)  # 2-D uint8: mode L


class CityscapesDataset(Dataset):
    """`root` holds leftImg8bit/ and gtFine/ (unpacked leftImg8bit_trainvaltest and gtFine_trainvaltest)."""

    name = "cityscapes"
    ignore_index = IGNORE

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        image_dir = require_dir(
            root / "leftImg8bit" / split,
            "leftImg8bit",
            "give --root the folder holding leftImg8bit/ and gtFine/",
        )
        label_dir = root / "gtFine" / split
        entries = []
        for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            entries.append(Entry(stem, image, label_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"))
        if not entries:
            raise DatasetError("no *_leftImg8bit.png images found in its city folders", path=str(image_dir))
        super().__init__(root, list(CITYSCAPES_CLASSES), entries)
        self._lut = label_id_lut()
        self.class_synonyms = [list(CITYSCAPES_SYNONYMS.get(name, [])) for name in CITYSCAPES_CLASSES]

    def _read_label(self, path: Path) -> np.ndarray:
        label_ids = read_index_png(path)
        if label_ids.max(initial=0) > 255 or label_ids.min(initial=0) < 0:
            raise ValueError("label ids outside 0..255 (expected a *_gtFine_labelIds.png)")
        return self._lut[label_ids]
