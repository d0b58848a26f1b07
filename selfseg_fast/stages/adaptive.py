"""Adaptive caption cycles: a cluster stops captioning once its cycles stop bringing new nouns.

The paper fixes the number of cycles per dataset (Table 3: VOC 1, ADE20K 10, Cityscapes 20), so a
cluster whose names were all found in its first cycles still runs all of them. With
`caption.adaptive_patience = p > 0`, a cluster stops after `p` consecutive cycles that added no noun
to its own noun set (at most the preset's `cycles`); it has then run at most (cycle of its last new
noun) + p cycles. Cycles stay independent draws, so cycle c of a cluster is the same caption as
cycle c of the fixed run (its random draws are those of cycle c): the adaptive captions of a cluster
are a prefix of its fixed-cycle captions, and its nouns a subset (equal once the pool is exhausted),
up to float rounding: the decoder batch has another shape, which can move an occasional sampled token.

Deadlines (services): each image may carry a deadline; the rows of an image past its deadline leave
the batch, its result keeps the names found so far and says `degraded`. The sampler asks the clock
before every decoder step (and then syncs every step, so the host stays within one step of the
device), so a stop inside a round is overshot by at most one decoder step; between rounds the round's
captions are decoded and tagged first (one round boundary). Encoding, clustering and segmentation
are not interrupted (a service reserves time for them: serving.py).

    rows (image, cluster) -> rounds of `adaptive_round` cycles for the rows still active
      -> nouns of each new caption (host) -> rows that are done (patience, max cycles, deadline) leave

`CycleTracker` is the bookkeeping, `run_rounds` the loop; both engines use them (the reference engine
applies the same rule to its captions, cycle by cycle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# sample_round(active rows, first cycle, cycles) -> captions [len(active)][cycles], or None when a
# deadline stopped the round (nothing of it is kept).
SampleRound = Callable[[list[int], int, int], "list[list[str]] | None"]
# nouns_of(captions) -> nouns per caption
NounsOf = Callable[[list[str]], "list[list[str]]"]


@dataclass
class CycleTracker:
    """Per row: captions so far, its noun set in first-seen order, the cycle of its last new noun."""

    rows: int
    max_cycles: int
    patience: int  # 0: never stop early (fixed cycles, or a deadline alone)
    captions: list[list[str]] = field(default_factory=list)
    nouns: list[list[str]] = field(default_factory=list)
    last_new: list[int] = field(default_factory=list)  # -1: no noun yet
    expired: list[bool] = field(default_factory=list)  # stopped by its image's deadline

    def __post_init__(self) -> None:
        self.captions = [[] for _ in range(self.rows)]
        self.nouns = [[] for _ in range(self.rows)]
        self.last_new = [-1] * self.rows
        self.expired = [False] * self.rows

    def cycles_run(self, row: int) -> int:
        return len(self.captions[row])

    def done(self, row: int) -> bool:
        ran = self.cycles_run(row)
        if self.expired[row] or ran >= self.max_cycles:
            return True
        return self.patience > 0 and ran - 1 - self.last_new[row] >= self.patience

    def active(self) -> list[int]:
        return [r for r in range(self.rows) if not self.done(r)]

    def add(self, row: int, caption: str, caption_nouns: Sequence[str]) -> None:
        """One more cycle of `row` (ignored once the row is done: a round may run past a stop)."""
        if self.done(row):
            return
        cycle = self.cycles_run(row)
        self.captions[row].append(caption)
        new = [n for n in dict.fromkeys(caption_nouns) if n not in self.nouns[row]]
        if new:
            self.nouns[row].extend(new)
            self.last_new[row] = cycle


def run_rounds(
    tracker: CycleTracker,
    round_size: int,
    sample_round: SampleRound,
    nouns_of: NounsOf,
    expire: Callable[[list[int]], list[int]] = lambda active: [],
) -> CycleTracker:
    """Run rounds until no row is active. `expire(active)` names the active rows whose image is past
    its deadline (checked before every round, and after a round the sampler stopped); they leave."""
    while True:
        for row in expire(tracker.active()):
            tracker.expired[row] = True
        active = tracker.active()
        if not active:
            return tracker
        first = tracker.cycles_run(active[0])  # active rows have all run the same number of cycles
        cycles = min(round_size, tracker.max_cycles - first)
        captions = sample_round(active, first, cycles)
        if captions is None:  # stopped by a deadline: expire() removes the late rows, the rest re-run
            late = expire(active)
            if not late:
                raise RuntimeError("the caption round stopped but no row's deadline has passed")
            continue
        flat = [c for per_row in captions for c in per_row]
        found = iter(nouns_of(flat))
        for row, per_row in zip(active, captions):
            for caption in per_row:
                tracker.add(row, caption, next(found))


def deadline_clock(
    row_image: Sequence[int], deadlines: Sequence[float | None], clock: Callable[[], float] = time.monotonic
) -> tuple[Callable[[], bool], Callable[[list[int]], list[int]]]:
    """(should_stop, expire) for rows of images with absolute `deadlines` (clock seconds, None = none):
    `should_stop()` is True once any image with a live row is late; `expire(active)` lists the active
    rows whose image is late."""
    live: set[int] = set()

    def expire(active: list[int]) -> list[int]:
        now = clock()
        late = [r for r in active if deadlines[row_image[r]] is not None and now >= deadlines[row_image[r]]]
        live.clear()
        live.update(row_image[r] for r in active if r not in late)
        return late

    def should_stop() -> bool:
        now = clock()
        return any(deadlines[i] is not None and now >= deadlines[i] for i in live)

    return should_stop, expire
