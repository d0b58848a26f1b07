"""Reference vs fast engine on the same images and weights: images/s end to end and ms per stage.

    python benchmarks/bench_engines.py --weights random --presets voc cityscapes \
        --batch-sizes 1 8 32 64 --images 64 --out benchmarks/results.csv

`--weights random` gives the full-size models with seeded random weights (same FLOPs as trained
ones), so this runs offline. Each (engine, preset, batch size) is measured after a warm-up batch;
the reference engine runs on `--reference-images` images only (it is slow) and its images/s is
compared per image. Rows go to a CSV and a Markdown table with the device, torch version and commit.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.engines.base import build_engine
from selfseg_fast.images import LoadedImage


def synthetic_images(n: int, seed: int = 0, size: tuple[int, int] = (480, 640)) -> list[LoadedImage]:
    """Photo-sized images with a few smooth regions (k-means and the CRF see structure, not noise)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    images = []
    for i in range(n):
        rgb = np.zeros((h, w, 3), np.float32)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(60, 240)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            rgb[mask] = rng.uniform(0, 255, 3)
        rgb += rng.normal(0, 8, rgb.shape)
        images.append(LoadedImage(f"synthetic_{i}.png", rgb.clip(0, 255).astype(np.uint8), "RGB", (w, h)))
    return images


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure(cfg: SelfSegConfig, images: list[LoadedImage], repeats: int) -> dict:
    """Warm up on one batch, then time `repeats` passes over `images`."""
    engine = build_engine(cfg)
    engine.describe(images[: max(1, cfg.batch_size)])  # warm-up: kernels, caches, allocator
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    walls, stage_totals = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        results = engine.describe(images)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        for result in results:
            for stage, sec in result.stage_seconds.items():
                stage_totals[stage] = stage_totals.get(stage, 0.0) + sec
    wall = statistics.median(walls)
    n = len(images) * repeats
    return {
        "images_per_s": len(images) / wall,
        "ms_per_image": 1000 * wall / len(images),
        **{f"ms_{stage}": 1000 * sec / n for stage, sec in stage_totals.items()},
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "nouns_per_image": statistics.mean(len(r.nouns) for r in results),
    }


def measure_latency(cfg: SelfSegConfig, images: list[LoadedImage], n: int) -> dict:
    """Single-image latency: one image per call, `n` calls after a warm-up; p50 / p99 in ms."""
    engine = build_engine(cfg.with_overrides({"batch_size": 1}))
    engine.describe(images[:1])
    times = []
    for i in range(n):
        start = time.perf_counter()
        engine.describe([images[i % len(images)]])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    q = np.percentile(times, [50, 99])
    return {"latency_p50_ms": float(q[0]), "latency_p99_ms": float(q[1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default="random", choices=["pretrained", "random", "random-tiny"])
    parser.add_argument("--presets", nargs="+", default=["voc", "cityscapes"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--images", type=int, default=64, help="images per timed pass (fast engine)")
    parser.add_argument("--reference-images", type=int, default=4, help="images for the reference engine")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["reference", "fast"])
    parser.add_argument("--out", default="benchmarks/results.csv")
    parser.add_argument(
        "--latency", type=int, default=0, metavar="N", help="also measure single-image latency over N calls"
    )
    args = parser.parse_args(argv)

    images = synthetic_images(max(args.images, args.reference_images))
    rows = []
    for preset in args.presets:
        for engine in args.engines:
            sizes = [1] if engine == "reference" else args.batch_sizes
            for batch in sizes:
                cfg = SelfSegConfig.from_preset(preset).with_overrides(
                    {"weights": args.weights, "engine": engine, "batch_size": batch}
                )
                subset = images[: args.reference_images if engine == "reference" else args.images]
                row = {
                    "preset": preset,
                    "engine": engine,
                    "batch": batch,
                    **measure(cfg, subset, args.repeats),
                }
                if args.latency and batch == 1:
                    row.update(measure_latency(cfg, subset, args.latency))
                rows.append(row)
                print(_format_row(row), file=sys.stderr, flush=True)
    meta = {
        "device": device_name(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "weights": args.weights,
    }
    _write(rows, meta, Path(args.out))
    return 0


def _format_row(row: dict) -> str:
    return (
        f"{row['preset']:<10} {row['engine']:<9} batch {row['batch']:>3}: {row['images_per_s']:8.2f} img/s  "
        + " ".join(
            f"{k[3:]}={v:.1f}ms" for k, v in row.items() if k.startswith("ms_") and k != "ms_per_image"
        )
    )


def _write(rows: list[dict], meta: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("preset", "engine", "batch"), k))
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*meta, *keys])
        writer.writeheader()
        for row in rows:
            writer.writerow({**meta, **row})
    ref = {r["preset"]: r["images_per_s"] for r in rows if r["engine"] == "reference"}
    lines = [
        " | ".join(f"{key} {value}" for key, value in meta.items()),
        "",
    ]
    lines.append(
        "| preset | engine | batch | images/s | x reference | ms/image | encode | cluster | caption | nouns "
        "| p50 latency ms | peak GiB |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = r["images_per_s"] / ref[r["preset"]] if r["preset"] in ref else float("nan")
        stages = " | ".join(
            f"{r.get('ms_' + s, float('nan')):.1f}" for s in ("encode", "cluster", "caption", "nouns")
        )
        lines.append(
            f"| {r['preset']} | {r['engine']} | {r['batch']} | {r['images_per_s']:.2f} | {speedup:.1f} | "
            f"{r['ms_per_image']:.1f} | {stages} | {r.get('latency_p50_ms', float('nan')):.1f} | "
            f"{r['peak_mem_gib']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
