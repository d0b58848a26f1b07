"""On-disk results of a benchmark run, one file pair per image, so an interrupted run resumes.

    <out>/run.json           the run key: a hash of everything that changes the per-image results
                             (config except batch size, mode, dataset and its classes); a rerun with
                             another key into the same folder is refused with one line
    <out>/images/<id>.png    the segmenter's label map as indices into the record's `names` (16-bit;
                             65535 = no name); LOVE is applied when scoring, so a new LLM re-scores
                             without recomputing anything
    <out>/images/<id>.json   nouns, names, 32x32 cluster grid, captions, stage seconds (written last:
                             its presence marks the image as done)
    <out>/official/...       predictions in each dataset's official format (selfseg_fast.evaluation.official)
    <out>/results.json       the run's summary (provenance, config, metrics, the paper's figures, the
                             complete LOVE mapping with the raw LLM answers)

Metrics are re-computed from these files and the ground truth, so a resumed run scores every image
exactly as an uninterrupted one would. Ids become file names only after `is_safe_id` (no separators,
no `..`): nothing is written outside --out.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.errors import SelfSegError
from selfseg_fast.evaluation.datasets.base import is_safe_id

NO_NAME = 65535  # value of "no name" pixels in the per-image label maps (uint16)


def run_key(about: dict) -> str:
    return hashlib.sha256(json.dumps(about, sort_keys=True, default=str).encode()).hexdigest()[:20]


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

    # ---- run key ------------------------------------------------------------------------------------
    def claim(self, about: dict) -> str:
        """Tie this folder to one configuration: write its key, or check it against the stored one.
        Results of another configuration (or of a version without keys) are never mixed in."""
        about = json.loads(json.dumps(about, default=str))  # tuples -> lists, as stored
        key = run_key(about)
        path = self.out_dir / "run.json"
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                stored = {}
            if stored.get("key") != key:
                changed = _differences(stored.get("about", {}), about)
                raise SelfSegError(
                    f"holds results of another configuration (differs in: {changed}); pass another --out "
                    f"or delete the folder to start afresh",
                    path=str(self.out_dir),
                )
            return key
        if any(self.image_dir.glob("*.json")):
            raise SelfSegError(
                "holds per-image results without a run key (an older version wrote them); pass another "
                "--out or delete the folder",
                path=str(self.out_dir),
            )
        write_json_atomic(path, {"key": key, "about": about}, sort_keys=True)
        return key

    # ---- per image ----------------------------------------------------------------------------------
    def _path(self, sample_id: str, suffix: str) -> Path:
        if not is_safe_id(sample_id):
            raise SelfSegError(f"sample id {sample_id[:80]!r} is not a plain file name; refusing to write it")
        return self.image_dir / f"{sample_id}{suffix}"

    def is_done(self, sample_id: str, *, needs_prediction: bool) -> bool:
        if not self._path(sample_id, ".json").is_file():
            return False
        return self._path(sample_id, ".png").is_file() or not needs_prediction

    def write(self, sample_id: str, record: dict, names_map: np.ndarray | None) -> None:
        """Label map PNG first, then the JSON record (atomic), so a half-written image is redone.
        names_map: [H, W] indices into record["names"] (-1: no name) or None."""
        if names_map is not None:
            values = np.where(names_map >= 0, names_map, NO_NAME).astype(np.uint16)
            target = self._path(sample_id, ".png")
            tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}.png")
            Image.fromarray(values).save(tmp)
            os.replace(tmp, target)
        write_json_atomic(self._path(sample_id, ".json"), record)

    def read_record(self, sample_id: str) -> dict:
        """The JSON record of a finished image (without decoding its label map)."""
        return json.loads(self._path(sample_id, ".json").read_text())

    def read(self, sample_id: str) -> tuple[dict, np.ndarray | None]:
        """(record, names map [H, W] int64 with -1 for no name, or None) of a finished image."""
        record = json.loads(self._path(sample_id, ".json").read_text())
        png = self._path(sample_id, ".png")
        if not png.is_file():
            return record, None
        with Image.open(png) as image:
            values = np.asarray(image).astype(np.int64)
        return record, np.where(values == NO_NAME, -1, values)

    def write_summary(self, summary: dict) -> Path:
        path = self.out_dir / "results.json"
        write_json_atomic(path, summary)
        return path


def _differences(old: dict, new: dict, limit: int = 4) -> str:
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
    shown = [f"{k} {flat_old.get(k, '-')!s:.30} -> {flat_new.get(k, '-')!s:.30}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more if shown else "unknown (run.json unreadable)"


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
