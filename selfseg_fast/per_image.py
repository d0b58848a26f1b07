"""Run the pipeline over many image files so that every image ends in a result or its own one-line
error, and no image takes its batch down (the `segment` and `label` commands, Ray actors).

Per chunk of `cfg.batch_size` paths:
  load      each file (a failure is that image's error);
  describe  the loaded images as one batch (BCC + nouns, batched by the engine); if the batch raises,
            it is bisected (`isolation.run_isolated`) so only the failing image gets the error;
  segment   each image with its own nouns (self-guided), or the whole chunk with the given names
            (bisected the same way on failure).
Outcomes are yielded one image at a time, as each finishes, so a caller can write each image at once.
An interrupt (KeyboardInterrupt) is not an image's fault and stops the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfseg_fast.errors import SelfSegError
from selfseg_fast.images import LoadedImage, display_path, load_image
from selfseg_fast.isolation import Failure, run_isolated
from selfseg_fast.records import ImageResult

log = logging.getLogger(__name__)


@dataclass
class ImageOutcome:
    """One image's result, or its error line."""

    path: Path
    image: LoadedImage | None = None
    names: list[str] = field(default_factory=list)
    label_map: np.ndarray | None = None  # [H, W] int64, index into names, -1 unlabelled
    description: ImageResult | None = None  # self-guided runs only
    error: str | None = None  # one line naming the file
    audit: dict = field(default_factory=dict)  # consolidation merges / taxonomy (empty when off)

    @property
    def ok(self) -> bool:
        return self.error is None


def error_line(exc: BaseException, path: str | Path) -> str:
    """One line naming the file: our own errors as they are; anything else is labelled as a bug."""
    if isinstance(exc, SelfSegError):
        return str(exc) if exc.path else f"{display_path(path)}: {exc}"
    log.debug("unexpected failure on %s", display_path(path), exc_info=exc)
    detail = " ".join(str(exc).split())[:300]
    return (
        f"{display_path(path)}: failed ({type(exc).__name__}: {detail}); this is a bug, please report it "
        "(-v shows the traceback)"
    )


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + max(1, size)]


def segment_paths(
    pipeline,
    paths: Sequence[str | Path],
    names: list[str] | None = None,
    batch_size: int | None = None,
    deadline_ms: float | None = None,
) -> Iterator[ImageOutcome]:
    """Outcomes in input order, one image at a time (see the module docstring). `names`: segment with
    these class names; None: the self-guided pipeline (describe, then each image's own nouns), with
    `deadline_ms` (if given) bounding each chunk's captioning from when its describe starts."""
    size = batch_size or getattr(getattr(pipeline, "cfg", None), "batch_size", 16)
    for chunk in chunks(list(paths), size):
        loaded = [_load(Path(p)) for p in chunk]
        images = [o.image for o in loaded if o.ok]
        if names is not None:
            maps = iter(run_isolated(lambda imgs: pipeline.segment(imgs, [names] * len(imgs)), images))
            for outcome in loaded:
                if outcome.ok:
                    _settle_map(outcome, next(maps), list(names))
                yield outcome
            continue
        describe = pipeline.describe
        if deadline_ms is not None:
            describe = lambda imgs: pipeline.describe(imgs, deadline_ms=deadline_ms)  # noqa: E731
        described = iter(run_isolated(describe, images))
        for outcome in loaded:
            if outcome.ok:
                _segment_own_nouns(pipeline, outcome, next(described))
            yield outcome


def describe_paths(pipeline, paths: Sequence[str | Path], batch_size: int | None = None) -> Iterator:
    """`ImageResult` per path (input order), or None where the image failed to load or describe."""
    size = batch_size or getattr(getattr(pipeline, "cfg", None), "batch_size", 16)
    for chunk in chunks(list(paths), size):
        loaded = [_load(Path(p)) for p in chunk]
        described = iter(run_isolated(pipeline.describe, [o.image for o in loaded if o.ok]))
        for outcome in loaded:
            result = next(described) if outcome.ok else None
            yield None if isinstance(result, Failure) else result


def _load(path: Path) -> ImageOutcome:
    try:
        return ImageOutcome(path, image=load_image(path))
    except Exception as exc:  # ImageError, or anything a hostile file provokes in a decoder
        return ImageOutcome(path, error=error_line(exc, path))


def _settle_map(outcome: ImageOutcome, result, names: list[str]) -> None:
    if isinstance(result, Failure):
        outcome.error = error_line(result.error, outcome.path)
        outcome.image = None
    elif hasattr(result, "class_names"):  # consolidation or a taxonomy renamed the classes
        outcome.names, outcome.label_map, outcome.audit = (
            list(result.class_names),
            result.label_map,
            result.audit(),
        )
    else:
        outcome.names, outcome.label_map = names, result


def _segment_own_nouns(pipeline, outcome: ImageOutcome, described) -> None:
    if isinstance(described, Failure):
        _settle_map(outcome, described, [])
        return
    names = pipeline.cfg.segmenter.first_names(described.nouns)  # as SelfSegPipeline.run keeps them
    start = time.perf_counter()
    try:
        extra = (
            {"cluster_nouns": [described.cluster_nouns]} if getattr(pipeline, "naming_active", False) else {}
        )
        (label_map,) = pipeline.segment([outcome.image], [names], **extra)
    except Exception as exc:
        _settle_map(outcome, Failure(exc), [])
        return
    described.stage_seconds["segment"] = time.perf_counter() - start
    outcome.description = described
    _settle_map(outcome, label_map, names)
