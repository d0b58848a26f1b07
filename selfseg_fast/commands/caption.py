"""`selfseg-fast caption IMAGE...`: find and name what is in each image (BLIP-Cluster-Caption + nouns).

Prints one line of nouns per image; `--json FILE` keeps the 32x32 cluster grid, each cluster's
captions and nouns, the noun union and each stage's wall time. The JSON file is rewritten after every
image, so an interrupted run keeps everything already computed. A bad image gets one error line and
the others still run; the exit code is then non-zero.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.commands.options import add_config_options, add_profile_option, config_from_args
from selfseg_fast.errors import ImageError
from selfseg_fast.images import LoadedImage, iter_image_paths, load_image
from selfseg_fast.profiling import maybe_profile, write_stage_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="find and name what is in images (no segmentation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    add_profile_option(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from selfseg_fast.pipeline import SelfSegPipeline  # heavy imports only once the args are valid

    paths = iter_image_paths(args.images)
    pipeline = SelfSegPipeline(cfg)
    records: list[dict] = []
    failures = 0

    def good_images() -> Iterator[LoadedImage]:
        nonlocal failures
        for path in paths:
            try:
                yield load_image(path)
            except ImageError as exc:  # one line, keep going with the other images
                failures += 1
                print(f"selfseg-fast: error: {exc}", file=sys.stderr)
                records.append({"path": str(path), "error": str(exc)})

    with maybe_profile(args.profile):
        for result in pipeline.describe_stream(good_images()):
            print(f"{result.path}: {', '.join(result.nouns) if result.nouns else '(no nouns found)'}")
            records.append(result.to_json())
            _write_json(args.json, cfg, records)
    _write_json(args.json, cfg, records)
    stage_seconds = [r["stage_seconds"] for r in records if "stage_seconds" in r]
    if args.profile:
        print(write_stage_table(args.profile, stage_seconds), file=sys.stderr)
    return 1 if failures else 0


def _write_json(path: str | None, cfg, records: list[dict]) -> None:
    """Atomically rewrite the results file (what was computed survives an interruption)."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, {"config": cfg.to_dict(), "images": records})
