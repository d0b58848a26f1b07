"""On-disk results of a benchmark run, one file pair per image, so an interrupted run resumes.

    <out>/images/<id>.png    predicted train ids (8-bit, or 16-bit for > 255 classes); "no class" is
                             written as the dataset's ignore value (scored as a miss, like -1)
    <out>/images/<id>.json   nouns, LOVE mapping, 32x32 cluster grid, stage seconds (written last:
                             its presence marks the image as done)
    <out>/results.json       the run's summary (config, metrics, LOVE mapping, timings)

Metrics are re-computed from these files and the ground truth, so a resumed run scores every image
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.errors import SelfSegError


class ResultsStore:
    """Per-image records under `<out>/images/`; ids are the dataset's sample ids."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.image_dir = self.out_dir / "images"
        try:
            self.image_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SelfSegError(
                f"cannot create the output folder ({exc}); pass a writable --out", path=str(out_dir)
            ) from None

    def _json(self, sample_id: str) -> Path:
        return self.image_dir / f"{sample_id}.json"

    def _png(self, sample_id: str) -> Path:
        return self.image_dir / f"{sample_id}.png"

    def is_done(self, sample_id: str, *, needs_prediction: bool) -> bool:
        if not self._json(sample_id).is_file():
            return False
        return self._png(sample_id).is_file() or not needs_prediction

    def write(self, sample_id: str, record: dict, prediction: np.ndarray | None, no_class_value: int) -> None:
        """Prediction PNG first, then the JSON record (atomic), so a half-written image is redone."""
        if prediction is not None:
            values = np.where(prediction >= 0, prediction, no_class_value)
            dtype = np.uint8 if values.max(initial=0) <= 255 else np.uint16
            tmp_png = self._png(sample_id).with_suffix(".tmp.png")
            Image.fromarray(values.astype(dtype)).save(tmp_png)
            os.replace(tmp_png, self._png(sample_id))
        write_json_atomic(self._json(sample_id), record)

    def read(self, sample_id: str) -> tuple[dict, np.ndarray | None]:
        """(record, prediction [H, W] int64 or None) of a finished image."""
        record = json.loads(self._json(sample_id).read_text())
        png = self._png(sample_id)
        if not png.is_file():
            return record, None
        with Image.open(png) as image:
            return record, np.asarray(image).astype(np.int64)

    def write_summary(self, summary: dict) -> Path:
        path = self.out_dir / "results.json"
        write_json_atomic(path, summary)
        return path
