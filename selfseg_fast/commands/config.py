"""`selfseg-fast config [--preset P] [--config FILE] [--set KEY=VALUE ...]`: print the resolved config.

Applies the same options, in the same order, as the pipeline commands (file or preset, --maskblip,
flags, --set), validates the result and prints it as JSON, without loading any model. The output is a
valid `--config FILE` (`--out FILE` writes it), so a run can be pinned and repeated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.commands.options import add_config_options, add_segmenter_options, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="print the resolved, validated config as JSON (loads no model)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", metavar="FILE", help="also write it to FILE (a valid --config file)")
    add_segmenter_options(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = config_from_args(args).validated(for_pipeline=True).to_dict()
    print(json.dumps(data, indent=2))
    if args.out:
        target = Path(args.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target, data)
    return 0
