"""Fixed vs adaptive caption cycles (issue 15.2): images/s of `describe`, names per image, caption cycles
run per cluster, and how many of the fixed run's names the adaptive run keeps.

    python benchmarks/adaptive_cycles.py --preset cityscapes --images 4 --patience 0 1 2 4 [--pool 12]

Fast engine, `weights` random-tiny by default (CPU). Random weights caption with random words, so a
cluster meets new nouns in nearly every cycle and patience rarely fires: the real-noun rows show the
cost of the mechanism more than its gain. `--pool K` adds rows where every noun the extractor finds is
hashed onto a fixed pool of K names (a stub noun pool, as trained captions repeat their nouns): there
the pool is exhausted after a few cycles and the adaptive run stops early with the same names.
Patience 0 is the paper's fixed cycles. `describe` only (BCC + nouns): segmentation does not depend
on the number of cycles, only on the names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.images import LoadedImage


def test_images(n: int, seed: int = 0) -> list[LoadedImage]:
    """Photo-like images: a few flat regions of random colours plus noise (240 x 320)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 240, 320
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.full((h, w, 3), rng.uniform(0, 255, 3), np.float32)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 120)
            rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
        rgb += rng.normal(0, 6, rgb.shape)
        out.append(LoadedImage(f"img{i}.png", rgb.clip(0, 255).astype(np.uint8), "RGB", (w, h)))
    return out


def pooled(extractor, pool: int) -> None:
    """Map every noun the extractor finds onto one of `pool` names (stable hash), in place."""
    real = extractor.nouns_for_many

    def nouns_for_many(caption_lists, **kwargs):
        found = real(caption_lists, **kwargs)
        return [list(dict.fromkeys(f"name{zlib.crc32(n.encode()) % pool}" for n in nouns)) for nouns in found]

    extractor.nouns_for_many = nouns_for_many


def measure(cfg: SelfSegConfig, images: list[LoadedImage], pool: int | None, repeats: int) -> dict:
    from selfseg_fast.pipeline import SelfSegPipeline

    pipeline = SelfSegPipeline(cfg)
    pipeline.describe(images[:1])  # load and warm up
    if pool:
        pooled(pipeline.engine.nouns, pool)
    seconds = []
    for _ in range(repeats):
        pipeline.engine.nouns._cache.clear()  # every run tags its captions (no answers from a repeat)
        start = time.perf_counter()
        results = pipeline.describe(images)
        seconds.append(time.perf_counter() - start)
    cycles = [len(caps) for r in results for caps in r.captions.values()]
    return {
        "images_per_s": len(images) / min(seconds),
        "names_per_image": float(np.mean([len(r.nouns) for r in results])),
        "cycles_per_cluster": float(np.mean(cycles)),
        "clusters_per_image": len(cycles) / len(images),
        "names": [r.nouns for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cityscapes")
    parser.add_argument("--weights", default="random-tiny", choices=["random", "random-tiny", "pretrained"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--patience", nargs="+", type=int, default=[0, 1, 2, 4])
    parser.add_argument("--pool", type=int, default=None, help="also measure with a stub pool of K names")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (the fastest counts)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    base = SelfSegConfig.from_preset(args.preset).with_overrides(
        {"weights": args.weights, "engine": "fast", "batch_size": max(args.images, 1)}
    )
    images = test_images(args.images)
    measure(base, images, None, 1)  # process-wide warm-up (noun worker processes, kernels), not reported
    rows = []
    for pool in [None, args.pool] if args.pool else [None]:
        fixed_names = None
        for patience in args.patience:
            cfg = base.with_overrides({"caption.adaptive_patience": patience})
            row = measure(cfg, images, pool, args.repeats)
            if patience == 0:
                fixed_names = row["names"]
            kept = (
                np.mean([len(set(a) & set(f)) / max(1, len(f)) for a, f in zip(row["names"], fixed_names)])
                if fixed_names is not None
                else float("nan")
            )
            row.update(pool=pool, patience=patience, kept_of_fixed=float(kept))
            rows.append(row)
            print(
                f"nouns {'real' if not pool else f'pool of {pool}'}, patience {patience or 'off (fixed)'}: "
                f"{row['images_per_s']:.3f} images/s, {row['names_per_image']:.1f} names/image, "
                f"{row['cycles_per_cluster']:.1f} cycles/cluster, {100 * kept:.0f}% of the fixed names",
                flush=True,
            )
    print()
    print(f"preset {args.preset} ({base.caption.cycles} cycles), weights {args.weights}, fast engine, "
          f"{args.images} images of 240x320 in one batch, describe only")  # fmt: skip
    print("| nouns | patience | images/s | names/image | cycles/cluster | fixed names kept |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        nouns = f"stub pool of {r['pool']}" if r["pool"] else "real (random words)"
        print(
            f"| {nouns} "
            f"| {r['patience'] or 'off (fixed)'} | {r['images_per_s']:.3f} | {r['names_per_image']:.1f} "
            f"| {r['cycles_per_cluster']:.1f} | {100 * r['kept_of_fixed']:.0f}% |"
        )
    if args.json:
        from selfseg_fast.provenance import provenance

        slim = [{k: v for k, v in r.items() if k != "names"} for r in rows]
        text = json.dumps({"provenance": provenance(), "rows": slim}, indent=1, default=str)
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
