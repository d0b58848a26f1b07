"""CLI options shared by the commands that run the pipeline, and their mapping onto SelfSegConfig."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from selfseg_fast.config import AUTHORS_CODE, PRESETS, SelfSegConfig
from selfseg_fast.errors import SelfSegError


def add_config_options(parser: argparse.ArgumentParser, *, default_preset: str = "voc") -> None:
    """--preset, --config, --weights, --blip, --seed, --engine, --authors-code, --set KEY=VALUE."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=f"paper settings per dataset (default: {default_preset})",
    )
    group.add_argument("--config", metavar="FILE", help="JSON config file (preset + overrides)")
    group.add_argument(
        "--weights",
        choices=["pretrained", "random", "random-tiny"],
        default=None,
        help="pretrained (default), random (full size, seeded: for speed work offline), "
        "random-tiny (tiny configs, seeded: tests and offline demo)",
    )
    group.add_argument(
        "--blip",
        metavar="PATH_OR_ID",
        default=None,
        help="BLIP hub id or local folder (default Salesforce/blip-image-captioning-large)",
    )
    group.add_argument("--seed", type=int, default=None, help="random seed >= 0 (same seed, same output)")
    group.add_argument(
        "--engine",
        choices=["reference", "fast"],
        default=None,
        help="fast (default: batched, CPU or GPU) or reference (plain, per image, the paper's libraries; "
        "slow by design, needs crfseg)",
    )
    group.add_argument(
        "--kmeans",
        choices=["torch", "cuml"],
        default=None,
        help="fast engine's k-means: batched torch (default; Triton on CUDA) or cuML (GPU, optional)",
    )
    group.add_argument(
        "--authors-code",
        choices=sorted(AUTHORS_CODE),
        default=None,
        help="reproduce one of the authors' releases instead of the paper: maskblip (Self-Seg's code) or "
        "autoseg (its successor); see README 'Where the authors' released code differs'",
    )
    group.add_argument(
        "--adaptive-patience",
        type=int,
        metavar="N",
        default=None,
        help="stop a cluster's caption cycles once N cycles in a row found no new noun (at most the "
        "preset's cycles; default 0 = off, the paper's fixed cycles); = --set caption.adaptive_patience=N",
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set caption.cycles=3 (JSON values)",
    )
    parser.set_defaults(_default_preset=default_preset)


def add_segmenter_options(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """--checkpoint (X-Decoder weights) and, with `backend`, --segmenter-backend."""
    group = parser.add_argument_group("segmenter (X-Decoder)")
    group.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="X-Decoder checkpoint for --weights pretrained: a .pt path, a released name "
        "(xdecoder_focalt_last, ...), hf://OWNER/REPO/FILE.pt or an https URL",
    )
    group.add_argument(
        "--revision", metavar="REV", help="hub branch, tag or commit of the X-Decoder checkpoint"
    )
    if backend:
        group.add_argument(
            "--segmenter-backend",
            choices=["torch", "onnxruntime", "tensorrt"],
            default=None,
            help="how X-Decoder runs (onnxruntime/tensorrt: files from `selfseg-fast export`; "
            "tensorrt is not exercised here)",
        )


def add_naming_options(parser: argparse.ArgumentParser, *, consolidate: bool = True) -> None:
    """--consolidate, --consolidate-overlap, --same-cluster-only, --taxonomy, --taxonomy-llm[-model]
    (off by default: the paper's output)."""
    group = parser.add_argument_group("names (not in the paper; off by default)")
    if consolidate:
        group.add_argument(
            "--consolidate",
            choices=["off", "specific", "general"],
            default=None,
            help="merge competing nouns (WordNet synonyms, hypernym/hyponym pairs): specific keeps the "
            "hyponym (hawk over bird), general the hypernym; every merge is in the JSON",
        )
    group.add_argument(
        "--consolidate-overlap",
        type=float,
        metavar="T",
        default=None,
        help="also merge names whose score maps overlap (soft containment > T, e.g. 0.6)",
    )
    group.add_argument(
        "--same-cluster-only",
        action="store_true",
        default=None,
        help="WordNet merges only between nouns found in a common BCC cluster",
    )
    group.add_argument(
        "--taxonomy",
        metavar="LABELS",
        default=None,
        help="your own label set: cityscapes, ade20k, voc or a JSON file (a list of labels or "
        '{"labels": [...], "aliases": {...}}); nouns map onto it with LOVE, the rest is `other`',
    )
    group.add_argument(
        "--taxonomy-llm",
        metavar="BACKEND",
        default=None,
        help="LOVE back-end for --taxonomy: wordnet (offline, default), hf, hf:ID_OR_FOLDER, or an "
        "OpenAI-compatible http(s):// address",
    )
    group.add_argument("--taxonomy-llm-model", metavar="NAME", help="model name sent to that address")


