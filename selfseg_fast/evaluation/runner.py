"""The benchmark loop behind `selfseg-fast bench`, in two phases:

1. compute: describe (+ segment) every image not already on disk, writing each batch's records as it
   finishes (a crash or an LLM outage never loses computed images; a rerun resumes);
2. score: map every name of every scored image with LOVE (in LLM batches, cached), relabel, and score
   mIoU and cmIoU from the files on disk, writing the official-format predictions beside ours.

Modes (the paper's tables, see `paper.py`):
- `full`: Self-Seg: BCC nouns -> segmenter -> LOVE -> mIoU (Tables 2, 3); cmIoU of the segmenter's
  masks (Table 1 "Self-Seg") and of the BCC clusters;
- `bcc-only`: the BCC cluster masks alone, cmIoU (Table 1 "BLIP-CLUSTER-CAPTION"); no segmenter, no LLM;
- `single-caption`: the segmenter with the nouns of one plain caption of the whole image (Table 1
  "X-Decoder + BLIP"; the command sets one cluster and one caption; the loop is `full`'s);
- `names-given`: the segmenter with the dataset's class names (Table 2 "X-Decoder"); no BLIP, no LLM.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from selfseg_fast.config import SegmenterConfig
from selfseg_fast.console import progress
from selfseg_fast.errors import ImageError
from selfseg_fast.evaluation.datasets.base import Dataset, Sample, SampleError
from selfseg_fast.evaluation.love import LOVE
from selfseg_fast.evaluation.metrics import (
    ClusterScore,
    ConfusionMatrix,
    match_clusters_to_classes,
    mean_iou_objects,
    upsample_grid,
)
from selfseg_fast.evaluation.official import write_official
from selfseg_fast.evaluation.results import ResultsStore
from selfseg_fast.images import LoadedImage, load_image
from selfseg_fast.records import ImageResult
from selfseg_fast.resegment import resegment

MODES = ("full", "bcc-only", "single-caption", "names-given")
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
    images_total: int = 0  # image/label pairs considered (after --limit)
    images_scored: int = 0
    images_run: int = 0
    seconds_run: float = 0.0  # wall time of this invocation's pipeline calls
    seconds_total: float = 0.0  # summed per-image wall time of all scored images
    love_seconds: float = 0.0  # LOVE mapping time of this invocation
    miou: float = float("nan")  # the headline mIoU (VOC: over the 20 object classes, PAS-20)
    miou_all: float = float("nan")  # over all classes (VOC: 21, background a class)
    miou_objects: float = float("nan")  # VOC only: 20 object classes, background pixels ignored
    cmiou: float = float("nan")  # paper: pooled over all GT segments, of this mode's final masks
    cmiou_per_image: float = float("nan")  # the authors' code: per image, then over images
    cmiou_bcc: float = float("nan")  # the BCC cluster masks (pooled)
    cmiou_bcc_per_image: float = float("nan")
    cmiou_matched: float = float("nan")  # BCC clusters, one-to-one Hungarian cluster-class matching
    segments: int = 0  # ground-truth segments scored (the N of cmIoU)
    iou_per_class: dict[str, float] = field(default_factory=dict)
    nouns_per_image: float = float("nan")  # BCC nouns found per image
    names_per_image: float = float("nan")  # class names segmented per image (after consolidation)
    merges_per_image: float = float("nan")  # consolidation merges per image (0 when off)
    classes_per_image: float = float("nan")  # mean ground-truth classes per image (Table 3's C-bar)
    ms_per_stage: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # broken image/label pairs

    @property
    def images_per_second(self) -> float:
        return self.images_scored / self.seconds_total if self.seconds_total > 0 else float("nan")

    def to_json(self) -> dict:
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, float):
                value = _finite(value)
            elif name == "iou_per_class":
                value = {k: _finite(v) for k, v in value.items()}
            out[name] = value
        out["images_per_second"] = _finite(self.images_per_second)
        return out


def _finite(value: float) -> float | None:
    return None if value != value else round(float(value), 6)  # NaN -> null in JSON


def run_bench(
    dataset: Dataset,
    pipeline: Pipeline | None,
    store: ResultsStore,
    *,
    mode: str = "full",
    love: LOVE | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    progress_bar: bool = True,
    segmenter_cfg=None,
    official: bool = True,
) -> BenchSummary:
    """Run and score `dataset` (first `limit` pairs), resuming the images `store` already holds.
    `segmenter_cfg` (SegmenterConfig) enables maskblip's re-segmentation where it asks for it."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} not in {MODES}")
    if mode in ("full", "single-caption") and love is None:
        raise ValueError("full and single-caption modes need a LOVE mapper")
    indices = list(range(len(dataset)))[: limit if limit is not None else None]
    summary = BenchSummary(dataset.name, mode, images_total=len(indices))
    good = _compute(dataset, pipeline, store, indices, mode, batch_size, progress_bar, segmenter_cfg, summary)
    _score(dataset, store, good, mode, love, official, summary)
    return summary


