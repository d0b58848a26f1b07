"""Label an image folder with the self-guided pipeline: names, a label map and captions per image.

Outputs mirror the input tree and keep each file's full name, so no two inputs share an output
(`x.png` and `x.jpg`, `a__b.png` and `a/b.png` stay apart): for `FOLDER/sub/x.jpg`,
  OUT/sub/x.jpg.json        nouns, names, pixel shares, captions, 32x32 cluster grid (written last:
                            its presence marks the image as done)
  OUT/sub/x.jpg.labels.png  label PNG (palette; 16-bit above 255 names; see label_maps.py)
  OUT/sub/x.jpg.overlay.png, .clusters.png   with `pictures=True` (see visualize.py)
Every file is written atomically (temporary file + rename) as soon as its image is finished, so a
killed run (even kill -9) loses at most the images in flight and resumes where it stopped. A failed
image is *not* marked done: its error is printed, listed in OUT/failed.json, and the image is tried
again on the next run (after the file is fixed). An output folder inside the input folder is never
read as input. With `ray_address`, the work runs data-parallel on Ray actors (distributed.py); the
results are identical, since every seed derives from the run seed and the pixels.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from selfseg_fast.atomic_files import write_bytes_atomic, write_json_atomic
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.console import progress
from selfseg_fast.label_records import label_records

FAILED_LIST = "failed.json"


def output_key(path: Path, root: Path) -> str:
    """The image's path relative to the input root, with its full file name (POSIX separators)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        rel = Path(path.name)
    return rel.as_posix()


def output_files(out_dir: Path, key: str) -> dict[str, Path]:
    base = out_dir / key
    return {
        "json": base.with_name(base.name + ".json"),
        "labels": base.with_name(base.name + ".labels.png"),
        "overlay": base.with_name(base.name + ".overlay.png"),
        "clusters": base.with_name(base.name + ".clusters.png"),
    }


def write_outputs(out_dir: Path, key: str, record: dict) -> None:
    """The pictures, then the JSON (last: its presence marks the image as done); each atomically."""
    files = output_files(out_dir, key)
    files["json"].parent.mkdir(parents=True, exist_ok=True)
    record = dict(record)
    for name in ("labels", "overlay", "clusters"):
        data = record.pop(f"{name}_png" if name != "labels" else "label_png", None)
        if data is not None:
            write_bytes_atomic(files[name], data)
    write_json_atomic(files["json"], record)


@dataclass
class LabelSummary:
    done: int = 0  # labelled in this run
    failed: int = 0  # failed in this run (listed in OUT/failed.json, retried next run)
    skipped: int = 0  # finished by an earlier run


def run_labelling(
    paths: list[Path],
    root: Path,
    cfg: SelfSegConfig,
    out_dir: Path,
    ray_address: str | None = None,
    *,
    pictures: bool = False,
) -> LabelSummary:
    """Label every image not yet done (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_real = os.path.realpath(out_dir)
    paths = [p for p in paths if not _inside(p, out_real)]
    keys = [output_key(p, root) for p in paths]
    todo = [(p, k) for p, k in zip(paths, keys) if not output_files(out_dir, k)["json"].exists()]
    summary = LabelSummary(skipped=len(paths) - len(todo))
    failures: dict[str, str] = {}
    if todo:
        if ray_address is not None:
            from selfseg_fast.distributed import label_with_ray

            stream = label_with_ray([str(p) for p, _ in todo], cfg, ray_address, pictures=pictures)
        else:
            stream = _label_locally([str(p) for p, _ in todo], cfg, pictures)
        with progress(total=len(todo), desc="label") as bar:
            for index, record in stream:
                key = todo[index][1]
                if record.get("error"):
                    summary.failed += 1
                    failures[key] = record["error"]
                    bar.write(f"selfseg-fast: error: {record['error']}", file=sys.stderr)
                else:
                    write_outputs(out_dir, key, record)
                    summary.done += 1
                bar.update(1)
    _write_failed_list(out_dir, failures)
    return summary


def _inside(path: Path, folder_real: str) -> bool:
    real = os.path.realpath(path)
    return real == folder_real or real.startswith(folder_real + os.sep)


def _write_failed_list(out_dir: Path, failures: dict[str, str]) -> None:
    target = out_dir / FAILED_LIST
    if failures:
        write_json_atomic(target, {"failed": failures, "note": "these images are retried on the next run"})
    elif target.exists():
        target.unlink()


def _label_locally(paths: list[str], cfg: SelfSegConfig, pictures: bool) -> Iterator[tuple[int, dict]]:
    from selfseg_fast.pipeline import SelfSegPipeline

    yield from label_records(SelfSegPipeline(cfg), paths, pictures)
