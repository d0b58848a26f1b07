"""`selfseg-fast bench --dataset {voc,ade20k,cityscapes,synthetic}`: speed and quality side by side.

Runs the self-guided pipeline on a benchmark's val split, maps the predicted nouns to the dataset's
classes with LOVE, and prints images/s, mIoU, cmIoU, nouns per image and ms per stage. Per-image
predictions (label PNG + JSON) and results.json go to --out; running the same command again resumes
where it stopped. `--dataset synthetic` writes a small Cityscapes-layout dataset and runs offline.

Examples:
  selfseg-fast bench --dataset cityscapes --root ~/data/cityscapes --engine fast
  selfseg-fast bench --dataset synthetic --weights random-tiny --mode bcc-only
  selfseg-fast bench --dataset ade20k --root ~/data --llm hf:meta-llama/Llama-2-7b-chat-hf
  selfseg-fast bench --dataset voc --root ~/data/VOCdevkit --llm-url http://localhost:8000 \
      --cycles-sweep 1,5,10
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from selfseg_fast.commands.options import (
    add_config_options,
    add_profile_option,
    add_segmenter_options,
    config_from_args,
)
from selfseg_fast.errors import SelfSegError
from selfseg_fast.profiling import maybe_profile, write_stage_table

DATASET_PRESETS = {"voc": "voc", "ade20k": "ade20k", "cityscapes": "cityscapes", "synthetic": "cityscapes"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark speed and mIoU on VOC, ADE20K-Full, Cityscapes or a synthetic set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=["voc", "ade20k", "cityscapes", "synthetic"])
    parser.add_argument("--root", metavar="DIR", help="dataset folder (synthetic: where to write it)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    parser.add_argument("--out", metavar="DIR", help="results folder (default: bench-<dataset>-<mode>)")
    parser.add_argument(
        "--mode",
        choices=["full", "bcc-only", "single-caption"],
        default="full",
        help="full: Self-Seg; bcc-only: cluster masks alone (cmIoU); single-caption: segmenter with the "
        "nouns of one plain caption (paper ablations)",
    )
    parser.add_argument(
        "--llm",
        metavar="BACKEND",
        default=None,
        help="LOVE back-end: wordnet (offline, default), hf (Llama-2-7b-chat), hf:ID_OR_FOLDER, or url",
    )
    parser.add_argument("--llm-url", metavar="URL", help="OpenAI-compatible chat server for LOVE")
    parser.add_argument("--llm-model", metavar="NAME", help="model name sent to --llm-url (default: default)")
    parser.add_argument(
        "--love-cache", metavar="FILE", help="LOVE mapping cache (default ~/.cache/selfseg-fast)"
    )
    parser.add_argument(
        "--cycles-sweep",
        metavar="N,N,...",
        help="repeat the run for each number of captioning cycles, e.g. 1,5,10 (paper ablation)",
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help="images per pipeline call (default: config)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_profile_option(parser)
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run the pipeline data-parallel on a Ray cluster (one actor with the models per GPU); "
        "'local' starts Ray on this machine",
    )
    add_segmenter_options(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.preset is None and args.config is None:
        args.preset = DATASET_PRESETS[args.dataset]
    cfg = config_from_args(args)
    cycles = _parse_sweep(args.cycles_sweep) if args.cycles_sweep else [None]
    out = Path(args.out or f"bench-{args.dataset}-{args.mode}")

    from selfseg_fast.evaluation.datasets import open_dataset
    from selfseg_fast.evaluation.llm import build_mapper
    from selfseg_fast.evaluation.love import LOVE, LoveCache, Vocabulary

    dataset = open_dataset(args.dataset, args.root)
    love = None
    if args.mode != "bcc-only":
        mapper = build_mapper(args.llm, args.llm_url, model=args.llm_model)
        love = LOVE(mapper, Vocabulary.from_dataset(dataset), LoveCache(args.love_cache))
    rows = []
    for n in cycles:
        run_cfg = cfg if n is None else cfg.with_overrides({"caption.cycles": n})
        if args.mode == "single-caption":  # one cluster = the whole image, captioned once
            run_cfg = run_cfg.with_overrides({"cluster.k_values": [1], "caption.cycles": 1})
        run_out = out if n is None else out / f"cycles_{n}"
        with maybe_profile(args.profile and str(Path(args.profile) / run_out.name)):
            summary = bench_once(dataset, run_cfg, run_out, args, love)
        if args.profile:
            per_image = {stage: ms / 1000 for stage, ms in summary.ms_per_stage.items()}
            table = write_stage_table(
                str(Path(args.profile) / run_out.name), [per_image] * summary.images_scored
            )
            print(table, file=sys.stderr)
        rows.append((n, summary))
    print(format_table(rows, args.dataset, args.mode, love.backend if love else "-"))
    return 0


def bench_once(dataset, cfg, out: Path, args: argparse.Namespace, love, pipeline=None):
    """One scored run into `out` (resumes); writes results.json and returns the summary."""
    import torch

    from selfseg_fast.evaluation.results import ResultsStore
    from selfseg_fast.evaluation.runner import run_bench

    if pipeline is None:
        pipeline = LazyPipeline(cfg)
    store = ResultsStore(out)
    if getattr(args, "ray", None):
        pipeline = _precompute_on_ray(dataset, store, cfg, args, pipeline)
    summary = run_bench(
        dataset,
        pipeline,
        store,
        mode=args.mode,
        love=love,
        limit=args.limit,
        batch_size=args.batch_size or (cfg.batch_size if cfg.engine == "fast" else 1),
        progress=not args.quiet,
    )
    store.write_summary(
        {
            "summary": summary.to_json(),
            "config": cfg.to_dict(),
            "love": {"backend": love.backend, "mapping": dict(sorted(love.mapping.items()))}
            if love
            else None,
            "environment": {
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            },
        }
    )
    return summary


def _precompute_on_ray(dataset, store, cfg, args, fallback):
    """Describe (+ segment) every image this run still needs on Ray actors; the scoring loop then reads
    those results in order, exactly as if it had computed them itself (seeds depend only on pixels)."""
    from selfseg_fast.distributed import PrecomputedPipeline, precompute_with_ray

    needs_prediction = args.mode != "bcc-only"
    indices = range(len(dataset))[: args.limit]
    todo = [
        str(dataset.entries[i].image_path)
        for i in indices
        if not store.is_done(dataset.entries[i].id, needs_prediction=needs_prediction)
    ]
    results = precompute_with_ray(todo, cfg, args.ray, segment=needs_prediction)
    return PrecomputedPipeline(results, fallback)


class LazyPipeline:
    """Builds `SelfSegPipeline(cfg)` on first use: a fully resumed run loads no model."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self._pipeline = None

    def _get(self):
        if self._pipeline is None:
            from selfseg_fast import pipeline as pipeline_module

            self._pipeline = pipeline_module.SelfSegPipeline(self.cfg)
        return self._pipeline

    def describe(self, images):
        return self._get().describe(images)

    def segment(self, images, class_names):
        return self._get().segment(images, class_names)


