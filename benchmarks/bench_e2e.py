"""End-to-end speed: encoded image file -> decode -> encode -> cluster -> caption -> nouns -> X-Decoder
-> label map, per preset and engine, at each dataset's real image size.

    python benchmarks/bench_e2e.py --weights random --presets voc cityscapes --engines fast reference \
        --batch-size 16 --batches 8 --latency 50 --out benchmarks/e2e_<device>

The measuring lives in `selfseg_fast.evaluation.speed` (what is timed, how, and the unseen-image check
are described there); `selfseg-fast bench --speed --dataset X` runs the same for one preset and engine.
This script loops over presets and engines and writes DIR/e2e.json and DIR/e2e.md (tables with the
device, torch, transformers and commit) after every row.

Images: `--images-from DIR` (image files of a dataset, each used once), else synthetic JPEG files of the
preset's dataset size (voc 500x375, ade20k 683x512, cityscapes 2048x1024).
"""

from __future__ import annotations

import argparse
import json
import sys

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import SelfSegError
from selfseg_fast.evaluation.speed import (  # noqa: F401  (re-exported: tests and older callers)
    DATASET_SIZES,
    PEAK_TFLOPS,
    STAGES,
    ImageSource,
    SpeedSettings,
    _f,
    markdown,
    measure,
    meta,
    nearest_rank,
    parse_size,
    peak_tflops,
    synthetic_jpeg,
    write,
)


def _parse_set(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


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
    try:
        return _run(args)
    except SelfSegError as exc:
        print(f"bench_e2e: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    rows, table = [], ""
    fixed_size = parse_size(args.size) if args.size else None
    for p, preset in enumerate(args.presets):
        size = fixed_size or DATASET_SIZES[preset]
        for e, engine in enumerate(args.engines):
            batches = args.batches
            if engine == "reference" and args.reference_batches:
                batches = args.reference_batches
            settings = SpeedSettings(
                args.batch_size, batches, args.warmup, args.latency, args.counters, args.decode_workers
            )
            if problems := settings.problems():
                raise SelfSegError("; ".join(problems))
            overrides = {"weights": args.weights, "engine": engine}
            if args.device:
                overrides["device"] = args.device
            overrides.update(dict(_parse_set(s) for s in args.set))
            cfg = SelfSegConfig.from_preset(preset).with_overrides(overrides)
            source = ImageSource.from_folder(size, args.images_from, seed=1 + 10 * p + e)
            rows.append(measure(cfg, settings, source, preset))
            r = rows[-1]
            print(f"{preset} {engine}: {r['images_per_s']:.3g} img/s, p50 {_f(r['latency']['p50_ms'])} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
            table = write(args.out, meta(rows, args.weights, args.set), rows)  # a long run keeps its rows
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
