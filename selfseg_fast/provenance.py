"""What produced a result: the package version, the package's own git commit, library versions.

Every results JSON carries `provenance()` so a number can be traced to the code that made it. The
commit is the one of the source tree this package was imported from (an editable install or a
checkout on PYTHONPATH), never of the current directory; a wheel install has none (None).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

from selfseg_fast import __version__

# Bumped whenever a results file's fields change meaning (readers check it).
RESULTS_SCHEMA_VERSION = 2

PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def package_commit() -> str | None:
    """The git commit of the tree holding this package (+ "-dirty" if it has local changes), or None."""
    if not (PACKAGE_DIR.parent / ".git").exists():
        return None
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", str(PACKAGE_DIR))
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(PACKAGE_DIR.parent), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return out.stdout.strip()


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries whose behaviour changes our numbers (None where not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "numpy", "spacy", "nltk", "onnxruntime", "triton", "cupy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["cupy"] is None:  # CuPy wheels are named after their CUDA major (cupy-cuda12x, cupy-cuda13x)
        for dist in ("cupy-cuda13x", "cupy-cuda12x"):
            try:
                out["cupy"] = f"{metadata.version(dist)} ({dist})"
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def device_name(device: Any = None) -> str:
    """A human name of the device results were computed on, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu (x86_64)'."""
    import torch

    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: Any = None) -> dict[str, Any]:
    """The record every results JSON carries."""
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "selfseg_fast": __version__,
        "commit": package_commit(),
        "device": device_name(device),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
