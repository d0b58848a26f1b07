"""`selfseg-fast` command line: one sub-command per module in selfseg_fast/commands/.

Each command module defines `register(subparsers)`, which adds its parser and sets `func=run` on it.
Every command also takes -q/--quiet and -v/--verbose (see `selfseg_fast.console`).

Exit codes (README "Exit codes"), distinct so scripts can tell them apart:
  0  everything done
  1  the run finished, but some inputs failed (each named on one line)
  2  bad command line, configuration or environment (missing weights / NLP data): nothing was run
  3  internal error: one line, and the traceback with -v
  130 interrupted (Ctrl-C); results already written are kept
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from selfseg_fast import __version__
from selfseg_fast.console import NORMAL, QUIET, VERBOSE, configure
from selfseg_fast.errors import EXIT_INTERNAL, EXIT_USAGE, SelfSegError

# Order is the order shown in --help.
COMMAND_MODULES = ("caption", "segment", "label", "bench", "export", "config", "setup")
EXIT_INTERRUPTED = 130

log = logging.getLogger("selfseg_fast")


def version_text() -> str:
    """'selfseg-fast 0.1.0 (commit 1a2b3c4d5e6f)': the package version and the package's own commit."""
    from selfseg_fast.provenance import package_commit

    commit = package_commit()
    return f"selfseg-fast {__version__} ({f'commit {commit}' if commit else 'no git checkout'})"


def add_verbosity_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """-q / -v. Sub-commands use SUPPRESS defaults so `selfseg-fast -v caption ...` and
    `selfseg-fast caption -v ...` both work (a sub-parser default would overwrite the top level's).
    Option strings a command already defines itself (bench's --quiet) are left to it."""
    group = parser.add_argument_group("output")
    default = {"default": argparse.SUPPRESS} if suppress else {}
    options = (
        (("-q", "--quiet"), "quiet", "errors only: no progress bars, no info lines"),
        (("-v", "--verbose"), "verbose", "debug lines, third-party warnings (HF, Ray, ONNX), tracebacks"),
    )
    for strings, dest, help_text in options:
        free = [s for s in strings if s not in parser._option_string_actions]
        if free:
            group.add_argument(*free, dest=dest, action="store_true", help=help_text, **default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfseg-fast",
        description="Self-guided open-vocabulary semantic segmentation: find, name and segment what is "
        "in an image, with no class names given.",
        epilog="exit codes: 0 ok, 1 some inputs failed, 2 usage/config/environment error, "
        "3 internal error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=version_text())
    add_verbosity_options(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"selfseg_fast.commands.{name}").register(subparsers)
    for sub in subparsers.choices.values():
        add_verbosity_options(sub, suppress=True)
    return parser


def verbosity_of(args: argparse.Namespace) -> int:
    if getattr(args, "verbose", False):
        return VERBOSE
    return QUIET if getattr(args, "quiet", False) else NORMAL


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = verbosity_of(args)
    configure(verbosity)
    try:
        return int(args.func(args) or 0)
    except SelfSegError as exc:
        print(f"selfseg-fast: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("selfseg-fast: interrupted; finished results are kept on disk", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `selfseg-fast caption ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as exc:  # noqa: BLE001 - the one place unexpected failures become exit 3
        if verbosity >= VERBOSE:
            traceback.print_exc()
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        print(
            f"selfseg-fast: internal error: {type(exc).__name__}: {first_line} "
            f"(run with -v for the traceback; please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
