"""`selfseg-fast` command line: one sub-command per module in selfseg_fast/commands/.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func=run` on it. A `SelfSegError` is printed as one line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from selfseg_fast.errors import SelfSegError

# Order is the order shown in --help.
COMMAND_MODULES = ("caption", "segment", "label", "bench", "export", "setup")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfseg-fast",
        description="Self-guided open-vocabulary semantic segmentation: find, name and segment what is "
        "in an image, with no class names given.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"selfseg_fast.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"selfseg_fast.commands.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SelfSegError as exc:
        print(f"selfseg-fast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfseg-fast: interrupted; finished results are kept on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
