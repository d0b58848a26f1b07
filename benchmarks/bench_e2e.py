"""End-to-end speed: encoded image file -> decode -> encode -> cluster -> caption -> nouns -> X-Decoder
-> label map, per preset and engine, at each dataset's real image size.

    python benchmarks/bench_e2e.py --weights random --presets voc cityscapes --engines fast reference \
        --batch-size 16 --batches 8 --latency 50 --out benchmarks/e2e_<device>

Images: `--images-from DIR` (image files of a dataset, cycled never: each file is used once), else
synthetic JPEG files of the preset's dataset size (voc 500x375, ade20k 683x512, cityscapes 2048x1024;
smooth regions and noise, a distinct seed per image), decoded inside the timed loop. Every image is
run once: warm-up, timed, latency and counter images are all different (their SHA-256 are recorded and
checked), so nothing comes from a cache that the warm-up filled.

Per (preset, engine), after `--warmup` batches: `--batches` batches of `--batch-size` images through
`SelfSegPipeline.run` (steady state) give images/s and, per stage, host ms (wall clock of the thread
that ran the stage: decode on a loader thread that decodes batch i+1 while batch i runs (or inline with
`--decode-workers 0`); encode, cluster, caption on the launching thread; nouns on the host-stage
thread; segment and label_map on the segmenter's thread in the fast engine) and device ms (CUDA events;
"n/a" on a CPU); stages on different threads overlap, so their sum can exceed the wall time. Then
`--latency` single-image calls on new images give p50 / p99 latency (nearest-rank order statistics of
the measured values: p99 of fewer than 100 calls is the slowest call), and one more batch runs under
`OpCounter` (ops, launches, host syncs per stage; counting slows it, so it is not timed). FLOPs per
stage come from `selfseg_fast.flops`; achieved TFLOP/s = FLOPs / device time (CPU: / host time), and
the share of the device's dense fp16 peak where the device is in `PEAK_TFLOPS`.

Writes DIR/e2e.json and DIR/e2e.md (tables with the device, torch, transformers and commit).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfseg_fast import flops, timing
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.counters import OpCounter
from selfseg_fast.images import load_image_bytes

# Dataset image sizes (height, width): VOC's typical 500 x 375 (landscape), ADE20K's median 683 x 512,
# Cityscapes' 2048 x 1024.
DATASET_SIZES = {"voc": (375, 500), "ade20k": (512, 683), "cityscapes": (1024, 2048)}
# Dense fp16/bf16 tensor-core peak, TFLOP/s (vendor data sheets, no sparsity), by device-name substring.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,  # the SXM part's name as torch reports it
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
}
STAGES = ("decode", "encode", "cluster", "caption", "nouns", "segment", "label_map")


# ---- images ---------------------------------------------------------------------------------------------
def synthetic_jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A photo-like JPEG of `size` (h, w): a few smooth regions and noise, so k-means and the CRF see
    structure; every seed gives different pixels."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.ogrid[0:h, 0:w]
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = rng.uniform(0, 255, 3)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(min(h, w) / 8, min(h, w) / 2)
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
    rgb += rng.normal(0, 8, (h, w, 1)).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


class ImageSource:
    """Encoded images, each handed out once (`take`): dataset files, or synthetic ones of a size."""

    def __init__(self, size: tuple[int, int], folder: str | None, seed: int) -> None:
        self.size, self.seed, self.next = size, seed, 0
        self.files = sorted(p for p in Path(folder).iterdir() if p.is_file()) if folder else None
        self.hashes: dict[str, list[str]] = {}

    def take(self, n: int, purpose: str) -> list[tuple[str, bytes]]:
        out = []
        for _ in range(n):
            i, self.next = self.next, self.next + 1
            if self.files is not None:
                if i >= len(self.files):
                    raise SystemExit(f"--images-from has {len(self.files)} files; this run needs more")
                out.append((self.files[i].name, self.files[i].read_bytes()))
            else:
                out.append(
                    (f"synthetic_{self.seed}_{i}.jpg", synthetic_jpeg(self.size, self.seed * 100003 + i))
                )
        self.hashes.setdefault(purpose, []).extend(hashlib.sha256(data).hexdigest() for _, data in out)
        return out

    def unseen_check(self) -> dict:
        """Every image used once: no hash twice, none of the warm-up's among the measured ones."""
        every = [h for hashes in self.hashes.values() for h in hashes]
        warm = set(self.hashes.get("warmup", []))
        measured = [h for purpose, hashes in self.hashes.items() if purpose != "warmup" for h in hashes]
        return {
            "images": len(every),
            "distinct": len(set(every)),
            "warmup_images_measured_again": len(warm & set(measured)),
            "by_purpose": {purpose: len(hashes) for purpose, hashes in self.hashes.items()},
        }


