"""`selfseg-fast bench --dataset {voc,ade20k,cityscapes,synthetic}`: speed and quality side by side, and
beside the paper's figure for the same dataset, mode and number of captioning cycles (Tables 1-3).

Runs the pipeline on a benchmark's val split, maps the predicted nouns to the dataset's classes with
LOVE, and prints images/s, mIoU, cmIoU, nouns per image and ms per stage. Per-image results and
results.json go to --out, official-format predictions to --out/official; running the same command
again resumes where it stopped (another configuration into the same --out is refused). A broken
image/label pair is named and counted; the exit code is 1 unless --allow-missing.

Modes: full (Self-Seg), bcc-only (BCC cluster masks, cmIoU), single-caption (X-Decoder with the nouns
of one plain caption), names-given (X-Decoder with the dataset's class names). Only --llm hf or
--llm-url is the paper's LOVE; the default --llm wordnet is an offline stand-in. The images/s of this
quality run is the pipeline's wall time per image (encode, cluster, caption, nouns, X-Decoder, label
map), not counting image decode, LOVE or scoring.

--speed measures speed instead, end to end and nothing else: encoded file -> decode -> encode ->
cluster -> caption -> nouns -> X-Decoder -> label map (SelfSegPipeline.run). With --root it times the
dataset's own image files, without it synthetic JPEGs of the dataset's real size (voc 500x375, ade20k
683x512, cityscapes and synthetic 2048x1024); every image runs once (warm-up, timed, latency and
counted images all differ, checked by SHA-256). After --warmup batches, --batches batches of
--batch-size give images/s and per stage host ms, device ms (CUDA events; n/a on a CPU), FLOPs,
TFLOP/s and % of the device's peak; --latency single-image calls give p50/p99; one more batch counts
ops, launches and host syncs per stage. Peak GPU memory too. Tables go to stdout, e2e.json and e2e.md
to --out (default bench-<dataset>-speed).

Examples:
  selfseg-fast bench --speed --dataset cityscapes --weights random
  selfseg-fast bench --speed --dataset voc --root ~/data/VOCdevkit --batch-size 32 --latency 100

Quality examples:
  selfseg-fast bench --dataset cityscapes --root ~/data/cityscapes --llm-url http://localhost:8000
  selfseg-fast bench --dataset synthetic --weights random-tiny --mode bcc-only
  selfseg-fast bench --dataset ade20k --root ~/data --llm hf:meta-llama/Llama-2-7b-chat-hf
  selfseg-fast bench --dataset voc --root ~/data/VOCdevkit --llm hf --cycles-sweep 1,5,10,15,20,25
  selfseg-fast bench --dataset cityscapes --root ~/data/cityscapes --mode names-given
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from selfseg_fast.commands.options import (
    add_config_options,
    add_profile_option,
    add_segmenter_options,
    config_from_args,
)
from selfseg_fast.config import ConsolidateConfig, TaxonomyConfig
from selfseg_fast.errors import EXIT_OK, EXIT_SOME_FAILED, SelfSegError
from selfseg_fast.profiling import maybe_profile, write_stage_table

DATASET_PRESETS = {"voc": "voc", "ade20k": "ade20k", "cityscapes": "cityscapes", "synthetic": "cityscapes"}
MODE_HELP = (
    "full: Self-Seg (Tables 1-3); bcc-only: the BCC cluster masks alone, cmIoU (Table 1 BCC); "
    "single-caption: X-Decoder with the nouns of one plain whole-image caption (Table 1 X-Decoder + BLIP); "
    "names-given: X-Decoder with the dataset's class names (Table 2 X-Decoder)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark speed, mIoU and cmIoU on VOC, ADE20K-Full, Cityscapes or a synthetic set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=["voc", "ade20k", "cityscapes", "synthetic"])
    parser.add_argument("--root", metavar="DIR", help="dataset folder (synthetic: where to write it)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    parser.add_argument("--out", metavar="DIR", help="results folder (default: bench-<dataset>-<mode>)")
    parser.add_argument("--mode", choices=["full", "bcc-only", "single-caption", "names-given"],
                        default="full", help=MODE_HELP)  # fmt: skip
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit 0 even if some image/label pairs are broken (they are always named and counted)",
    )
    _add_love_options(parser)
    parser.add_argument(
        "--cycles-sweep",
        metavar="N,N,...",
        help="repeat the run for each number of captioning cycles and print Table 3's row, "
        "e.g. 1,5,10,15,20,25",
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help="images per pipeline call (default: config)"
    )
    group = parser.add_argument_group("competing-noun consolidation (not in the paper)")
    group.add_argument(
        "--consolidate",
        dest="bench_consolidate",
        choices=["specific", "general"],
        default=None,
        help="score every run twice, without and with consolidation (names per image, merges, mIoU of "
        "both; the second run reuses the first run's BCC nouns)",
    )
    group.add_argument(
        "--consolidate-overlap",
        dest="bench_overlap",
        type=float,
        metavar="T",
        default=None,
        help="with --consolidate: also the mask-overlap rule (soft containment > T)",
    )
    group.add_argument(
        "--same-cluster-only",
        dest="bench_same_cluster",
        action="store_true",
        help="with --consolidate: WordNet merges only between nouns of a common BCC cluster",
    )
    _add_speed_options(parser)
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


def _add_speed_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speed (--speed: end to end, no scoring; see above)")
    group.add_argument("--speed", action="store_true", help="measure speed end to end instead of quality")
    group.add_argument("--batches", type=int, metavar="N", help="timed batches, steady state (default 8)")
    group.add_argument("--warmup", type=int, metavar="N", help="warm-up batches, never timed (default 2)")
    group.add_argument(
        "--latency", type=int, metavar="N", help="single-image calls for p50/p99 latency (default 50)"
    )
    group.add_argument(
        "--no-counters", dest="speed_counters", action="store_false", default=None,
        help="skip the batch that counts ops, launches and host syncs",
    )  # fmt: skip
    group.add_argument(
        "--decode-workers", type=int, metavar="N",
        help="1 (default): decode the next batch on a loader thread while this one runs; 0: inline",
    )  # fmt: skip
    group.add_argument(
        "--size", metavar="HxW", help="synthetic image size instead of the dataset's (without --root)"
    )


def _add_love_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LOVE (noun -> class mapping)")
    group.add_argument(
        "--llm",
        metavar="BACKEND",
        default=None,
        help="wordnet (offline stand-in, default), hf (Llama-2-7b-chat, the paper's LOVE), hf:ID_OR_FOLDER, "
        "or url (with --llm-url)",
    )
    group.add_argument("--llm-url", metavar="URL", help="OpenAI-compatible chat server (the paper's LOVE)")
    group.add_argument("--llm-model", metavar="NAME", help="model name sent to --llm-url (default: default)")
    group.add_argument("--llm-batch-size", type=int, default=16, metavar="N", help="prompts per LLM batch")
    group.add_argument(
        "--llm-max-new-tokens", type=int, default=512, metavar="N", help="answer length cap (default 512)"
    )
    group.add_argument(
        "--love-template",
        choices=["paper", "ours"],
        default="paper",
        help="prompt wording: paper (App. A word for word, default) or ours",
    )
    group.add_argument(
        "--love-synonyms",
        action="store_true",
        help="map nouns equal to our added synonyms (VOC tv, Cityscapes tree, ...) without asking the LLM "
        "(not in the paper; off by default)",
    )
    group.add_argument(
        "--love-cache", metavar="FILE", help="LOVE mapping cache (default: under the cache root)"
    )


def run(args: argparse.Namespace) -> int:
    if args.preset is None and args.config is None:
        args.preset = DATASET_PRESETS[args.dataset]
    if args.speed:
        return run_speed(args)
    _refuse_speed_flags(args)
    cfg = config_from_args(args)
    cycles = _parse_sweep(args.cycles_sweep) if args.cycles_sweep else [None]
    out = Path(args.out or f"bench-{args.dataset}-{args.mode}")

    from selfseg_fast.evaluation.datasets import open_dataset

    dataset = open_dataset(args.dataset, args.root)
    love = _build_love(args, dataset) if args.mode in ("full", "single-caption") else None
    print(header(args.dataset, args.mode, love), file=sys.stderr)
    consolidate = consolidate_settings(args, cfg)
    rows, consolidated = [], []
    for n in cycles:
        run_cfg = cfg if n is None else cfg.with_overrides({"caption.cycles": n})
        if args.mode == "single-caption":  # one cluster = the whole image, captioned once
            run_cfg = run_cfg.with_overrides({"cluster.k_values": [1], "caption.cycles": 1})
        run_out = out if n is None else out / f"cycles_{n}"
        pipeline = MemoDescribe(LazyPipeline(run_cfg)) if consolidate else None
        with maybe_profile(args.profile and str(Path(args.profile) / run_out.name)):
            summary = bench_once(dataset, run_cfg, run_out, args, love, pipeline)
        if args.profile:
            per_image = {stage: ms / 1000 for stage, ms in summary.ms_per_stage.items()}
            table = write_stage_table(
                str(Path(args.profile) / run_out.name), [per_image] * summary.images_scored
            )
            print(table, file=sys.stderr)
        rows.append((run_cfg.caption.cycles, summary))
        if consolidate:
            merged_cfg = run_cfg.with_overrides({f"consolidate.{k}": v for k, v in consolidate.items()})
            merged = bench_once(
                dataset, merged_cfg, run_out / "consolidated", args, love, pipeline.merging(consolidate)
            )
            consolidated.append((run_cfg.caption.cycles, merged))
    print(format_table(rows, args.dataset, args.mode))
    if consolidate:
        print(format_consolidation(rows, consolidated, consolidate))
    if args.cycles_sweep:
        print(format_table3(rows, args.dataset, dataset.num_classes - (dataset.background_id is not None)))
    return _exit_code(rows + consolidated, args.allow_missing)


# ---- --speed ------------------------------------------------------------------------------------------
# attribute -> flag: the speed benchmark's own flags, and the quality benchmark's that --speed would ignore
SPEED_FLAGS = {"batches": "--batches", "warmup": "--warmup", "latency": "--latency",
               "speed_counters": "--no-counters", "decode_workers": "--decode-workers",
               "size": "--size"}  # fmt: skip
QUALITY_FLAGS = {"limit": "--limit", "cycles_sweep": "--cycles-sweep", "bench_consolidate": "--consolidate",
                 "ray": "--ray", "llm": "--llm", "llm_url": "--llm-url", "llm_model": "--llm-model",
                 "love_synonyms": "--love-synonyms", "love_cache": "--love-cache",
                 "allow_missing": "--allow-missing", "profile": "--profile"}  # fmt: skip


def _refuse_speed_flags(args: argparse.Namespace) -> None:
    given = [flag for attr, flag in SPEED_FLAGS.items() if getattr(args, attr) is not None]
    if given:
        raise SelfSegError(f"{given[0]} belongs to the speed benchmark: add --speed")


def speed_plan(args: argparse.Namespace):
    """(config, SpeedSettings, ImageSource, preset label) of `bench --speed`; every bad value is a
    one-line SelfSegError here, before any model loads."""
    from selfseg_fast.evaluation.speed import DATASET_SIZES, ImageSource, SpeedSettings, parse_size

    ignored = [flag for attr, flag in QUALITY_FLAGS.items() if getattr(args, attr, None)]
    if args.mode != "full":
        ignored.insert(0, "--mode")
    if ignored:
        raise SelfSegError(f"{ignored[0]} is for the quality benchmark; --speed measures speed only: drop it")
    if args.root and args.size:
        raise SelfSegError("--size is for synthetic images; with --root the dataset's own files are timed")
    cfg = config_from_args(args)
    defaults = SpeedSettings()
    settings = SpeedSettings(
        batch_size=args.batch_size if args.batch_size is not None else cfg.batch_size,
        **{
            name: getattr(args, attr) if getattr(args, attr) is not None else getattr(defaults, name)
            for name, attr in (("batches", "batches"), ("warmup", "warmup"), ("latency", "latency"),
                               ("counters", "speed_counters"), ("decode_workers", "decode_workers"))
        },
    )  # fmt: skip
    if problems := settings.problems():
        raise SelfSegError("; ".join(problems))
    size = parse_size(args.size) if args.size else DATASET_SIZES[DATASET_PRESETS[args.dataset]]
    if args.root:
        from selfseg_fast.evaluation.datasets import open_dataset

        dataset = open_dataset(args.dataset, args.root)
        files = [Path(entry.image_path) for entry in dataset.entries]
        source = ImageSource(size, files, seed=1, what=f"--dataset {args.dataset} --root {args.root}")
    else:
        source = ImageSource(size, None, seed=1)
    source.check(settings.images_needed())
    return cfg, settings, source, args.preset or args.dataset


def run_speed(args: argparse.Namespace) -> int:
    """`bench --speed`: one end-to-end speed row (selfseg_fast.evaluation.speed), printed and written."""
    cfg, settings, source, preset = speed_plan(args)
    from selfseg_fast.evaluation import speed

    out = Path(args.out or f"bench-{args.dataset}-speed")
    what = "synthetic JPEGs {}x{}".format(*source.size[::-1]) if source.files is None else source.what
    print(
        f"bench {args.dataset}: speed, {cfg.engine} engine, {cfg.weights} weights, {what}; "
        f"{settings.images_needed()} images, each used once",
        file=sys.stderr,
    )
    rows = [{"dataset": args.dataset, **speed.measure(cfg, settings, source, preset)}]
    table = speed.write(out, speed.meta(rows, cfg.weights, args.set), rows)
    unseen = rows[0]["unseen"]
    print(table)
    print(
        f"unseen: {unseen['images']} images, {unseen['distinct']} distinct, "
        f"{unseen['warmup_images_measured_again']} warm-up images measured again; written to {out}"
    )
    return EXIT_OK


def consolidate_settings(args: argparse.Namespace, cfg) -> dict | None:
    """The consolidate fields of `bench --consolidate ...` (None: no consolidated run); one-line errors."""
    if args.bench_consolidate is None:
        if args.bench_overlap is not None or args.bench_same_cluster:
            raise SelfSegError("--consolidate-overlap and --same-cluster-only need --consolidate MODE")
        return None
    if args.mode == "bcc-only":
        raise SelfSegError("--consolidate: bcc-only mode segments nothing; use full or names-given")
    if cfg.segmenter.resegment:
        raise SelfSegError("--consolidate with segmenter.resegment (maskblip's second pass): turn one off")
    settings = {"mode": args.bench_consolidate, "same_cluster_only": bool(args.bench_same_cluster)}
    if args.bench_overlap is not None:
        settings["overlap_threshold"] = args.bench_overlap
    cfg.with_overrides({f"consolidate.{k}": v for k, v in settings.items()})  # validates the values
    return settings


def format_consolidation(plain_rows, merged_rows, settings: dict) -> str:
    """Names per image and mIoU without and with consolidation, one line per run."""
    rule = settings["mode"] + (
        f" + overlap > {settings['overlap_threshold']}" if "overlap_threshold" in settings else ""
    )
    head = ["cycles", "names/img", "merged", "merges/img", "mIoU", "mIoU merged", "img/s", "img/s merged"]
    lines = [f"consolidation ({rule}): without vs with", "  ".join(f"{h:>12}" for h in head)]
    for (n, a), (_, b) in zip(plain_rows, merged_rows):
        cells = [str(n), _fmt(a.names_per_image, 2), _fmt(b.names_per_image, 2), _fmt(b.merges_per_image, 2)]
        cells += [_pct(a.miou), _pct(b.miou), _fmt(a.images_per_second, 2), _fmt(b.images_per_second, 2)]
        lines.append("  ".join(f"{c:>12}" for c in cells))
    lines.append("(img/s merged: the segmenter + consolidation only; the BCC nouns are the first run's)")
    return "\n".join(lines)


def _build_love(args: argparse.Namespace, dataset):
    from selfseg_fast.evaluation.llm import build_mapper
    from selfseg_fast.evaluation.love import LOVE, LoveCache, Vocabulary

    mapper = build_mapper(
        args.llm,
        args.llm_url,
        batch_size=args.llm_batch_size,
        model=args.llm_model,
        template=args.love_template,
        max_new_tokens=args.llm_max_new_tokens,
    )
    vocabulary = Vocabulary.from_dataset(dataset)
    return LOVE(mapper, vocabulary, LoveCache(args.love_cache), synonym_shortcut=args.love_synonyms)


def header(dataset: str, mode: str, love) -> str:
    """Which back-end mapped the nouns, and whether that is the paper's LOVE."""
    lines = [f"bench {dataset}: mode {mode}"]
    if love is None:
        lines.append("LOVE: not used (no free nouns to map in this mode)")
    elif love.is_llm:
        lines.append(f"LOVE: {love.backend} (an LLM, as the paper's LOVE; the paper used Llama 2 7B)")
    else:
        lines.append(
            f"LOVE: {love.backend}, an offline stand-in, NOT the paper's LOVE: only --llm hf or --llm-url "
            f"(an LLM) is; scores differ from an LLM mapping"
        )
    if love is not None:
        prompt = f"prompt {love.mapper.describe()['template']}; " if love.is_llm else ""
        lines.append(f"LOVE: {prompt}synonym shortcut {'on' if love.synonym_shortcut else 'off'}")
    return "\n".join(lines)


