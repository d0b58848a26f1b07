"""Predictions in each dataset's official format, written beside ours after scoring (`<out>/official/`):

- Cityscapes (and the synthetic set): `official/cityscapes/<city>_<seq>_<frame>_pred_labelIds.png`,
  8-bit label ids, what `csEvalPixelLevelSemanticLabeling` finds and reads with
  `CITYSCAPES_DATASET=<root> CITYSCAPES_RESULTS=<out>/official/cityscapes`;
- Pascal VOC: `official/voc/results/VOC2012/Segmentation/comp6_val_cls/<id>.png`, palette PNGs with the
  devkit colours (comp6: methods trained on outside data), the devkit's results layout;
- ADE20K-Full: `official/ade20k/<id>.tif`, 16-bit train ids with 65535 for no class, the format of the
  ground truth MaskFormer's preparation script writes.

"No class" pixels (a noun LOVE maps to background where the dataset has no background class, or no
name at all): label id 0 (unlabeled) for Cityscapes, which its evaluation scores as a miss like ours;
background (0) for VOC, whose format has no unlabelled prediction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from selfseg_fast.errors import SelfSegError
from selfseg_fast.evaluation.datasets.base import is_safe_id
from selfseg_fast.evaluation.datasets.cityscapes import label_ids_image
from selfseg_fast.evaluation.datasets.voc import voc_palette_image

VOC_RESULTS = Path("voc") / "results" / "VOC2012" / "Segmentation" / "comp6_val_cls"


def official_path(out_dir: Path, dataset: str, sample_id: str) -> Path | None:
    """Where the official-format prediction of `sample_id` goes, None for datasets without one."""
    if not is_safe_id(sample_id):
        raise SelfSegError(f"sample id {sample_id[:80]!r} is not a plain file name; refusing to write it")
    official = Path(out_dir) / "official"
    if dataset in ("cityscapes", "synthetic"):
        return official / "cityscapes" / f"{sample_id}_pred_labelIds.png"
    if dataset == "voc":
        return official / VOC_RESULTS / f"{sample_id}.png"
    if dataset == "ade20k":
        return official / "ade20k" / f"{sample_id}.tif"
    return None


def official_image(dataset: str, train_ids: np.ndarray) -> Image.Image:
    """[H, W] train ids (-1: no class) -> the dataset's official prediction image."""
    if dataset in ("cityscapes", "synthetic"):
        return label_ids_image(train_ids)
    if dataset == "voc":
        return voc_palette_image(train_ids)
    if dataset == "ade20k":
        return Image.fromarray(np.where(train_ids >= 0, train_ids, 65535).astype(np.uint16))
    raise ValueError(f"no official prediction format for dataset {dataset!r}")


def write_official(out_dir: Path, dataset: str, sample_id: str, train_ids: np.ndarray) -> Path | None:
    """Write one prediction in its official format (temp file + rename); returns its path."""
    path = official_path(out_dir, dataset, sample_id)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    official_image(dataset, train_ids).save(tmp)
    os.replace(tmp, path)
    return path