# ---- phase 1: compute ----------------------------------------------------------------------------------
def _compute(dataset, pipeline, store, indices, mode, batch_size, progress_bar, segmenter_cfg, summary):
    """Compute what is missing; returns the indices of the pairs that can be scored."""
    needs_map = mode != "bcc-only"
    bar = progress(total=len(indices), desc=f"bench {dataset.name}", unit="img") if progress_bar else None
    good: list[int] = []
    pending: list[tuple[Sample, LoadedImage]] = []

    def flush() -> None:
        if pending:
            _run_batch(pending, pipeline, store, mode, dataset, segmenter_cfg, summary)
            if bar is not None:
                bar.update(len(pending))
            pending.clear()

    for index in indices:
        sample = dataset.try_load(index)  # a broken pair: one warning line, counted, skipped
        counted_now = True
        if sample is None:
            summary.skipped.append(dataset.entries[index].id)
        elif store.is_done(sample.id, needs_prediction=needs_map):
            good.append(index)
        else:
            try:
                pending.append((sample, load_image(sample.image_path)))
                good.append(index)
                counted_now = False  # counted when its batch finishes
            except ImageError as exc:
                print(f"warning: skipped {sample.id}: {exc}", file=sys.stderr)
                summary.skipped.append(sample.id)
        if bar is not None and counted_now:
            bar.update(1)
        if len(pending) >= batch_size:
            flush()
    flush()
    if bar is not None:
        bar.close()
    return good


def _run_batch(pending, pipeline, store, mode, dataset, segmenter_cfg, summary) -> None:
    start = time.perf_counter()
    done = _process(pending, pipeline, mode, dataset, segmenter_cfg)
    # a pipeline that computed elsewhere (Ray) reports that work's wall time per image
    seconds = time.perf_counter() - start + getattr(pipeline, "extra_seconds_per_image", 0.0) * len(pending)
    for sample, record, names_map in done:
        record["seconds"] = round(seconds / len(done), 6)  # this image's share of the batch's wall time
        store.write(sample.id, record, names_map)
    summary.seconds_run += seconds
    summary.images_run += len(pending)


