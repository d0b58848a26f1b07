"""A tiny hook that long-running code calls to say what it is doing; a progress bar shows it.

    report("loading BLIP")                 # a step starts
    report("caption", done=3, total=8)     # a step inside one image, with its own count

Engines and stages need no reference to a bar: `StageTimer` reports each stage it times, the
pipeline reports model loading, and a loop inside a stage may report its count. A command shows the
reports on its tqdm bar with `shown_on(bar)` (or opens both with `progress_bar(...)`); with nobody
listening, `report` costs one list check.
Listeners are process-wide (not per thread), so steps reported from the fast engine's worker
threads reach the bar too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from selfseg_fast.console import progress

Listener = Callable[[str, "int | None", "int | None"], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


def report(step: str, done: int | None = None, total: int | None = None) -> None:
    """Tell whoever listens that `step` is running (optionally `done` of `total` of its parts)."""
    if not _listeners:
        return
    for listener in tuple(_listeners):
        listener(step, done, total)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call `listener(step, done, total)` for every report made inside the block (any thread)."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


@contextmanager
def shown_on(bar: Any) -> Iterator[None]:
    """Show each reported step as the postfix of a tqdm bar, e.g. `[caption 3/8]`."""

    def show(step: str, done: int | None, total: int | None) -> None:
        bar.set_postfix_str(f"{step} {done}/{total}" if total else step, refresh=True)

    with listening(show):
        yield


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "img") -> Iterator[Any]:
    """A command's bar (`console.progress`: off when quiet or not a terminal) that shows reported steps,
    with our log lines printed above it instead of through it."""
    with progress(total=total, desc=desc, unit=unit) as bar, shown_on(bar):
        if bar.disable:
            yield bar
        else:
            with logging_redirect_tqdm(loggers=[logging.getLogger("selfseg_fast")]):
                yield bar