def decode(files: list[tuple[str, bytes]]):
    with timing.timed("decode"):
        return [load_image_bytes(data, name) for name, data in files]


# ---- measurement ----------------------------------------------------------------------------------------
def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile as a measured value: the ceil(q * n)-th smallest (never beyond the slowest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def peak_tflops(device: str) -> float | None:
    return next((peak for name, peak in PEAK_TFLOPS.items() if name in device), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def stage_flops(pipe, results, images) -> dict[str, float]:
    """FLOPs per image of encode, caption and segment for these results (means over the images)."""
    cfg = pipe.cfg
    blip = pipe.engine.blip.model.config
    encode = flops.encode_flops(flops.VitShape.of(blip.vision_config), tuple(cfg.encoder.resolutions))
    text = flops.TextShape.of(blip.text_config)
    tokenizer = pipe.engine.blip.tokenizer
    prefix = 1 + len(tokenizer(cfg.caption.prompt, add_special_tokens=False)["input_ids"])
    image_tokens = (max(cfg.encoder.resolutions) // blip.vision_config.patch_size) ** 2
    caption, segment = [], []
    variant = "tiny" if cfg.weights == "random-tiny" else cfg.segmenter.variant
    seg = pipe.segmenter
    for result, image in zip(results, images):
        texts = [c for caps in result.description.captions.values() for c in caps]
        if texts:
            lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
            caption.append(
                flops.caption_image_flops(
                    text,
                    clusters=len(result.description.captions),
                    cycles=cfg.caption.cycles,
                    tokens=float(np.mean(lengths)),
                    prefix=prefix,
                    image_tokens=image_tokens,
                    max_new_tokens=cfg.caption.max_new_tokens,
                )
            )
        h, w = seg.test_size(*image.rgb.shape[:2])
        segment.append(flops.xdecoder_flops(-(-h // 32) * 32, -(-w // 32) * 32, variant))
    return {
        "encode": float(encode),
        "caption": float(np.mean(caption)) if caption else 0.0,
        "segment": float(np.mean(segment)),
    }


def summarise(records: list[timing.StageRecord], n_images: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in records:
        row = out.setdefault(r.stage, {"host_ms": 0.0, "device_ms": None, "threads": []})
        row["host_ms"] += 1000 * r.host_s / n_images
        if r.device_s is not None:
            row["device_ms"] = (row["device_ms"] or 0.0) + 1000 * r.device_s / n_images
        if r.thread not in row["threads"]:
            row["threads"].append(r.thread)
    return out


def measure(preset: str, engine: str, args: argparse.Namespace, size: tuple[int, int], seed: int) -> dict:
    from selfseg_fast.pipeline import SelfSegPipeline

    overrides = {"weights": args.weights, "engine": engine, "batch_size": args.batch_size}
    if args.device:
        overrides["device"] = args.device
    overrides.update(dict(_parse_set(s) for s in args.set))
    pipe = SelfSegPipeline(SelfSegConfig.from_preset(preset).with_overrides(overrides)).load()
    device, source = pipe.device, ImageSource(size, args.images_from, seed)
    cuda = device.type == "cuda"
    for _ in range(args.warmup):
        pipe.run(decode(source.take(args.batch_size, "warmup")))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timed_files = [source.take(args.batch_size, "timed") for _ in range(args.batches)]
    results, images = [], []
    decoder = ThreadPoolExecutor(max(1, args.decode_workers), thread_name_prefix="decode")
    with timing.recording() as recorder:
        start = time.perf_counter()
        if args.decode_workers:  # a data loader: batch i+1 is decoded while batch i runs
            upcoming = decoder.submit(decode, timed_files[0])
            for i in range(len(timed_files)):
                loaded = upcoming.result()
                if i + 1 < len(timed_files):
                    upcoming = decoder.submit(decode, timed_files[i + 1])
                results += pipe.run(loaded)
                images += loaded
        else:
            for files in timed_files:
                loaded = decode(files)
                results += pipe.run(loaded)
                images += loaded
        wall = time.perf_counter() - start  # run() returns host label maps: the device work is done
    decoder.shutdown()
    n = len(results)
    stages = summarise(recorder.take(), n)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    latencies = []
    for _ in range(args.latency):
        files = source.take(1, "latency")
        began = time.perf_counter()
        pipe.run(decode(files))
        latencies.append(1000 * (time.perf_counter() - began))
    counters = None
    if args.counters:
        loaded = decode(source.take(args.batch_size, "counters"))
        with OpCounter(record_sites=False) as counter, timing.stage_hook(counter.stage):
            described = pipe.describe(loaded)  # the segmenter on this thread too, so its ops are seen
            cap = pipe.segmenter.sc.max_names  # as run() does: at most max_names names per image
            pipe.segment(loaded, [r.nouns[:cap] or ["thing"] for r in described])
        counters = {s: c.as_dict() for s, c in counter.totals.items() if s != "total"}
    work = stage_flops(pipe, results, images)
    name = device_name(device)
    peak_rate = peak_tflops(name) if cuda else None
    for stage, row in stages.items():
        f = work.get(stage)
        basis = row["device_ms"] if row["device_ms"] is not None else row["host_ms"]
        row["tflop_per_image"] = None if f is None else f / 1e12
        row["achieved_tflops"] = None if f is None or not basis else f / (basis / 1000) / 1e12
        row["pct_of_peak"] = (
            None
            if row["achieved_tflops"] is None or peak_rate is None
            else 100 * row["achieved_tflops"] / peak_rate
        )
    return {
        "preset": preset,
        "engine": engine,
        "image_size": list(size),
        "batch_size": args.batch_size,
        "batches": args.batches,
        "images": n,
        "wall_s": wall,
        "images_per_s": n / wall,
        "ms_per_image": 1000 * wall / n,
        "stages": stages,
        "tflop_per_image": sum(work.values()) / 1e12,
        "latency": {
            "calls": len(latencies),
            "p50_ms": nearest_rank(latencies, 0.50) if latencies else None,
            "p99_ms": nearest_rank(latencies, 0.99) if latencies else None,
            "min_ms": min(latencies, default=None),
            "max_ms": max(latencies, default=None),
            "values_ms": latencies,
        },
        "peak_gpu_mem_gib": peak,
        "counters_per_batch": counters,
        "nouns_per_image": float(np.mean([len(r.class_names) for r in results])),
        "unseen": source.unseen_check(),
        "device": name,
        "peak_tflops": peak_rate,
    }


def _parse_set(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _meta(args: argparse.Namespace, rows: list[dict]) -> dict:
    import transformers

    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "device": rows[0]["device"] if rows else "",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "commit": commit,
        "weights": args.weights,
        "set": args.set,
        "peak_tflops": rows[0]["peak_tflops"] if rows else None,
    }


# ---- output ---------------------------------------------------------------------------------------------
def _f(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [" | ".join(f"{k} {v}" for k, v in meta.items() if k != "set"), ""]
    ref = {r["preset"]: r["images_per_s"] for r in rows if r["engine"] == "reference"}
    lines += [
        "| preset | engine | image | batch x batches | img/s | x reference | ms/img (wall) | p50 ms | p99 ms "
        "| latency calls | peak GPU GiB | TFLOP/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency"]
        x_ref = r["images_per_s"] / ref[r["preset"]] if r["preset"] in ref else None
        lines.append(
            f"| {r['preset']} | {r['engine']} | {r['image_size'][1]}x{r['image_size'][0]} | "
            f"{r['batch_size']} x {r['batches']} | {r['images_per_s']:.3g} | {_f(x_ref)} | "
            f"{r['ms_per_image']:.1f} | {_f(lat['p50_ms'])} | {_f(lat['p99_ms'])} | {lat['calls']} | "
            f"{_f(r['peak_gpu_mem_gib'], 2)} | {r['tflop_per_image']:.3f} |"
        )
    lines += [
        "",
        "Per stage, per image (host: wall ms of the thread that ran it; device: CUDA events; stages on other "
        "threads overlap the launching thread's):",
        "",
        "| preset | engine | stage | thread | host ms | device ms | TFLOP/img | achieved TFLOP/s | % of peak "
        "| ops / launches / syncs per batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for stage in sorted(r["stages"], key=lambda s: STAGES.index(s) if s in STAGES else 99):
            row = r["stages"][stage]
            c = (r["counters_per_batch"] or {}).get(stage)
            counts = f"{c['ops']} / {c['launches']} / {c['syncs']}" if c else "-"
            lines.append(
                f"| {r['preset']} | {r['engine']} | {stage} | {', '.join(row['threads'])} | "
                f"{row['host_ms']:.1f} | {_f(row['device_ms'])} | {_f(row['tflop_per_image'], 3)} | "
                f"{_f(row['achieved_tflops'], 2)} | {_f(row['pct_of_peak'])} | {counts} |"
            )
    return "\n".join(lines) + "\n"


def _write(args: argparse.Namespace, rows: list[dict]) -> str:
    meta = _meta(args, rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(meta, rows)
    (out / "e2e.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default="random", choices=["pretrained", "random", "random-tiny"])
    parser.add_argument("--presets", nargs="+", default=["voc", "cityscapes"], choices=list(DATASET_SIZES))
    parser.add_argument("--engines", nargs="+", default=["fast", "reference"], choices=["fast", "reference"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="timed batches (steady state)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up batches (never timed, never reused)")
    parser.add_argument("--latency", type=int, default=50, metavar="N", help="single-image calls for p50/p99")
    parser.add_argument(
        "--no-counters", dest="counters", action="store_false", help="skip the OpCounter batch"
    )
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=1,
        metavar="N",
        help="decode the next batch on a worker thread while this one runs (0: on the launching thread)",
    )
    parser.add_argument("--size", metavar="HxW", help="image size for every preset instead of the dataset's")
    parser.add_argument(
        "--images-from", metavar="DIR", help="a dataset's image files instead of synthetic ones"
    )
    parser.add_argument("--device", help="cpu or cuda[:N] (default: the config's choice)")
    parser.add_argument("--reference-batches", type=int, help="timed batches for the reference engine")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default="benchmarks/e2e", help="folder for e2e.json and e2e.md")
    args = parser.parse_args(argv)
    rows = []
    for p, preset in enumerate(args.presets):
        size = tuple(int(v) for v in args.size.split("x")) if args.size else DATASET_SIZES[preset]
        for e, engine in enumerate(args.engines):
            run_args = argparse.Namespace(**vars(args))
            if engine == "reference" and args.reference_batches:
                run_args.batches = args.reference_batches
            rows.append(measure(preset, engine, run_args, size, seed=1 + 10 * p + e))
            r = rows[-1]
            print(f"{preset} {engine}: {r['images_per_s']:.3g} img/s, p50 {_f(r['latency']['p50_ms'])} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
            table = _write(args, rows)  # after every row: a long run keeps what it measured
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