def _process(pending, pipeline: Pipeline, mode: str, dataset: Dataset, segmenter_cfg):
    """Describe and/or segment one batch -> [(sample, record, names map [H, W] or None)]."""
    samples = [s for s, _ in pending]
    images = [i for _, i in pending]
    if mode == "names-given":
        names = given_names(dataset)
        start = time.perf_counter()
        maps = pipeline.segment(images, [names] * len(images))
        per_image = (time.perf_counter() - start) / len(images)
        records = [_record(s, None, names, {"segment": per_image}) for s in samples]
        return [(s, r, _fit(m, s.label.shape)) for s, r, m in zip(samples, records, maps)]
    described = pipeline.describe(images)
    if mode == "bcc-only":
        return [(s, _record(s, d, [], d.stage_seconds), None) for s, d in zip(samples, described)]
    out = []
    rule = segmenter_cfg or SegmenterConfig()  # at most max_names names per image, as run() keeps them
    start = time.perf_counter()
    maps = pipeline.segment(images, [rule.first_names(d.nouns) for d in described])
    audits = []
    for sample, image, result, label_map in zip(samples, images, described, maps):
        audit, nouns = {}, rule.first_names(result.nouns)
        if hasattr(label_map, "class_names"):  # consolidation renamed the classes (NamedMap)
            audit, nouns, label_map = label_map.audit(), list(label_map.class_names), label_map.label_map
        label_map, names = _maybe_resegment(pipeline, image, nouns, label_map, segmenter_cfg)
        out.append([sample, result, names, label_map])
        audits.append(audit)
    per_image = (time.perf_counter() - start) / len(samples)
    return [
        (s, _record(s, d, names, {**d.stage_seconds, "segment": per_image}) | a, _fit(m, s.label.shape))
        for (s, d, names, m), a in zip(out, audits)
    ]


def _maybe_resegment(pipeline, image, nouns, label_map, segmenter_cfg):
    if segmenter_cfg is None:
        return label_map, nouns
    return resegment(label_map, nouns, lambda kept: pipeline.segment([image], [kept])[0], segmenter_cfg)


def given_names(dataset: Dataset) -> list[str]:
    """The class names X-Decoder gets in `names-given` mode: every class but a `background` class (VOC
    is scored PAS-20 style there, background pixels ignored; X-Decoder adds its own background prompt)."""
    return [name for i, name in enumerate(dataset.class_names) if i != dataset.background_id]


def _record(sample: Sample, result: ImageResult | None, names: list[str], stages: dict) -> dict:
    return {
        "id": sample.id,
        "image_path": sample.image_path,
        "nouns": list(result.nouns) if result is not None else [],
        "names": list(names),  # what the label map's indices refer to
        "cluster_grid": result.cluster_grid if result is not None else None,
        "captions": {str(k): v for k, v in result.captions.items()} if result is not None else {},
        "stage_seconds": {k: round(v, 6) for k, v in stages.items()},
    }


