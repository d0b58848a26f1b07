"""End-to-end speed, as `selfseg-fast bench --speed` and `benchmarks/bench_e2e.py` measure it:
encoded image file -> decode -> encode -> cluster -> caption -> nouns -> X-Decoder -> label map.

Images: a dataset's own files (each used once), else synthetic JPEGs of the dataset's real size
(`DATASET_SIZES`; smooth regions and noise, a distinct seed per image), decoded inside the timed loop.
Every image runs once: warm-up, timed, latency and counter images all differ (their SHA-256 are
recorded and checked), so nothing comes from a cache that the warm-up filled.

After `warmup` batches: `batches` batches of `batch_size` images through `SelfSegPipeline.run` (steady
state) give images/s and, per stage, host ms (wall clock of the thread that ran the stage: decode on a
loader thread that decodes batch i+1 while batch i runs, or inline with `decode_workers=0`; encode,
cluster, caption on the launching thread; nouns on the host-stage thread; segment and label_map on the
segmenter's thread in the fast engine) and device ms (CUDA events; None on a CPU); stages on different
threads overlap, so their sum can exceed the wall time. Then `latency` single-image calls on new images
give p50 / p99 (nearest-rank order statistics of the measured values: p99 of fewer than 100 calls is
the slowest call), and one more batch runs under `OpCounter` (ops, launches, host syncs per stage;
counting slows it, so it is not timed). FLOPs per stage come from `selfseg_fast.flops`; achieved
TFLOP/s = FLOPs / device time (CPU: / host time), and the share of the device's dense fp16 peak where
the device is in `PEAK_TFLOPS`.
"""

from __future__ import annotations

import hashlib
import io
import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfseg_fast import flops, timing
from selfseg_fast.atomic_files import write_bytes_atomic, write_json_atomic
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.counters import OpCounter
from selfseg_fast.errors import SelfSegError
from selfseg_fast.images import load_image_bytes
from selfseg_fast.provenance import package_commit

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