def bench_once(dataset, cfg, out: Path, args: argparse.Namespace, love, pipeline=None):
    """One scored run into `out` (resumes); writes results.json and returns the summary."""
    from selfseg_fast.evaluation.results import ResultsStore
    from selfseg_fast.evaluation.runner import run_bench
    from selfseg_fast.provenance import provenance

    store = ResultsStore(out)
    key = store.claim(run_about(cfg, args.mode, dataset))
    if pipeline is None:
        pipeline = LazyPipeline(cfg)
    if getattr(args, "ray", None) and args.mode != "names-given":
        pipeline = _precompute_on_ray(dataset, store, cfg, args, pipeline)
    summary = run_bench(
        dataset,
        pipeline,
        store,
        mode=args.mode,
        love=love,
        limit=args.limit,
        batch_size=args.batch_size or (cfg.batch_size if cfg.engine == "fast" else 1),
        progress_bar=not args.quiet,
        segmenter_cfg=cfg.segmenter,
    )
    store.write_summary(
        {
            "provenance": provenance(cfg.device),
            "run_key": key,
            "summary": summary.to_json(),
            "paper": paper_figures(dataset.name, args.mode, cfg.caption.cycles),
            "config": cfg.to_dict(),
            "love": love_record(love),
        }
    )
    return summary


