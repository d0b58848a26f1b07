"""`selfseg-fast label FOLDER --out DIR`: name and segment every image of a folder (self-guided).

For FOLDER/sub/x.jpg it writes DIR/sub/x.jpg.json (nouns, names, pixel shares, captions, cluster grid)
and DIR/sub/x.jpg.labels.png (palette PNG: value = index into the names, 255 = unlabelled; 16-bit with
65535 = unlabelled above 255 names); `--pictures` adds x.jpg.overlay.png and x.jpg.clusters.png. Each
image is written as soon as it is finished. Re-running skips finished images, so an interrupted run
resumes; failed images are listed in DIR/failed.json and tried again on the next run. DIR may be inside
FOLDER (it is never read as input). `--ray ADDRESS` spreads the work over a Ray cluster's GPUs (one
actor holding the models per GPU); `--ray local` starts Ray on this machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selfseg_fast.commands.options import (
    add_config_options,
    add_naming_options,
    add_segmenter_options,
    config_from_args,
)
from selfseg_fast.errors import SelfSegError
from selfseg_fast.images import display_path, iter_image_paths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label",
        help="name and segment every image of a folder (resumable; --ray for many GPUs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", metavar="FOLDER", help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--ray", metavar="ADDRESS", default=None, help="Ray cluster address, or 'local'")
    parser.add_argument(
        "--pictures", action="store_true", help="also write the overlay and cluster-grid pictures"
    )
    add_naming_options(parser)
    add_segmenter_options(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfseg_fast.labelling import run_labelling

    root, out_dir = Path(args.folder), Path(args.out)
    if not root.is_dir():
        raise SelfSegError(f"{display_path(root)}: not a folder; give the folder of images to label")
    cfg = config_from_args(args)
    paths = iter_image_paths([str(root)], exclude=[out_dir])
    summary = run_labelling(paths, root, cfg, out_dir, args.ray, pictures=args.pictures)
    failed_note = f"; {summary.failed} failed, listed in {display_path(out_dir / 'failed.json')}"
    print(
        f"labelled {summary.done} image(s) into {display_path(out_dir)} ({summary.skipped} already done"
        f"{failed_note if summary.failed else ''})"
    )
    return 1 if summary.failed else 0
