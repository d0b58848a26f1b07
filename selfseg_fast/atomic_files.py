"""Results files that an interrupted run never leaves half-written: write a temporary file beside the
target, then rename it over the target (atomic on one file system)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path, data: dict, *, sort_keys: bool = False) -> None:
    """`data` as indented JSON at `path`; the temporary name carries the pid, so concurrent writers
    (Ray workers, two runs on one folder) never share one."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=sort_keys))
    os.replace(tmp, path)
