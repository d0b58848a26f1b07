"""Per-stage wall time, with an NVTX range per stage when CUDA is present (for Nsight / profilers);
each stage entered is also reported to `progress_hook` (what a command's progress bar shows)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from selfseg_fast.progress_hook import report


class StageTimer:
    """Accumulates seconds per stage name. `sync=True` waits for the GPU so times are honest."""

    def __init__(self, *, sync: bool = False) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = sync and torch.cuda.is_available()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        report(stage)
        if self.sync:
            torch.cuda.synchronize()
        nvtx = torch.cuda.is_available()
        if nvtx:
            torch.cuda.nvtx.range_push(f"selfseg/{stage}")
        start = time.perf_counter()
        try:
            with torch.profiler.record_function(f"selfseg/{stage}"):
                yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - start
            if nvtx:
                torch.cuda.nvtx.range_pop()

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 6) for name, value in self.seconds.items()}
