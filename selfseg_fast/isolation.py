"""Run a batch function so that one bad item never takes its batch down.

`run_isolated(batch_fn, items)` calls `batch_fn(items)` once; if that raises (or returns the wrong
number of results), it bisects: each half is run as a batch of its own, recursively, until the failing
items stand alone. A batch with one bad item costs about 3x one batch run (n + n + n/2 + ...) instead of
n single-item runs, and every good item is still computed inside a batch. Only `Exception`s are isolated:
an interrupt (`KeyboardInterrupt`, `SystemExit`) propagates, since retrying cannot fix it.
Used by the serving micro-batcher and by folder labelling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatchResultMismatch(RuntimeError):
    """The batch function returned a different number of results than it was given items."""


@dataclass(frozen=True)
class Failure:
    """The outcome of an item that failed when run alone (or in the smallest failing group)."""

    error: Exception


def run_isolated(
    batch_fn: Callable[[list[T]], Sequence[R]],
    items: Sequence[T],
    deliver: Callable[[int, R | Failure], None] | None = None,
) -> list[R | Failure]:
    """One entry per item, in order: its result, or a `Failure` (see the module docstring).
    `deliver(index, outcome)`, if given, is called as soon as an item's outcome is known, so a caller
    can answer the good half of a failed batch before the bad half is bisected."""
    items = list(items)
    out: list = [None] * len(items)

    def settle(index: int, outcome) -> None:
        out[index] = outcome
        if deliver is not None:
            deliver(index, outcome)

    _bisect(batch_fn, items, 0, settle)
    return out


def _bisect(batch_fn, items: list, offset: int, settle: Callable[[int, object], None]) -> None:
    if not items:
        return
    try:
        results = list(batch_fn(items))
        if len(results) != len(items):
            raise BatchResultMismatch(f"batch function gave {len(results)} results for {len(items)} items")
    except Exception as exc:
        if len(items) == 1:
            settle(offset, Failure(exc))
            return
        half = len(items) // 2
        _bisect(batch_fn, items[:half], offset, settle)
        _bisect(batch_fn, items[half:], offset + half, settle)
        return
    for i, result in enumerate(results):
        settle(offset + i, result)
