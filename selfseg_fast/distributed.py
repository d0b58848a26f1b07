"""Data-parallel labelling and benchmarking across GPUs and nodes with Ray Data.

Each Ray actor builds one `SelfSegPipeline` (models loaded once, one GPU per actor when the
cluster has GPUs) and maps batches of image paths to records. Results come back in input order and
equal the single-process run's: seeds derive from the run seed and each image's pixels, never from
which actor or batch an image lands in. `address="local"` starts a Ray instance on this machine
(what the tests use, on CPU); otherwise pass a cluster address ("auto", "ray://head:10001").
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from selfseg_fast.config import SelfSegConfig, from_dict
from selfseg_fast.errors import SelfSegError


class _PipelineActor:
    """Ray Data callable class: loads the pipeline once, labels a batch of paths per call."""

    def __init__(self, cfg_dict: dict) -> None:
        from selfseg_fast.pipeline import SelfSegPipeline

        self.pipeline = SelfSegPipeline(from_dict(cfg_dict))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from selfseg_fast.labelling import label_batch

        records = label_batch(self.pipeline, [str(p) for p in batch["path"]])
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
    return int(ray.cluster_resources().get("GPU", 0))


def label_with_ray(
    paths: list[str], cfg: SelfSegConfig, address: str, actors: int | None = None
) -> Iterator[dict]:
    """Records for `paths` (input order), computed by Ray actors; see `labelling.label_batch`."""
    import ray.data

    gpus = init_ray(address)
    n_actors = actors or max(1, gpus)
    dataset = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
    labelled = dataset.map_batches(
        _PipelineActor,
        fn_constructor_args=(cfg.to_dict(),),
        batch_size=max(1, cfg.batch_size),
        concurrency=n_actors,
        num_gpus=1 if gpus else 0,
        batch_format="numpy",
    )
    rows = sorted(labelled.take_all(), key=lambda row: int(row["index"]))
    for row in rows:
        yield row["record"]
