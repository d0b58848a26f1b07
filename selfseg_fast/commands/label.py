"""`selfseg-fast label FOLDER --out DIR`: name and segment every image of a folder (self-guided).

Writes DIR/<image>.json (nouns, pixel shares, captions, cluster grid) and DIR/<image>.png (label
map: value = index into the names, 255 = unlabelled). Re-running skips finished images, so an
interrupted run resumes. `--ray ADDRESS` spreads the work over a Ray cluster's GPUs (one actor
holding the models per GPU); `--ray local` starts Ray on this machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selfseg_fast.commands.options import add_config_options, add_segmenter_options, config_from_args
from selfseg_fast.errors import SelfSegError
from selfseg_fast.images import iter_image_paths


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
    add_segmenter_options(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfseg_fast.labelling import run_labelling

    root = Path(args.folder)
    if not root.is_dir():
        raise SelfSegError(f"{root}: not a folder; give the folder of images to label")
    cfg = config_from_args(args)
    paths = iter_image_paths([str(root)])
    done, failed = run_labelling(paths, root, cfg, Path(args.out), args.ray)
    print(f"labelled {done} image(s) into {args.out} ({failed} failed; {len(paths) - done} already done)")
    return 1 if failed else 0
