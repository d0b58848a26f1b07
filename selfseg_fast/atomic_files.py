"""Results files that an interrupted run never leaves half-written: write a temporary file beside the
target, then rename it over the target (atomic on one file system). A process killed at any point
(kill -9 included) leaves either the old file or the new one, never a torn one; at most a hidden
`.NAME.*.tmp` file is left behind. (Durability across a power cut would also need an fsync per file,
which we do not pay for: the operating system keeps what a killed process wrote.)"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`; the temporary name is unique per writer (processes, threads, Ray workers)."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict, *, sort_keys: bool = False) -> None:
    """`data` as indented JSON at `path` (see `write_bytes_atomic`)."""
    write_bytes_atomic(Path(path), json.dumps(data, indent=1, sort_keys=sort_keys).encode())