def _fit(names_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The segmenter's map at the label's size (nearest neighbour if it differs, e.g. EXIF-rotated)."""
    names_map = np.asarray(names_map, dtype=np.int64)
    if names_map.shape == tuple(shape):
        return names_map
    return upsample_grid(names_map, shape)


# ---- phase 2: score ------------------------------------------------------------------------------------
@dataclass
class _Scores:
    conf: ConfusionMatrix
    cluster_conf: ConfusionMatrix
    final: ClusterScore
    bcc: ClusterScore
    stage_totals: dict = field(default_factory=lambda: defaultdict(float))
    noun_counts: list = field(default_factory=list)
    name_counts: list = field(default_factory=list)
    merge_counts: list = field(default_factory=list)
    class_counts: list = field(default_factory=list)


def _score(dataset, store, good, mode, love, official, summary) -> None:
    background = () if dataset.background_id is None else (dataset.background_id,)
    scores = _Scores(
        ConfusionMatrix(dataset.num_classes, dataset.ignore_index),
        ConfusionMatrix(dataset.num_classes, dataset.ignore_index),
        ClusterScore(dataset.ignore_index, skip_classes=background),
        ClusterScore(dataset.ignore_index, skip_classes=background),
    )
    records = [store.read_record(dataset.entries[i].id) for i in good]
    if love is not None and mode in ("full", "single-caption"):
        start = time.perf_counter()
        love.map([name for record in records for name in record["names"]])  # all names, in LLM batches
        summary.love_seconds = time.perf_counter() - start
    for index in good:
        try:
            sample = dataset.load(index)
        except SampleError as exc:  # changed on disk since phase 1
            print(f"warning: skipped {dataset.entries[index].id}: {exc}", file=sys.stderr)
            summary.skipped.append(dataset.entries[index].id)
            continue
        record, names_map = store.read(sample.id)
        _score_one(dataset, store, sample, record, names_map, mode, love, official, scores)
        summary.images_scored += 1
    _finish(dataset, mode, scores, summary)


def _score_one(dataset, store, sample, record, names_map, mode, love, official, scores: _Scores) -> None:
    for stage, seconds in record.get("stage_seconds", {}).items():
        scores.stage_totals[stage] += seconds
    scores.stage_totals[_WALL] += record.get("seconds", 0.0)
    label = sample.label
    present = np.unique(label[label != dataset.ignore_index])
    scores.class_counts.append(int(np.sum([c not in (dataset.background_id,) for c in present])))
    if names_map is not None:
        if names_map.shape != label.shape:
            names_map = _fit(names_map, label.shape)
        scores.name_counts.append(len(record["names"]))
        scores.merge_counts.append(len(record.get("merges", [])))
        train_ids = _to_train_ids(names_map, record["names"], mode, love, dataset)
        scores.conf.update(label, train_ids)
        scores.final.update(label, names_map)
        if official:
            write_official(store.out_dir, dataset.name, sample.id, train_ids)
    if record.get("cluster_grid") is not None:
        clusters = upsample_grid(np.asarray(record["cluster_grid"], dtype=np.int64), label.shape)
        scores.bcc.update(label, clusters)
        matched = match_clusters_to_classes(label, clusters, dataset.num_classes, dataset.ignore_index)
        scores.cluster_conf.update(label, matched)
        scores.noun_counts.append(len(record["nouns"]))


def _to_train_ids(names_map, names, mode, love, dataset) -> np.ndarray:
    """[H, W] name indices -> [H, W] train ids (-1: no class): the given names are classes themselves;
    free nouns go through LOVE."""
    from selfseg_fast.evaluation.love import apply_mapping

    if mode == "names-given":
        lookup = {name: i for i, name in enumerate(dataset.class_names)}
        return apply_mapping(names_map, np.array([lookup.get(n, -1) for n in names], dtype=np.int64))
    return love.apply(names_map, names)


def _finish(dataset, mode, scores: _Scores, summary: BenchSummary) -> None:
    if mode != "bcc-only":
        summary.miou_all = scores.conf.miou()
        summary.iou_per_class = dict(zip(dataset.class_names, scores.conf.iou().tolist()))
        if dataset.background_id is not None:
            summary.miou_objects = mean_iou_objects(scores.conf.counts, dataset.background_id)
            summary.miou = summary.miou_objects
        else:
            summary.miou = summary.miou_all
    final = scores.bcc if mode == "bcc-only" else scores.final
    summary.cmiou, summary.cmiou_per_image = final.pooled(), final.per_image()
    summary.segments = final.num_segments
    summary.cmiou_bcc, summary.cmiou_bcc_per_image = scores.bcc.pooled(), scores.bcc.per_image()
    summary.cmiou_matched = scores.cluster_conf.miou() if scores.bcc.best else float("nan")
    summary.nouns_per_image = float(np.mean(scores.noun_counts)) if scores.noun_counts else float("nan")
    summary.classes_per_image = float(np.mean(scores.class_counts)) if scores.class_counts else float("nan")
    summary.names_per_image = float(np.mean(scores.name_counts)) if scores.name_counts else float("nan")
    summary.merges_per_image = float(np.mean(scores.merge_counts)) if scores.merge_counts else float("nan")
    wall = scores.stage_totals.pop(_WALL, 0.0)
    if summary.images_scored:
        n = summary.images_scored
        summary.ms_per_stage = {k: round(1000 * v / n, 3) for k, v in sorted(scores.stage_totals.items())}
        summary.seconds_total = wall
