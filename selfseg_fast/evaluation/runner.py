"""The benchmark loop behind `selfseg-fast bench`: describe + segment each image, map nouns with LOVE,
score mIoU / cmIoU, write per-image results, resume what an earlier run finished.

Modes (the paper's ablations):
- `full`: Self-Seg: BCC nouns -> segmenter -> LOVE -> mIoU, plus cmIoU of the BCC cluster masks;
- `bcc-only`: the BCC cluster masks alone, scored class-agnostically (cmIoU); no segmenter, no LLM;
- `single-caption`: the segmenter with the nouns of one plain caption of the whole image (the
  command sets one cluster and one captioning cycle; the loop is the same as `full`).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from selfseg_fast.errors import ImageError
from selfseg_fast.evaluation.datasets.base import Dataset, Sample
from selfseg_fast.evaluation.love import LOVE
from selfseg_fast.evaluation.metrics import (
    ClusterScore,
    ConfusionMatrix,
    match_clusters_to_classes,
    upsample_grid,
)
from selfseg_fast.evaluation.results import ResultsStore
from selfseg_fast.images import LoadedImage, load_image
from selfseg_fast.records import ImageResult

MODES = ("full", "bcc-only", "single-caption")
_WALL = "__wall__"


class Pipeline(Protocol):
    """What the benchmark needs from `selfseg_fast.pipeline.SelfSegPipeline`."""

    def describe(self, images: list[LoadedImage]) -> list[ImageResult]: ...

    def segment(self, images: list[LoadedImage], class_names: list[list[str]]) -> list[np.ndarray]: ...


@dataclass
class BenchSummary:
    """Scores and speed of one run. Speed and ms per stage cover every scored image, those resumed from
    disk included (each record keeps its own wall time); `images_run` counts this invocation's."""

    dataset: str
    mode: str
    images_scored: int = 0
    images_run: int = 0
    seconds_run: float = 0.0  # wall time of this invocation's pipeline calls
    seconds_total: float = 0.0  # summed per-image wall time of all scored images
    miou: float = float("nan")
    cmiou: float = float("nan")  # class-agnostic: best cluster per ground-truth segment (authors' code)
    cmiou_matched: float = float("nan")  # class-agnostic, one-to-one Hungarian cluster-class matching
    iou_per_class: dict[str, float] = field(default_factory=dict)
    nouns_per_image: float = float("nan")
    ms_per_stage: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images_scored / self.seconds_total if self.seconds_total > 0 else float("nan")

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "mode": self.mode,
            "images_scored": self.images_scored,
            "images_run": self.images_run,
            "seconds_run": round(self.seconds_run, 4),
            "seconds_total": round(self.seconds_total, 4),
            "images_per_second": _finite(self.images_per_second),
            "miou": _finite(self.miou),
            "cmiou": _finite(self.cmiou),
            "cmiou_matched": _finite(self.cmiou_matched),
            "iou_per_class": {k: _finite(v) for k, v in self.iou_per_class.items()},
            "nouns_per_image": _finite(self.nouns_per_image),
            "ms_per_stage": self.ms_per_stage,
            "skipped": self.skipped,
        }


def _finite(value: float) -> float | None:
    return None if value != value else round(float(value), 6)  # NaN -> null in JSON