@dataclass
class SpeedSettings:
    """How much to run: warm-up and timed batches, single-image latency calls, the counted batch."""

    batch_size: int = 16
    batches: int = 8  # timed batches (steady state)
    warmup: int = 2  # warm-up batches (never timed, their images never reused)
    latency: int = 50  # single-image calls for p50 / p99
    counters: bool = True  # one more batch under OpCounter
    decode_workers: int = 1  # >= 1: decode batch i+1 on a loader thread while batch i runs; 0: inline

    def problems(self) -> list[str]:
        """One phrase per bad value, named as the CLI flag (empty: fine)."""
        out = []
        for name, low in (("batch_size", 1), ("batches", 1), ("warmup", 0), ("latency", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                what = "a positive whole number" if low else "a whole number >= 0"
                out.append(f"--{name.replace('_', '-')} {value}: expected {what}")
        if not isinstance(self.decode_workers, int) or self.decode_workers < 0:
            out.append(f"--decode-workers {self.decode_workers}: expected 0 (inline) or 1 (a loader thread)")
        return out

    def images_needed(self) -> int:
        """Distinct images one measurement takes (each is used once)."""
        counted = self.batch_size if self.counters else 0
        return (self.warmup + self.batches) * self.batch_size + self.latency + counted


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W), positive; a one-line SelfSegError otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SelfSegError(f"--size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 1024x2048") from None
    if h < 1 or w < 1:
        raise SelfSegError(f"--size {text!r}: expected positive sizes, e.g. 1024x2048")
    return h, w


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
    """Encoded images, each handed out once (`take`): the given files in order, or synthetic ones of
    `size` (files None). `what` names the files' origin in the error when there are too few."""

    def __init__(
        self, size: tuple[int, int], files: list[Path] | None, seed: int, what: str = "the image folder"
    ) -> None:
        self.size, self.seed, self.next, self.what = size, seed, 0, what
        self.files = files
        self.hashes: dict[str, list[str]] = {}

    @classmethod
    def from_folder(cls, size: tuple[int, int], folder: str | None, seed: int) -> ImageSource:
        """The files of `folder` (sorted by name), or synthetic images when `folder` is None."""
        if folder is None:
            return cls(size, None, seed)
        if not Path(folder).is_dir():
            raise SelfSegError(f"{folder}: not a folder of image files")
        return cls(size, sorted(p for p in Path(folder).iterdir() if p.is_file()), seed, folder)

    def check(self, needed: int) -> None:
        """A one-line error, before any model loads, when there are fewer files than one run uses."""
        if self.files is not None and len(self.files) < needed:
            raise SelfSegError(
                f"{self.what}: {len(self.files)} images, this run uses {needed} (each once); "
                "lower --batches, --warmup, --latency or --batch-size"
            )

    def take(self, n: int, purpose: str) -> list[tuple[str, bytes]]:
        out = []
        for _ in range(n):
            i, self.next = self.next, self.next + 1
            if self.files is not None:
                self.check(i + 1)
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
            "sha256_by_purpose": {purpose: list(hashes) for purpose, hashes in self.hashes.items()},
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


def measure(cfg: SelfSegConfig, settings: SpeedSettings, source: ImageSource, preset: str) -> dict:
    """One row: `cfg` (its engine, weights, device) on `source`'s images, as the module docstring says.
    The batch size is `settings.batch_size` (it replaces the config's)."""
    from selfseg_fast.pipeline import SelfSegPipeline

    s = settings
    source.check(s.images_needed())
    pipe = SelfSegPipeline(cfg.with_overrides({"batch_size": s.batch_size})).load()
    device = pipe.device
    cuda = device.type == "cuda"
    for _ in range(s.warmup):
        pipe.run(decode(source.take(s.batch_size, "warmup")))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timed_files = [source.take(s.batch_size, "timed") for _ in range(s.batches)]
    results, images = [], []
    decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")
    with timing.recording() as recorder:
        start = time.perf_counter()
        if s.decode_workers:  # a data loader: batch i+1 is decoded while batch i runs
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
    for _ in range(s.latency):
        files = source.take(1, "latency")
        began = time.perf_counter()
        pipe.run(decode(files))
        latencies.append(1000 * (time.perf_counter() - began))
    counters = None
    if s.counters:
        loaded = decode(source.take(s.batch_size, "counters"))
        with OpCounter(record_sites=False) as counter, timing.stage_hook(counter.stage):
            described = pipe.describe(loaded)  # the segmenter on this thread too, so its ops are seen
            rule = pipe.cfg.segmenter  # as run() does: at most max_names names per image
            pipe.segment(loaded, [rule.first_names(r.nouns) or ["thing"] for r in described])
        counters = {stage: c.as_dict() for stage, c in counter.totals.items() if stage != "total"}
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
    heights, widths = zip(*(image.rgb.shape[:2] for image in images))
    return {
        "preset": preset,
        "engine": pipe.cfg.engine,
        "image_size": [int(np.median(heights)), int(np.median(widths))],  # of the timed images (median)
        "image_sizes_distinct": len(set(zip(heights, widths))),
        "images_from": "synthetic" if source.files is None else source.what,
        "batch_size": s.batch_size,
        "batches": s.batches,
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
        "nouns_per_image": float(np.mean([len(r.description.nouns) for r in results])),
        "names_per_image": float(np.mean([len(r.class_names) for r in results])),
        "unseen": source.unseen_check(),
        "device": name,
        "peak_tflops": peak_rate,
    }


def meta(rows: list[dict], weights: str, overrides: list[str]) -> dict:
    """What produced the rows: device, library versions, the package's commit, weights, overrides."""
    import transformers

    return {
        "device": rows[0]["device"] if rows else "",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "commit": package_commit() or "unknown",
        "weights": weights,
        "set": list(overrides),
        "peak_tflops": rows[0]["peak_tflops"] if rows else None,
    }


# ---- output ---------------------------------------------------------------------------------------------
def _f(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(info: dict, rows: list[dict]) -> str:
    """The tables: one row per (preset, engine), then one per stage."""
    lines = [" | ".join(f"{k} {v}" for k, v in info.items() if k != "set"), ""]
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


def write(out: str | Path, info: dict, rows: list[dict]) -> str:
    """out/e2e.json and out/e2e.md (call after every row: a long run keeps what it measured)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "e2e.json", {"meta": info, "rows": rows})
    table = markdown(info, rows)
    write_bytes_atomic(folder / "e2e.md", table.encode())
    return table
