"""What the user sees while a command runs: log level (-q / -v), progress bars, third-party noise.

- `configure(verbosity)`: -1 = quiet (errors only, no progress bars), 0 = normal (our INFO lines and
  progress bars, third-party libraries at ERROR), 1 = verbose (DEBUG for us, third-party warnings and
  info come through: HF download retries, Ray, the torch.onnx exporter).
- `progress(iterable, ...)`: a tqdm bar on stderr (ETA; tqdm shows s/img by itself below 1 img/s),
  off when quiet or when stderr is not a terminal unless forced; `SELFSEG_PROGRESS=0/1` overrides.

We use tqdm rather than our own bar: it is already installed with transformers, handles terminals,
notebooks and redirected output, and users know its look.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

QUIET, NORMAL, VERBOSE = -1, 0, 1
_state = {"verbosity": NORMAL}

# Loggers of libraries that print retries, deprecations and progress of their own.
THIRD_PARTY_LOGGERS = (
    "transformers",
    "huggingface_hub",
    "torch",
    "torch.onnx",
    "torch._dynamo",
    "onnxscript",
    "ray",
    "ray.data",
    "urllib3",
    "httpx",
    "filelock",
    "PIL",
)


def configure(verbosity: int = NORMAL) -> None:
    """Set our log level and silence (or not) the third-party libraries; idempotent."""
    _state["verbosity"] = verbosity
    ours = {QUIET: logging.ERROR, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("selfseg_fast")
    logger.setLevel(ours)
    for handler in logger.handlers:
        if getattr(handler, "_selfseg", False) and isinstance(handler, logging.StreamHandler):
            handler.stream = sys.stderr  # the current stderr (tests and notebooks swap it)
    if not any(getattr(h, "_selfseg", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("selfseg-fast: %(message)s"))
        handler._selfseg = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    others = logging.WARNING if verbosity >= VERBOSE else logging.ERROR
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(others)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if verbosity < VERBOSE:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # huggingface_hub sets its logger's level from this when it is imported (after us, usually), so
        # setting the level above is not enough: its retry lines ("... thrown while requesting HEAD ...")
        # would print for minutes when the hub is unreachable.
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"(torch|transformers|onnxscript|ray|nltk)(\..*)?")
        # Libraries imported already read their variable too early; set them directly (importing them
        # here just for this would add seconds to `selfseg-fast config`).
        if "transformers" in sys.modules:
            sys.modules["transformers"].logging.set_verbosity_error()
        if "huggingface_hub" in sys.modules:
            sys.modules["huggingface_hub"].utils.logging.set_verbosity_error()


def verbosity() -> int:
    return _state["verbosity"]


def progress_enabled() -> bool:
    forced = os.environ.get("SELFSEG_PROGRESS")
    if forced is not None:
        return forced not in ("0", "false", "no", "")
    return _state["verbosity"] > QUIET and sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "img",
             **kwargs: Any) -> tqdm:  # fmt: skip
    """A tqdm progress bar on stderr (disabled when quiet / not a terminal; see the module docstring)."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not progress_enabled(),
        **kwargs,
    )
