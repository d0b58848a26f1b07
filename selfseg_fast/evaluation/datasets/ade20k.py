"""ADE20K-Full (847 classes) val as prepared for open-vocabulary evaluation by MaskFormer's
`datasets/prepare_ade20k_full_sem_seg.py` (also used by X-Decoder, ODISE, SAN, FC-CLIP):

    <root>/ADE20K_2021_17_01/images_detectron2/validation/*.jpg
    <root>/ADE20K_2021_17_01/annotations_detectron2/validation/*.tif   uint16 train ids, 65535 = void

Class names are read from a names file next to the data, never typed here: `ade20k_full_classes.json`
(the preparation script's category list, `[{"name": "wall", "id": 2978, "trainId": 0}, ...]`, or a plain
JSON list of names in train-id order) or `ade20k_full_classes.txt` (one name per line, train-id order),
in `<root>` or in `<root>/ADE20K_2021_17_01`. A name like "building, edifice" gives the class name
"building" with the synonyms "building" and "edifice".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from selfseg_fast.evaluation.datasets.base import Dataset, DatasetError, Entry, require_dir

ADE_FOLDER = "ADE20K_2021_17_01"
NAMES_FILES = ("ade20k_full_classes.json", "ade20k_full_classes.txt")
NUM_CLASSES = 847
IGNORE = 65535
FIX_NAMES = (
    "write the 847 category names (train-id order) as ade20k_full_classes.json or .txt into the dataset "
    "root, e.g. from ADE20K_SEM_SEG_FULL_CATEGORIES of MaskFormer's prepare_ade20k_full_sem_seg.py"
)


class ADE20KFullDataset(Dataset):
    """`root` holds ADE20K_2021_17_01/ (the DETECTRON2_DATASETS folder), or is that folder."""

    name = "ade20k"
    ignore_index = IGNORE

    def __init__(self, root: str | Path, split: str = "validation") -> None:
        root = Path(root)
        ade = root / ADE_FOLDER if (root / ADE_FOLDER).is_dir() else root
        fix = f"give --root the folder holding {ADE_FOLDER}/ after prepare_ade20k_full_sem_seg.py"
        image_dir = require_dir(ade / "images_detectron2" / split, "images_detectron2", fix)
        label_dir = ade / "annotations_detectron2" / split
        entries = [Entry(p.stem, p, label_dir / f"{p.stem}.tif") for p in sorted(image_dir.glob("*.jpg"))]
        if not entries:
            raise DatasetError("no .jpg images found", path=str(image_dir))
        synonyms = read_class_names([root, ade])
        super().__init__(root, [names[0] for names in synonyms], entries)
        self.class_synonyms = synonyms

    def _read_label(self, path: Path) -> np.ndarray:
        with Image.open(path) as image:
            label = np.asarray(image).astype(np.int64)
        if label.ndim != 2:
            raise ValueError(f"expected a single-channel 16-bit label map, got shape {label.shape}")
        bad = (label >= self.num_classes) & (label != IGNORE)
        if bad.any():
            raise ValueError(f"train ids above {self.num_classes - 1} (names file and labels disagree)")
        return label


def read_class_names(folders: list[Path]) -> list[list[str]]:
    """Synonym lists per train id from the first names file found in `folders`."""
    for folder in folders:
        for file_name in NAMES_FILES:
            path = folder / file_name
            if path.is_file():
                return _parse_names(path)
    raise DatasetError(
        f"class names file not found ({' or '.join(NAMES_FILES)}); {FIX_NAMES}", path=str(folders[-1])
    )


def _parse_names(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"not valid JSON ({exc}); {FIX_NAMES}", path=str(path)) from None
        if not isinstance(data, list) or not data:
            raise DatasetError(f"expected a JSON list; {FIX_NAMES}", path=str(path))
        if all(isinstance(item, dict) for item in data):
            if not all("name" in item and "trainId" in item for item in data):
                raise DatasetError("every category needs 'name' and 'trainId'", path=str(path))
            order = sorted(data, key=lambda item: int(item["trainId"]))
            if [int(item["trainId"]) for item in order] != list(range(len(order))):
                raise DatasetError("trainId values must be 0..N-1 without gaps", path=str(path))
            raw = [str(item["name"]) for item in order]
        else:
            raw = [str(item) for item in data]
    else:
        raw = [line.strip() for line in text.splitlines() if line.strip()]
    synonyms = [[part.strip() for part in name.split(",") if part.strip()] for name in raw]
    if any(not names for names in synonyms):
        raise DatasetError("empty class name", path=str(path))
    return synonyms