def format_table(rows, dataset: str, mode: str, backend: str) -> str:
    """The final table: one row per run (per captioning-cycle count in a sweep)."""
    stages = sorted({stage for _, s in rows for stage in s.ms_per_stage})
    head = ["cycles", "images", "images/s", "mIoU", "cmIoU", "nouns/img"] + [f"{s} ms" for s in stages]
    lines = [f"bench {dataset} ({mode}, LOVE: {backend})", "  ".join(f"{h:>10}" for h in head)]
    for n, s in rows:
        cells = [
            "config" if n is None else str(n),
            str(s.images_scored),
            _fmt(s.images_per_second, 2),
            _fmt(100 * s.miou, 1),
            _fmt(100 * s.cmiou, 1),
            _fmt(s.nouns_per_image, 1),
        ] + [_fmt(s.ms_per_stage.get(stage, float("nan")), 1) for stage in stages]
        lines.append("  ".join(f"{c:>10}" for c in cells))
        if s.skipped:
            lines.append(f"  skipped {len(s.skipped)} broken pair(s): {', '.join(s.skipped[:5])}")
    return "\n".join(lines)


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _parse_sweep(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SelfSegError(f"--cycles-sweep {text!r}: expected whole numbers, e.g. 1,5,10") from None
    if not values or min(values) < 1:
        raise SelfSegError(f"--cycles-sweep {text!r}: expected positive numbers, e.g. 1,5,10")
    return values


if __name__ == "__main__":  # pragma: no cover
    from selfseg_fast.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