def run_about(cfg, mode: str, dataset) -> dict:
    """Everything that changes the per-image results (the run key). The batch size does not: every
    random choice derives from the run seed and the image's pixels. LOVE does not either: it is applied
    when scoring, from the files on disk."""
    config = cfg.to_dict()
    config.pop("batch_size", None)
    for section, default in (("consolidate", ConsolidateConfig()), ("taxonomy", TaxonomyConfig())):
        if config.get(section) == dataclasses.asdict(default):  # off: keys of earlier runs still match
            config.pop(section)
    return {"config": config, "mode": mode, "dataset": dataset.name, "classes": list(dataset.class_names)}


def love_record(love) -> dict | None:
    """The complete mapping of every name of every scored image, with the raw LLM answers."""
    if love is None:
        return None
    return {
        "backend": love.backend,
        "paper_love": love.is_llm,
        "about": love.about,
        "cache_key": love.key,
        "synonym_shortcut": love.synonym_shortcut,
        "mapping": dict(sorted(love.mapping.items())),
        "answers": dict(sorted(love.answers.items())),
    }


def paper_figures(dataset: str, mode: str, cycles: int) -> dict:
    from selfseg_fast.evaluation.paper import paper_cmiou, paper_miou

    miou, cmiou = paper_miou(dataset, mode, cycles), paper_cmiou(dataset, mode, cycles)
    return {
        "miou": None if miou is None else {"value": miou[0], "cell": miou[1]},
        "cmiou": None if cmiou is None else {"value": cmiou[0], "cell": cmiou[1]},
        "note": "VOC mIoU figures compare with summary.miou_objects (20 classes, PAS-20)",
    }


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
    return PrecomputedPipeline(results, fallback, cfg.segmenter)