class Progress:
    """A dependency-free progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int, stream=None, width: int = 30) -> None:
        self.total, self.width, self.done = max(total, 1), width, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        filled = int(self.width * self.done / self.total)
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {rate:.2f} img/s {note}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width + 40))
            self.stream.flush()
        elif (decile := 10 * self.done // self.total) != self._last_decile:
            self._last_decile = decile
            print(line, file=self.stream)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def run_bench(
    dataset: Dataset,
    pipeline: Pipeline | None,
    store: ResultsStore,
    *,
    mode: str = "full",
    love: LOVE | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> BenchSummary:
    """Run and score `dataset` (first `limit` pairs), resuming the images `store` already holds."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} not in {MODES}")
    if mode != "bcc-only" and love is None:
        raise ValueError("full and single-caption modes need a LOVE mapper")
    needs_prediction = mode != "bcc-only"
    indices = list(range(len(dataset)))[: limit if limit is not None else None]
    conf = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    cluster_conf = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    background = tuple(i for i, name in enumerate(dataset.class_names) if name == "background")
    cluster_score = ClusterScore(dataset.ignore_index, skip_classes=background)
    summary = BenchSummary(dataset.name, mode)
    stage_totals: dict[str, float] = defaultdict(float)
    noun_counts: list[int] = []
    bar = Progress(len(indices)) if progress else None

    def score(sample: Sample, record: dict, prediction: np.ndarray | None) -> None:
        for stage, seconds in record.get("stage_seconds", {}).items():
            stage_totals[stage] += seconds
        stage_totals[_WALL] += record.get("seconds", 0.0)
        if prediction is not None:
            conf.update(sample.label, prediction)
        grid = np.asarray(record["cluster_grid"], dtype=np.int64)
        clusters = upsample_grid(grid, sample.label.shape)
        matched = match_clusters_to_classes(sample.label, clusters, dataset.num_classes, dataset.ignore_index)
        cluster_conf.update(sample.label, matched)
        cluster_score.update(sample.label, clusters)
        noun_counts.append(len(record["nouns"]))
        summary.images_scored += 1

    pending: list[tuple[Sample, LoadedImage]] = []

    def flush() -> None:
        if not pending:
            return
        start = time.perf_counter()
        done = list(_process(pending, pipeline, mode, love, dataset))
        # a pipeline that computed elsewhere (Ray) reports that work's wall time per image
        seconds = (
            time.perf_counter() - start + getattr(pipeline, "extra_seconds_per_image", 0.0) * len(pending)
        )
        for sample, record, prediction in done:
            record["seconds"] = round(seconds / len(done), 6)  # this image's share of the batch's wall time
            store.write(sample.id, record, prediction, dataset.ignore_index)
            score(sample, record, prediction)
        summary.seconds_run += seconds
        summary.images_run += len(pending)
        if bar:
            bar.update(len(pending))
        pending.clear()

    for index in indices:
        sample = dataset.try_load(index)
        if sample is None:
            summary.skipped.append(dataset.entries[index].id)
            if bar:
                bar.update(1, "(skipped)")
            continue
        if store.is_done(sample.id, needs_prediction=needs_prediction):
            record, prediction = store.read(sample.id)
            if prediction is not None and prediction.shape != sample.label.shape:
                prediction = None  # stale file from another dataset version: redo below
            else:
                score(sample, record, prediction if needs_prediction else None)
                if bar:
                    bar.update(1, "(done before)")
                continue
        try:
            image = load_image(sample.image_path)
        except ImageError as exc:
            print(f"warning: skipped {sample.id}: {exc}", file=sys.stderr)
            summary.skipped.append(sample.id)
            continue
        pending.append((sample, image))
        if len(pending) >= batch_size:
            flush()
    flush()
    if bar:
        bar.close()

    if needs_prediction:
        summary.miou = conf.miou()
        summary.iou_per_class = dict(zip(dataset.class_names, conf.iou().tolist()))
    summary.cmiou = cluster_score.value()
    summary.cmiou_matched = cluster_conf.miou()
    summary.nouns_per_image = float(np.mean(noun_counts)) if noun_counts else float("nan")
    wall = stage_totals.pop(_WALL, 0.0)
    if summary.images_scored:
        n = summary.images_scored
        summary.ms_per_stage = {k: round(1000 * v / n, 3) for k, v in sorted(stage_totals.items())}
        summary.seconds_total = wall
    return summary


def _process(pending, pipeline: Pipeline, mode: str, love: LOVE | None, dataset: Dataset):
    """Describe (and segment + map) one batch -> (sample, record, prediction [H, W] train ids or None)."""
    samples = [s for s, _ in pending]
    images = [i for _, i in pending]
    described = pipeline.describe(images)
    predictions: list[np.ndarray | None] = [None] * len(samples)
    extra = [dict() for _ in samples]
    if mode != "bcc-only":
        start = time.perf_counter()
        maps = pipeline.segment(images, [list(r.nouns) for r in described])
        segment_s = (time.perf_counter() - start) / len(samples)
        start = time.perf_counter()
        love.map([noun for r in described for noun in r.nouns])  # the batch's new nouns in LLM batches
        love_s = (time.perf_counter() - start) / len(samples)
        for i, (sample, result, noun_map) in enumerate(zip(samples, described, maps)):
            start = time.perf_counter()
            predictions[i] = love.apply(_fit(noun_map, sample.label.shape), result.nouns)
            extra[i] = {
                "segment": segment_s,
                "love": love_s + time.perf_counter() - start,
                "mapping": {noun: love.mapping[noun] for noun in result.nouns},
            }
    for i, (sample, result) in enumerate(zip(samples, described)):
        stages = dict(result.stage_seconds)
        for stage in ("segment", "love"):
            if stage in extra[i]:
                stages[stage] = round(extra[i][stage], 6)
        record = {
            "id": sample.id,
            "image_path": sample.image_path,
            "nouns": list(result.nouns),
            "love_mapping": extra[i].get("mapping", {}),
            "cluster_grid": result.cluster_grid,
            "captions": {str(k): v for k, v in result.captions.items()},
            "stage_seconds": stages,
        }
        yield sample, record, predictions[i]


def _fit(noun_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The segmenter's map at the label's size (nearest neighbour if it differs, e.g. EXIF-rotated)."""
    noun_map = np.asarray(noun_map, dtype=np.int64)
    if noun_map.shape == tuple(shape):
        return noun_map
    return upsample_grid(noun_map, shape)
