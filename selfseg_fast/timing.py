"""Per-stage time: host time (wall clock of the thread that runs the stage, i.e. launches its device
work) and, on CUDA, device time (CUDA events on that thread's current stream); an NVTX range and a
profiler range per stage; each `StageTimer` stage is also reported to `progress_hook` (what a
command's progress bar shows).

Device time costs no sync where it is taken: each stage records two CUDA events, and the elapsed time
between them is read only when asked for (`StageTimer.device_seconds`, `StageRecorder.resolve`),
normally at the end of a run or on another thread. It is the time between the stage's first and last
point on its stream, so it includes gaps where the GPU waited for the host. On a CPU there is no
device time: it is reported as None (not available), never as the host time.

`recording()` collects every stage of every thread while active (the end-to-end benchmark's source).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from selfseg_fast.progress_hook import report


@dataclass
class StageRecord:
    """One timed stage: its name, the thread that ran it, its host and (CUDA only) device seconds."""

    stage: str
    thread: str
    host_s: float
    device_s: float | None = None  # None: not available (CPU), or not resolved yet
    _events: tuple | None = None  # (start, end) CUDA events until resolved


class StageRecorder:
    """Every stage timed while it is active (see `recording`); thread-safe."""

    def __init__(self) -> None:
        self.records: list[StageRecord] = []
        self._lock = threading.Lock()

    def add(self, record: StageRecord) -> None:
        with self._lock:
            self.records.append(record)

    def take(self) -> list[StageRecord]:
        """The records so far (resolved), leaving the recorder empty."""
        with self._lock:
            records, self.records = self.records, []
        return resolve(records)


def resolve(records: list[StageRecord]) -> list[StageRecord]:
    """Fill in device seconds from the CUDA events (waits for the last of them: call it at the end)."""
    for record in records:
        if record._events is not None:
            start, end = record._events
            end.synchronize()
            record.device_s = start.elapsed_time(end) / 1000
            record._events = None
    return records


_active: StageRecorder | None = None
_hook: tuple[int, Callable[[str], AbstractContextManager]] | None = None  # (thread id, hook)


@contextmanager
def stage_hook(hook: Callable[[str], AbstractContextManager]) -> Iterator[None]:
    """Enter `hook(stage)` around every stage timed on this thread while inside (e.g. an OpCounter's
    `stage`, whose dispatch mode sees this thread's operators only)."""
    global _hook
    previous, _hook = _hook, (threading.get_ident(), hook)
    try:
        yield
    finally:
        _hook = previous


@contextmanager
def recording() -> Iterator[StageRecorder]:
    """Record every timed stage (any thread) into a new StageRecorder while inside."""
    global _active
    previous, _active = _active, StageRecorder()
    try:
        yield _active
    finally:
        _active = previous


@contextmanager
def timed(stage: str, *, sync: bool = False) -> Iterator[StageRecord]:
    """Time one stage: host wall seconds, CUDA events when CUDA is present (no sync unless `sync`),
    an NVTX and a profiler range. The record goes to the active recorder, if any."""
    cuda = torch.cuda.is_available()
    if sync and cuda:
        torch.cuda.synchronize()
    record = StageRecord(stage, threading.current_thread().name, 0.0)
    if cuda:
        torch.cuda.nvtx.range_push(f"selfseg/{stage}")
        start_event = torch.cuda.Event(enable_timing=True)
        start_event.record()
    hooked = _hook[1](stage) if _hook is not None and _hook[0] == threading.get_ident() else nullcontext()
    start = time.perf_counter()
    try:
        with torch.profiler.record_function(f"selfseg/{stage}"), hooked:
            yield record
    finally:
        if cuda:
            end_event = torch.cuda.Event(enable_timing=True)
            end_event.record()
            record._events = (start_event, end_event)
        if sync and cuda:
            torch.cuda.synchronize()
        record.host_s = time.perf_counter() - start
        if cuda:
            torch.cuda.nvtx.range_pop()
        if _active is not None:
            _active.add(record)


class StageTimer:
    """Accumulates seconds per stage name. `sync=True` waits for the GPU around each stage so the host
    seconds include the device work (the reference engine); without it, `device_seconds()` gives the
    device side from CUDA events, resolved when called."""

    def __init__(self, *, sync: bool = False) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = sync and torch.cuda.is_available()
        self.records: list[StageRecord] = []

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        report(stage)
        try:
            with timed(stage, sync=self.sync) as record:
                yield
        finally:
            self.seconds[stage] += record.host_s
            self.records.append(record)

    def as_dict(self) -> dict[str, float]:
        """Host seconds per stage."""
        return {name: round(value, 6) for name, value in self.seconds.items()}

    def device_seconds(self) -> dict[str, float] | None:
        """Device seconds per stage (resolving the CUDA events: waits for them), None on a CPU."""
        if not torch.cuda.is_available():
            return None
        out: dict[str, float] = defaultdict(float)
        for record in resolve(self.records):
            out[record.stage] += record.device_s or 0.0
        return {name: round(value, 6) for name, value in out.items()}
