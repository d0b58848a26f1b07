"""Per-stage op, launch and host-sync counts of the fast path, and host milliseconds per image (CPU).

    python benchmarks/stage_counters.py [--out benchmarks/stage_counters.json]

Counts come from `selfseg_fast.counters.OpCounter` (properties of the code, so they hold on any
device); the models are the random-tiny ones (counts of model stages scale with the number of layers,
the structure is what matters). Stage attribution: every `StageTimer` stage of the engine and the
pipeline also becomes an `OpCounter` stage. Rows:

- per stage and batch size: ops, launches, syncs per batch (B images), launches per image;
- caption: dispatched ops per generated token (difference of two runs that decode 4 and 12 tokens);
- host milliseconds per image of the host work (image preparation, nouns of 160 captions, caption
  decoding, the segmenter's resize), measured on the calling thread with wall-clock time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from selfseg_fast import timing
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.counters import OpCounter
from selfseg_fast.images import LoadedImage

NAMES = ["road", "car", "tree", "sky", "person"]


def images(n: int, size: tuple[int, int], seed: int = 0) -> list[LoadedImage]:
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        rgb = np.full((h, w, 3), rng.uniform(0, 255, 3), np.float32)
        for _ in range(3):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 8, h / 2)
            rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
        rgb += rng.normal(0, 6, rgb.shape)
        out.append(LoadedImage(f"img{i}.png", rgb.clip(0, 255).astype(np.uint8), "RGB", (w, h)))
    return out


@contextlib.contextmanager
def counted_stages(counter: OpCounter):
    """Every StageTimer stage also becomes an OpCounter stage while this is active."""
    original = timing.StageTimer.__call__

    @contextlib.contextmanager
    def both(self, stage):
        with counter.stage(stage), original(self, stage):
            yield

    timing.StageTimer.__call__ = both
    try:
        yield
    finally:
        timing.StageTimer.__call__ = original


def build_pipeline(overrides: dict):
    from selfseg_fast.pipeline import SelfSegPipeline

    base = {
        "weights": "random-tiny",
        "engine": "fast",
        "device": "cpu",
        "segmenter.test_short_side": 96,
        "nouns.workers": 0,
    }
    cfg = SelfSegConfig.from_preset("voc").with_overrides(base | overrides)
    return SelfSegPipeline(cfg)


def stage_counts(cycles: int, batch: int) -> dict:
    pipe = build_pipeline({"caption.cycles": cycles, "batch_size": batch})
    imgs = images(batch, (120, 160))
    pipe.describe(imgs)  # warm-up (caches: captions, text embeddings of the names)
    pipe.segment(imgs, [NAMES] * batch)
    with OpCounter(record_sites=False) as counter, counted_stages(counter):
        pipe.describe(imgs)
        with counter.stage("segment"):
            pipe.segment(imgs, [NAMES] * batch)
    return {stage: c.as_dict() for stage, c in counter.totals.items() if stage != "total"}


def caption_ops_per_token(batch: int, cycles: int) -> float:
    def ops(tokens: int) -> int:
        pipe = build_pipeline(
            {
                "caption.cycles": cycles,
                "batch_size": batch,
                "caption.min_new_tokens": tokens,
                "caption.max_new_tokens": tokens,
            }
        )
        imgs = images(batch, (120, 160))
        with OpCounter(record_sites=False) as counter, counted_stages(counter):
            pipe.describe(imgs)
        return counter.get("caption").ops

    return (ops(12) - ops(4)) / 8


def host_ms() -> dict:
    """Milliseconds per image of each piece of host work: the work itself, and what of it lands on the
    thread that launches the device work (or, for spaCy, on the main process: its GIL)."""
    import torch

    from selfseg_fast.models.vocab import synthetic_blip_tokenizer
    from selfseg_fast.plan import resolve_plan
    from selfseg_fast.stages.caption import decode_captions
    from selfseg_fast.stages.nouns import NounExtractor
    from selfseg_fast.stages.prepare import HostPrep

    out = {}
    cfg = SelfSegConfig.from_preset("cityscapes").with_overrides({"weights": "random-tiny", "engine": "fast"})
    plan = resolve_plan(cfg, "cpu")
    inline = HostPrep(0, cfg.encoder.resolutions, dataclasses.replace(plan, prep_workers=0))
    threaded = HostPrep(0, cfg.encoder.resolutions, plan)
    for name, size in (("voc 480x640", (480, 640)), ("cityscapes 1024x2048", (1024, 2048))):
        imgs = images(4, size)
        start = time.perf_counter()
        inline.prepare(imgs)
        out[f"image prep (2 resizes + pixel CRC), {name}: work"] = (time.perf_counter() - start) * 1e3 / 4
        start = time.perf_counter()
        pending = threaded.submit(imgs)
        out[f"image prep, {name}: on the launching thread"] = (time.perf_counter() - start) * 1e3 / 4
        pending.result()
    segmenter = build_pipeline({"segmenter.test_short_side": 1024}).segmenter
    rgb = images(1, (1024, 2048))[0].rgb
    segmenter.preprocess(rgb[:64, :64])
    start = time.perf_counter()
    segmenter.preprocess(rgb)
    out["segmenter resize, cityscapes 1024x2048: work (on the segmenter's worker thread)"] = (
        time.perf_counter() - start
    ) * 1e3
    tok = synthetic_blip_tokenizer()
    rng = random.Random(0)
    words = [tok.convert_ids_to_tokens(i) for i in range(2000, 2400)] + ["a", "the", "of", "on", "with"]
    per_image = 160  # cityscapes: 8 clusters x 20 cycles

    def captions(n):
        return [[" ".join(rng.choice(words) for _ in range(12)) for _ in range(per_image)] for _ in range(n)]

    inproc = NounExtractor(cfg.nouns)
    start = time.perf_counter()
    for c in captions(3):
        inproc.nouns_for_many([c])
    out["nouns of 160 new captions: work (main process)"] = (time.perf_counter() - start) * 1e3 / 3
    pooled = NounExtractor(cfg.nouns, workers=plan.noun_workers)
    pooled.nouns_for_many(captions(1))  # start the worker processes
    start, cpu = time.perf_counter(), time.process_time()
    for c in captions(3):
        pooled.nouns_for_many([c])
    out["nouns of 160 new captions, worker processes: main-process CPU"] = (
        (time.process_time() - cpu) * 1e3 / 3
    )
    out["nouns of 160 new captions, worker processes: wall"] = (time.perf_counter() - start) * 1e3 / 3
    ids = torch.randint(104, 30000, (per_image, 26)).numpy()
    start = time.perf_counter()
    for _ in range(3):
        decode_captions(tok, ids, cfg.caption)
    out["caption decode, 160 x 26 tokens (fast tokenizer, host-stage thread)"] = (
        (time.perf_counter() - start) * 1e3 / 3
    )
    return {k: round(v, 2) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="write the numbers as JSON")
    args = parser.parse_args(argv)
    result: dict = {"stages": {}, "caption_ops_per_token": {}, "host_ms_per_image": host_ms()}
    for cycles in (1, 20):
        for batch in (1, 4):
            result["stages"][f"cycles={cycles} B={batch}"] = stage_counts(cycles, batch)
    for batch, cycles in ((1, 1), (4, 1), (4, 5)):
        result["caption_ops_per_token"][f"B={batch} cycles={cycles}"] = caption_ops_per_token(batch, cycles)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