def add_deadline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deadline-ms",
        type=positive_ms,
        metavar="MS",
        default=None,
        help="per-image time budget for captioning, from when the image (caption) or its batch "
        "(segment) starts: past it the image keeps the names found so far and is marked degraded",
    )


def positive_ms(text: str) -> float:
    """argparse type: a positive, finite number of milliseconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of milliseconds")
    return value


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", metavar="DIR", help="write a torch-profiler trace and a stage table")


def config_from_args(args: argparse.Namespace) -> SelfSegConfig:
    """Build the config: file or preset, then --authors-code, then explicit flags (incl. the segmenter's),
    then --set."""
    if args.config:
        cfg = SelfSegConfig.from_file(args.config)
        if args.preset:
            raise SelfSegError("give either --config or --preset, not both (put the preset in the file)")
    else:
        cfg = SelfSegConfig.from_preset(args.preset or args._default_preset)
    if getattr(args, "authors_code", None):
        cfg = cfg.authors_code(args.authors_code)
    overrides: dict[str, Any] = {}
    for flag, key in (("weights", "weights"), ("blip", "blip_model"), ("seed", "seed"), ("engine", "engine")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "adaptive_patience", None) is not None:
        overrides["caption.adaptive_patience"] = args.adaptive_patience
    if getattr(args, "kmeans", None):
        overrides["cluster.kmeans_backend"] = args.kmeans
    if getattr(args, "checkpoint", None):
        overrides["segmenter.checkpoint"] = args.checkpoint
    if getattr(args, "segmenter_backend", None):
        overrides["segmenter.backend"] = args.segmenter_backend
    for flag, key in (
        ("consolidate", "consolidate.mode"),
        ("consolidate_overlap", "consolidate.overlap_threshold"),
        ("same_cluster_only", "consolidate.same_cluster_only"),
        ("taxonomy", "taxonomy.labels"),
        ("taxonomy_llm", "taxonomy.llm"),
        ("taxonomy_llm_model", "taxonomy.llm_model"),
    ):
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    current = cfg.to_dict()
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SelfSegError(f"--set {item!r}: expected KEY=VALUE, e.g. --set caption.cycles=3")
        overrides[key.strip()] = parse_set_value(raw, _lookup(current, key.strip()))
    cfg = cfg.with_overrides(overrides)
    if getattr(args, "revision", None):  # pins the hub checkpoint: SOURCE@REVISION
        from selfseg_fast.models.xdecoder.checkpoint_files import DEFAULT_CHECKPOINT, split_revision

        source = split_revision(cfg.segmenter.checkpoint or DEFAULT_CHECKPOINT[cfg.segmenter.variant])[0]
        cfg = cfg.with_overrides({"segmenter.checkpoint": f"{source}@{args.revision}"})
    return cfg


def parse_set_value(raw: str, current: Any) -> Any:
    """A --set value: JSON (3, 0.5, true, null, [2, 4]), else the text itself. A text field keeps the
    text as typed (--set blip_model=1234 is the string '1234', not a number)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    if isinstance(current, str) and not isinstance(value, str) and value is not None:
        return raw
    return value


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None  # unknown: with_overrides names it
        node = node[part]
    return node