class LazyPipeline:
    """Builds `SelfSegPipeline(cfg)` on first use: a fully resumed run loads no model, and a run that only
    segments (names-given) loads X-Decoder alone, never BLIP."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self._pipeline = None
        self._segmenter = None

    def _get(self):
        if self._pipeline is None:
            from selfseg_fast import pipeline as pipeline_module

            self._pipeline = pipeline_module.SelfSegPipeline(self.cfg)
        return self._pipeline

    def describe(self, images):
        return self._get().describe(images)

    def segment(self, images, class_names, **naming):
        if self._pipeline is not None or naming:
            return self._get().segment(images, class_names, **naming)
        if self._segmenter is None:
            from selfseg_fast.engines.base import resolve_device
            from selfseg_fast.models.xdecoder.segmenter import build_segmenter

            self._segmenter = build_segmenter(self.cfg, resolve_device(self.cfg))
        import numpy as np

        return [
            self._segmenter.segment(image.rgb, names) if names else np.full(image.rgb.shape[:2], -1)
            for image, names in zip(images, class_names)
        ]


class MemoDescribe:
    """A pipeline that remembers each image's BCC result, so the consolidated run segments the very same
    nouns as the plain one (and does not caption again); `merging(settings)` is the consolidated view."""

    def __init__(self, inner, consolidate: dict | None = None, memo: dict | None = None) -> None:
        self.inner, self.consolidate = inner, consolidate
        self.memo: dict = {} if memo is None else memo

    def merging(self, consolidate: dict) -> MemoDescribe:
        return MemoDescribe(self.inner, consolidate, self.memo)

    def describe(self, images):
        import copy

        todo = [im for im in images if im.path not in self.memo]
        if todo:
            for image, result in zip(todo, self.inner.describe(todo)):
                self.memo[image.path] = result
        return [copy.deepcopy(self.memo[im.path]) for im in images]

    def segment(self, images, class_names):
        if self.consolidate is None:
            return self.inner.segment(images, class_names)
        return self.inner.segment(images, class_names, consolidate=self.consolidate)


# ---- output ---------------------------------------------------------------------------------------------
def format_table(rows, dataset: str, mode: str) -> str:
    """The final table: one row per run, our figure and the paper's side by side."""
    from selfseg_fast.evaluation.paper import paper_cmiou, paper_miou

    stages = sorted({stage for _, s in rows for stage in s.ms_per_stage})
    voc = dataset == "voc"
    head = ["cycles", "images", "broken", "img/s", "mIoU-20" if voc else "mIoU", "paper"]
    head += ["mIoU-21"] if voc else []
    head += ["cmIoU", "paper", "cmIoU/img", "cmIoU BCC", "nouns/img"] + [f"{s} ms" for s in stages]
    lines = ["  ".join(f"{h:>9}" for h in head)]
    for n, s in rows:
        pm, pc = paper_miou(dataset, mode, n), paper_cmiou(dataset, mode, n)
        cells = [
            str(n),
            f"{s.images_scored}/{s.images_total}",
            str(len(s.skipped)),
            _fmt(s.images_per_second, 2),
        ]
        cells += [_pct(s.miou), _fmt(pm[0] if pm else None, 1)] + ([_pct(s.miou_all)] if voc else [])
        cells += [_pct(s.cmiou), _fmt(pc[0] if pc else None, 1), _pct(s.cmiou_per_image), _pct(s.cmiou_bcc)]
        cells += [_fmt(s.nouns_per_image, 1)] + [_fmt(s.ms_per_stage.get(st), 1) for st in stages]
        lines.append("  ".join(f"{c:>9}" for c in cells))
    notes = _notes(rows, dataset, mode)
    return "\n".join(lines + notes)


