"""Label an image folder with the self-guided pipeline: names, a label map and captions per image.

Each image gets OUT/<name>.json (nouns, pixel shares, captions, 32x32 cluster grid) and
OUT/<name>.png (8-bit label map: value = index into the names, 255 = unlabelled). Images whose JSON
already exists are skipped, so an interrupted run resumes. With `ray_address`, the work runs
data-parallel on Ray actors that each hold the models (see selfseg_fast/distributed.py); results are
identical to the single-process run because every seed derives from the run seed and the pixels.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import ImageError
from selfseg_fast.images import LoadedImage, load_image
from selfseg_fast.label_maps import label_png_bytes, pixel_shares


def output_name(path: Path, root: Path) -> str:
    """A flat, unique file stem: the path relative to the input root with '/' replaced by '__'."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def label_batch(pipeline, paths: list[str]) -> list[dict]:
    """Run the pipeline on `paths`; one record per path (with 'label_png' bytes, or 'error')."""
    images: list[LoadedImage] = []
    records: dict[int, dict] = {}
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path))
        except ImageError as exc:
            records[i] = {"path": str(path), "error": str(exc)}
    good = [i for i in range(len(paths)) if i not in records]
    for i, seg in zip(good, pipeline.run(images)):
        records[i] = segmentation_record(seg)
    return [records[i] for i in range(len(paths))]


def segmentation_record(seg) -> dict:
    """JSON-ready record of a `Segmentation`, with the label map as PNG bytes."""
    record = seg.description.to_json()
    record["names"] = seg.class_names
    record["shares"] = pixel_shares(seg.label_map, seg.class_names)
    record["label_png"] = label_png_bytes(seg.label_map)
    return record


def write_outputs(out_dir: Path, name: str, record: dict) -> None:
    """OUT/name.png then OUT/name.json (the JSON last: its presence marks the image as done)."""
    record = dict(record)
    png = record.pop("label_png", None)
    if png is not None:
        (out_dir / f"{name}.png").write_bytes(png)
    write_json_atomic(out_dir / f"{name}.json", record)


def pending_paths(paths: list[Path], root: Path, out_dir: Path) -> list[Path]:
    return [p for p in paths if not (out_dir / f"{output_name(p, root)}.json").exists()]


def run_labelling(
    paths: list[Path], root: Path, cfg: SelfSegConfig, out_dir: Path, ray_address: str | None = None
) -> tuple[int, int]:
    """Label every not-yet-done image; returns (images labelled now, images that failed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = pending_paths(paths, root, out_dir)
    if not todo:
        return 0, 0
    if ray_address is not None:
        from selfseg_fast.distributed import label_with_ray

        stream = label_with_ray([str(p) for p in todo], cfg, ray_address)
    else:
        stream = _label_locally(todo, cfg)
    done = failed = 0
    for path, record in zip(todo, stream):
        if record.get("error"):
            failed += 1
            print(f"selfseg-fast: error: {record['error']}", file=sys.stderr)
        write_outputs(out_dir, output_name(path, root), record)
        done += 1
    return done, failed


def _label_locally(paths: list[Path], cfg: SelfSegConfig) -> Iterator[dict]:
    from selfseg_fast.pipeline import SelfSegPipeline

    pipeline = SelfSegPipeline(cfg)
    step = max(1, cfg.batch_size)
    for start in range(0, len(paths), step):
        yield from label_batch(pipeline, [str(p) for p in paths[start : start + step]])
