"""ADE20K-Full (847 classes) val as prepared for open-vocabulary evaluation by MaskFormer's
`datasets/prepare_ade20k_full_sem_seg.py` (also used by X-Decoder, ODISE, SAN, FC-CLIP):

    <root>/ADE20K_2021_17_01/images_detectron2/validation/*.jpg
    <root>/ADE20K_2021_17_01/annotations_detectron2/validation/*.tif   uint16 train ids, 65535 = void

The 847 category names ship with the package (`ade20k_full_categories.json`: train id, ADE object id,
name; generated from the `ADE20K_SEM_SEG_FULL_CATEGORIES` list of that preparation script, the
dataset's facts), so a user who ran the script needs nothing else. A names file in the root
(`ade20k_full_classes.json` in the script's format or a plain list, or `ade20k_full_classes.txt`, one
name per line, train-id order) replaces them, e.g. for another release.

Names: "building, edifice" is the class keyed "building" with the dataset's other name "edifice". Nine
first names belong to several classes ("bag" x3, "pot", "screen", "pier", "pipe", "grill", "patio",
"basket", "control panel"): those classes are keyed by their full official name ("pot" and "pot,
flowerpot"; "bag", "bag, traveling bag, ..." and "bag, handbag, ..."), so all 847 keys are distinct.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from selfseg_fast.evaluation.datasets.base import Dataset, DatasetError, Entry, require_dir

ADE_FOLDER = "ADE20K_2021_17_01"
NAMES_FILES = ("ade20k_full_classes.json", "ade20k_full_classes.txt")
PACKAGED_NAMES = "ade20k_full_categories.json"
NUM_CLASSES = 847
IGNORE = 65535
FIX_NAMES = (
    "the file must list the category names in train-id order (as ADE20K_SEM_SEG_FULL_CATEGORIES of "
    "MaskFormer's prepare_ade20k_full_sem_seg.py), or remove it to use the packaged 847 names"
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
        official = read_class_names([root, ade])
        keys, aliases = class_keys(official)
        super().__init__(root, keys, entries)
        self.official_names = official
        self.class_aliases = aliases

    def _read_label(self, path: Path) -> np.ndarray:
        with Image.open(path) as image:
            label = np.asarray(image).astype(np.int64)
        if label.ndim != 2:
            raise ValueError(f"expected a single-channel 16-bit label map, got shape {label.shape}")
        bad = (label >= self.num_classes) & (label != IGNORE)
        if bad.any():
            raise ValueError(f"train ids above {self.num_classes - 1} (names file and labels disagree)")
        return label


def packaged_class_names() -> list[str]:
    """The 847 official ADE20K-Full names shipped with the package, in train-id order."""
    text = resources.files(__package__).joinpath(PACKAGED_NAMES).read_text(encoding="utf-8")
    return [item["name"] for item in sorted(json.loads(text), key=lambda item: item["trainId"])]


def class_keys(official: list[str]) -> tuple[list[str], list[list[str]]]:
    """(distinct key per class, the dataset's names per class: first name, other names, full name)."""
    parts = [[p.strip() for p in name.split(",") if p.strip()] for name in official]
    first = Counter(p[0] for p in parts)
    keys = [p[0] if first[p[0]] == 1 else ", ".join(p) for p in parts]
    aliases = [list(dict.fromkeys([*p, ", ".join(p)])) for p in parts]
    if len(set(keys)) != len(keys):
        dup = [k for k, n in Counter(keys).items() if n > 1][:3]
        raise DatasetError(f"class names are not distinct after keying (e.g. {dup}); {FIX_NAMES}")
    return keys, aliases


def read_class_names(folders: list[Path]) -> list[str]:
    """Official names per train id: a names file in `folders` if there is one, else the packaged list."""
    for folder in folders:
        for file_name in NAMES_FILES:
            path = folder / file_name
            if path.is_file():
                return _parse_names(path)
    return packaged_class_names()


def _parse_names(path: Path) -> list[str]:
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
    if any(not name.strip(" ,") for name in raw):
        raise DatasetError("empty class name", path=str(path))
    return raw