def _notes(rows, dataset: str, mode: str) -> list[str]:
    from selfseg_fast.evaluation.paper import paper_cmiou, paper_miou

    notes = []
    cells = {
        c[1] for n, _ in rows for c in (paper_miou(dataset, mode, n), paper_cmiou(dataset, mode, n)) if c
    }
    if cells:
        notes.append("paper columns: " + "; ".join(sorted(cells)))
    if dataset == "voc" and mode != "bcc-only":
        notes.append("VOC: mIoU-20 = 20 object classes, background pixels ignored (what the paper's 41.6 "
                     "and 96.2 compare with); mIoU-21 = 21 classes, background a class")  # fmt: skip
    for _, s in rows:
        if s.skipped:
            shown = ", ".join(s.skipped[:5]) + (" ..." if len(s.skipped) > 5 else "")
            notes.append(
                f"{len(s.skipped)} of {s.images_total} image/label pairs broken, not scored: {shown}"
            )
    return notes


def format_table3(rows, dataset: str, num_classes: int) -> str:
    """Table 3's row shape: dataset statistics, then mIoU per number of captioning cycles."""
    from selfseg_fast.evaluation.paper import TABLE3_MIOU, TABLE3_STATS

    cycles = [n for n, _ in rows]
    head = ["", "dataset", "I-bar", "C-bar", "C"] + [str(n) for n in cycles]
    lines = ["Table 3 (mIoU by captioning cycles)", "  ".join(f"{h:>10}" for h in head)]
    if dataset in TABLE3_STATS:
        i_bar, c_bar, c = TABLE3_STATS[dataset]
        paper = [_fmt(TABLE3_MIOU[dataset].get(n), 1) for n in cycles]
        lines.append(
            "  ".join(f"{x:>10}" for x in ["paper", dataset, str(i_bar), str(c_bar), str(c), *paper])
        )
    s0 = rows[0][1]
    ours = [_pct(s.miou) for _, s in rows]
    row = ["ours", dataset, "-", _fmt(s0.classes_per_image, 1), str(num_classes), *ours]
    lines.append("  ".join(f"{x:>10}" for x in row))
    lines.append(
        "(I-bar, mean instances per image, needs instance labels: not computed from semantic labels)"
    )
    return "\n".join(lines)


def _exit_code(rows, allow_missing: bool) -> int:
    for _, s in rows:
        if s.images_scored == 0:
            print("selfseg-fast: error: no image was scored (see the warnings above)", file=sys.stderr)
            return EXIT_SOME_FAILED
        if s.skipped and not allow_missing:
            print(
                f"selfseg-fast: {len(s.skipped)} broken image/label pair(s) not scored; exit 1 "
                f"(--allow-missing to accept)",
                file=sys.stderr,
            )
            return EXIT_SOME_FAILED
    return EXIT_OK


def _pct(value: float | None) -> str:
    return _fmt(None if value is None else 100 * value, 1)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


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
