"""Data-parallel labelling and benchmarking across GPUs and nodes with Ray Data.

Each Ray actor builds one `SelfSegPipeline` (models loaded once, one GPU per actor when the
cluster has GPUs) and maps batches of image paths to records. Results come back in input order and
equal the single-process run's: seeds derive from the run seed and each image's pixels, never from
which actor or batch an image lands in. `address="local"` starts a Ray instance on this machine
(what the tests use, on CPU); otherwise pass a cluster address ("auto", "ray://head:10001").
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from selfseg_fast.config import SegmenterConfig, SelfSegConfig, from_dict
from selfseg_fast.errors import SelfSegError


class _PipelineActor:
    """Ray Data callable class: loads the pipeline once, labels a batch of paths per call (one record
    per path: a failing image is its own error record and never fails the batch)."""

    def __init__(self, cfg_dict: dict, pictures: bool = False) -> None:
        from selfseg_fast.pipeline import SelfSegPipeline

        self.pipeline = SelfSegPipeline(from_dict(cfg_dict))
        self.pictures = pictures

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from selfseg_fast.label_records import label_records

        records = [r for _, r in label_records(self.pipeline, [str(p) for p in batch["path"]], self.pictures)]
        return {"index": batch["index"], "record": np.array(records, dtype=object)}


def init_ray(address: str) -> int:
    """Connect to (or start, for "local") a Ray cluster; returns the number of GPUs it has."""
    try:
        import ray
    except ImportError as exc:
        raise SelfSegError("--ray needs Ray Data: pip install 'ray[data]'") from exc
    ray.init(
        address=None if address == "local" else address,
        ignore_reinit_error=True,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    import logging

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return int(ray.cluster_resources().get("GPU", 0))


def label_with_ray(
    paths: list[str], cfg: SelfSegConfig, address: str, actors: int | None = None, *, pictures: bool = False
) -> Iterator[tuple[int, dict]]:
    """(index into `paths`, record) as each batch finishes on the Ray actors (any order), so the caller
    writes results while the cluster works; see `label_records.label_records`."""
    import ray.data

    gpus = init_ray(address)
    n_actors = actors or max(1, gpus)
    dataset = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
    labelled = dataset.map_batches(
        _PipelineActor,
        fn_constructor_args=(cfg.to_dict(), pictures),
        batch_size=max(1, cfg.batch_size),
        concurrency=n_actors,
        num_gpus=1 if gpus else 0,
        batch_format="numpy",
    )
    for row in labelled.iter_rows():
        yield int(row["index"]), row["record"]


# ---- bench: precompute with Ray Data, then score in the ordinary resumable loop --------------------------
class _DescribeSegmentActor:
    """Ray Data callable class: pipeline loaded once; per batch of paths, describe (+ segment with the
    image's own nouns) and return the pieces the benchmark loop needs."""

    def __init__(self, cfg_dict: dict, segment: bool) -> None:
        from selfseg_fast.pipeline import SelfSegPipeline

        self.pipeline = SelfSegPipeline(from_dict(cfg_dict))
        self.segment = segment

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from selfseg_fast.per_image import segment_paths

        results, maps = [], []
        paths = [str(p) for p in batch["path"]]
        if self.segment:
            for outcome in segment_paths(self.pipeline, paths):  # a failing image never fails the batch
                results.append(outcome.description if outcome.ok else None)
                maps.append(outcome.label_map.astype(np.int32) if outcome.ok else None)
        else:
            from selfseg_fast.per_image import describe_paths

            results = list(describe_paths(self.pipeline, paths))
            maps = [None] * len(results)
        return {
            "index": batch["index"],
            "result": np.array(results, dtype=object),
            "label_map": np.array(maps, dtype=object),
        }


def precompute_with_ray(
    paths: list[str], cfg: SelfSegConfig, address: str, *, segment: bool, actors: int | None = None
) -> dict[str, tuple]:
    """{image path: (ImageResult, label map [H, W] or None)} for `paths`, computed by Ray actors."""
    import ray.data

    if not paths:
        return {}
    gpus = init_ray(address)
    start = time.perf_counter()
    dataset = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
    computed = dataset.map_batches(
        _DescribeSegmentActor,
        fn_constructor_args=(cfg.to_dict(), segment),
        batch_size=max(1, cfg.batch_size),
        concurrency=actors or max(1, gpus),
        num_gpus=1 if gpus else 0,
        batch_format="numpy",
    )
    out = {}
    for row in computed.take_all():
        if row["result"] is not None:
            out[paths[int(row["index"])]] = (row["result"], row["label_map"])
    PrecomputedPipeline.last_wall_seconds = time.perf_counter() - start
    return out


class PrecomputedPipeline:
    """The benchmark's pipeline interface over results computed elsewhere (by `precompute_with_ray`);
    an image missing from them (a file that failed to load there) falls back to `fallback`."""

    last_wall_seconds = 0.0  # wall time of the last `precompute_with_ray` pass

    def __init__(self, results: dict[str, tuple], fallback, segmenter_cfg: SegmenterConfig | None = None):
        self.results = results
        self.fallback = fallback
        self.rule = segmenter_cfg or SegmenterConfig()  # which nouns the actors segmented with
        # the benchmark charges each image its share of the distributed pass's wall time
        self.extra_seconds_per_image = self.last_wall_seconds / max(1, len(results))

    def describe(self, images):
        if all(image.path in self.results for image in images):
            return [self.results[image.path][0] for image in images]
        return self.fallback.describe(images)

    def segment(self, images, class_names):
        maps = []
        for image, names in zip(images, class_names):
            hit = self.results.get(image.path)
            if hit is not None and hit[1] is not None and self.rule.first_names(hit[0].nouns) == list(names):
                maps.append(hit[1].astype(np.int64))
            else:
                (label_map,) = self.fallback.segment([image], [names])
                maps.append(label_map)
        return maps
