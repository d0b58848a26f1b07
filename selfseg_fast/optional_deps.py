"""Packages that only some paths need, and the one-line error that names how to install each.

`pip install selfseg-fast` alone runs `caption` and `segment` (the fast engine, the default); these
are needed only for the named path. crfseg is not a declared dependency (not even in an extra): its
metadata pins torchvision, which pip would install next to (or over) the user's torch build, and which
does not import beside the CPU torch wheel; crfseg itself needs only torch, hence `--no-deps`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from selfseg_fast.errors import SelfSegError

# module -> (what needs it, the command that installs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "crfseg": (
        "the reference engine's CRF (--engine reference; the fast engine does not need it)",
        "pip install --no-deps crfseg==1.0.0",
    ),
    "ray": ("--ray (Ray Data)", "pip install 'selfseg-fast[ray]'"),
    "fastapi": ("the HTTP serving example", "pip install 'selfseg-fast[serve]'"),
}


def missing_error(module: str) -> SelfSegError:
    needed_for, fix = OPTIONAL[module]
    return SelfSegError(f"{needed_for} needs the {module} package, which is not installed; fix: {fix}")


def require(module: str) -> ModuleType:
    """Import an optional package, or raise the one-line error that names its install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module:
            raise  # the package is there but one of ITS imports failed: that traceback is the news
        raise missing_error(module) from None


def check_available(module: str) -> None:
    """Fail early (before models load) if an optional package is absent; imports nothing."""
    if importlib.util.find_spec(module) is None:
        raise missing_error(module)
