"""`selfseg-fast segment IMAGE... [--classes "car,road,tree"] [--out DIR] [--checkpoint PATH]`.

With `--classes`, X-Decoder segments each image with exactly those names (the supervised-names
baseline). Without, the whole self-guided pipeline runs: BLIP-Cluster-Caption finds the nouns, and
they become the class names. Images run in batches (`batch_size`); each image's names and pixel shares
are printed as it finishes. `--out DIR` writes, per image (named by its path relative to the inputs'
common folder, full file name kept, so x.png and x.jpg never collide):
  NAME.labels.png   palette PNG: value = index into the names, 255 = unlabelled (16-bit, 65535, above
                    255 names)
  NAME.overlay.png  the picture at its own size with the names' colours and names, legend beside it
  NAME.clusters.png the 32x32 cluster grid over the picture with each cluster's top nouns (self-guided)
  NAME.json         names, pixel shares, captions, degraded; with --consolidate the merges ({kept,
                    merged, rule, score}), with --taxonomy the label set (stable ids) and the noun ->
                    label mapping
--consolidate specific|general merges competing nouns (synonyms, hypernym/hyponym: one name per object);
--taxonomy cityscapes|ade20k|voc|FILE.json names the regions with your own label set (stable ids, the
rest `other`). Both are off by default (the paper's output).
A bad image gets one error line; the others still run (exit code 1). Self-guided only: `--deadline-ms
MS` bounds each batch's captioning (from when its describe starts); an image cut short keeps the names
found so far and is marked `[degraded]` (`"degraded": true` in NAME.json).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from selfseg_fast.atomic_files import write_bytes_atomic, write_json_atomic
from selfseg_fast.commands.options import (
    add_config_options,
    add_deadline_option,
    add_naming_options,
    add_profile_option,
    add_segmenter_options,
    config_from_args,
)
from selfseg_fast.console import progress
from selfseg_fast.errors import SelfSegError
from selfseg_fast.images import display_path, iter_image_paths
from selfseg_fast.label_maps import label_png_bytes
from selfseg_fast.per_image import ImageOutcome, segment_paths
from selfseg_fast.profiling import maybe_profile, write_stage_table
from selfseg_fast.visualize import cluster_picture, overlay


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images with given class names, or self-guided (no names)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument(
        "--classes", metavar="NAMES", help='comma-separated class names, e.g. "car,road,tree"'
    )
    parser.add_argument("--out", metavar="DIR", help="write label PNG, overlay, clusters and JSON per image")
    add_deadline_option(parser)
    add_profile_option(parser)
    add_naming_options(parser)
    add_segmenter_options(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def parse_classes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SelfSegError('--classes: give at least one name, e.g. --classes "car,road,tree"')
    return list(dict.fromkeys(names))


def output_keys(paths: list[Path]) -> list[str]:
    """Each path relative to the common folder of all of them, full file name kept (unique per file)."""
    absolute = [os.path.abspath(p) for p in paths]
    if not absolute:
        return []
    common = os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
    if common in absolute:  # one file, given several times
        common = os.path.dirname(common)
    return [Path(os.path.relpath(a, common)).as_posix() for a in absolute]


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    names = parse_classes(args.classes) if args.classes else None
    if names is not None and args.deadline_ms is not None:
        raise SelfSegError("--deadline-ms bounds captioning: it applies to self-guided runs, not --classes")
    out_dir = Path(args.out) if args.out else None
    paths = iter_image_paths(args.images, exclude=[out_dir] if out_dir else [])
    keys = output_keys(paths)
    from selfseg_fast.pipeline import SelfSegPipeline  # heavy imports only once the args are valid

    pipeline = SelfSegPipeline(cfg)
    failures, stage_seconds = 0, []
    with maybe_profile(args.profile), progress(total=len(paths), desc="segment") as bar:
        outcomes = segment_paths(pipeline, paths, names, cfg.batch_size, args.deadline_ms)
        for key, outcome in zip(keys, outcomes):
            bar.update(1)
            if not outcome.ok:
                failures += 1
                bar.write(f"selfseg-fast: error: {outcome.error}", file=sys.stderr)
                continue
            if outcome.description is not None:
                stage_seconds.append(outcome.description.stage_seconds)
            from selfseg_fast.label_maps import pixel_shares

            shares = pixel_shares(outcome.label_map, outcome.names)
            listing = (
                ", ".join(f"{n} {100 * s:.1f}%" for n, s in shares.items() if s > 0) or "(nothing named)"
            )
            merges = outcome.audit.get("merges")
            if merges:
                listing += " (merged: " + ", ".join(f"{m['merged']}->{m['kept']}" for m in merges) + ")"
            if outcome.description is not None and outcome.description.degraded:
                listing += "  [degraded: deadline reached, names found so far]"
            bar.write(f"{display_path(outcome.path)}: {listing}", file=sys.stdout)
            if out_dir:
                write_outputs(out_dir, key, outcome, shares)
    if args.profile:
        print(write_stage_table(args.profile, stage_seconds), file=sys.stderr)
    return 1 if failures else 0


def write_outputs(out_dir: Path, key: str, outcome: ImageOutcome, shares: dict[str, float]) -> None:
    """NAME.labels.png, NAME.overlay.png, NAME.clusters.png (self-guided) and NAME.json, atomically."""
    import io

    base = out_dir / key
    base.parent.mkdir(parents=True, exist_ok=True)

    def png(image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    rgb, label_map, names = outcome.image.rgb, outcome.label_map, outcome.names
    write_bytes_atomic(base.with_name(base.name + ".labels.png"), label_png_bytes(label_map, len(names)))
    write_bytes_atomic(
        base.with_name(base.name + ".overlay.png"), png(overlay(rgb, label_map, names, shares))
    )
    record: dict = {"path": str(outcome.path), "names": names, "shares": shares, "captions": {}}
    record.update(outcome.audit)  # "merges" / "taxonomy" when consolidation / a taxonomy is on
    described = outcome.description
    if described is not None:
        record["captions"] = {str(k): v for k, v in described.captions.items()}
        record["cluster_nouns"] = {str(k): v for k, v in described.cluster_nouns.items()}
        record["degraded"] = described.degraded
        picture = cluster_picture(rgb, described.cluster_grid, described.captions, described.cluster_nouns)
        write_bytes_atomic(base.with_name(base.name + ".clusters.png"), _png(picture))
    write_json_atomic(base.with_name(base.name + ".json"), record)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
