"""`selfseg-fast caption IMAGE...`: find and name what is in each image (BLIP-Cluster-Caption + nouns).

Prints one line of nouns per image; `--json FILE` keeps the 32x32 cluster grid, each cluster's
captions and nouns, the noun union and each stage's wall time, with the config and `provenance`
(package version and commit, library versions, device). The JSON file is rewritten after every
image, so an interrupted run keeps everything already computed. A bad image gets one error line and
the others still run; the exit code is then 1. A progress bar (stderr, on a terminal) shows model
loading and each image's stage. `--deadline-ms MS` bounds each image's captioning (counted from when
it is read): an image cut short keeps the names found so far, is marked `[degraded]` and has
`"degraded": true` in the JSON; `--adaptive-patience N` stops each cluster's cycles early.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.commands.options import (
    add_config_options,
    add_deadline_option,
    add_profile_option,
    config_from_args,
)
from selfseg_fast.errors import EXIT_OK, EXIT_SOME_FAILED, ImageError
from selfseg_fast.images import LoadedImage, iter_image_paths, load_image
from selfseg_fast.profiling import maybe_profile, write_stage_table
from selfseg_fast.progress_hook import progress_bar
from selfseg_fast.provenance import provenance


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="find and name what is in images (no segmentation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    add_deadline_option(parser)
    add_profile_option(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # validated: a bad config fails here, before any model loads
    paths = iter_image_paths(args.images)
    from selfseg_fast.pipeline import SelfSegPipeline  # heavy imports only once the args are valid

    pipeline = SelfSegPipeline(cfg)
    header = {"provenance": provenance(pipeline.device), "config": cfg.to_dict()}
    records: list[dict] = []
    failures = 0
    with progress_bar(total=len(paths), desc="caption") as bar:

        def good_images() -> Iterator[LoadedImage]:
            nonlocal failures
            for path in paths:
                try:
                    image = load_image(path)
                except ImageError as exc:  # one line, keep going with the other images
                    failures += 1
                    tqdm.write(f"selfseg-fast: error: {exc}", file=sys.stderr)
                    records.append({"path": str(path), "error": str(exc)})
                    bar.update(1)
                    continue
                if args.deadline_ms is not None:
                    image = dataclasses.replace(image, deadline=time.monotonic() + args.deadline_ms / 1000)
                yield image

        with maybe_profile(args.profile):
            for result in pipeline.describe_stream(good_images()):
                nouns = ", ".join(result.nouns) if result.nouns else "(no nouns found)"
                if result.degraded:
                    nouns += "  [degraded: deadline reached, names found so far]"
                tqdm.write(f"{result.path}: {nouns}", file=sys.stdout)
                records.append(result.to_json())
                _write_json(args.json, header, records)
                bar.update(1)
    _write_json(args.json, header, records)
    stage_seconds = [r["stage_seconds"] for r in records if "stage_seconds" in r]
    if args.profile:
        print(write_stage_table(args.profile, stage_seconds), file=sys.stderr)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _write_json(path: str | None, header: dict, records: list[dict]) -> None:
    """Atomically rewrite the results file (what was computed survives an interruption)."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, {**header, "images": records})
