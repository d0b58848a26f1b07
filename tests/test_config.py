"""SelfSegConfig: paper defaults, presets, the authors-code switch, overrides, config files, CLI flags."""

from __future__ import annotations

import argparse
import json

import pytest

from selfseg_fast.commands.options import add_config_options, config_from_args
from selfseg_fast.config import AUTOSEG_BLOCK_LIST, BLIP_BASE_HUB_ID, BLIP_HUB_ID, SelfSegConfig
from selfseg_fast.errors import SelfSegError


def test_paper_defaults() -> None:
    cfg = SelfSegConfig()
    assert cfg.blip_model == BLIP_HUB_ID
    assert cfg.encoder.resolutions == (384, 512) and cfg.encoder.pos_embed_dim == 256
    assert cfg.cluster.k_values == (2, 8) and cfg.cluster.align_cost == "iou"
    assert (cfg.cluster.crf_smoothness_weight, cfg.cluster.crf_smoothness_theta) == (6.0, 0.8)
    assert cfg.cluster.majority_filter_max_iters == 8 and cfg.cluster.output_grid == 32
    cap = cfg.caption
    assert (cap.min_new_tokens, cap.max_new_tokens, cap.top_p, cap.repetition_penalty) == (4, 25, 1.0, 100.0)
    assert (cap.bos_token_id, cap.eos_token_id) == (30522, 102)


@pytest.mark.parametrize(("preset", "cycles"), [("voc", 1), ("ade20k", 10), ("cityscapes", 20)])
def test_presets_set_captioning_cycles(preset: str, cycles: int) -> None:
    assert SelfSegConfig.from_preset(preset).caption.cycles == cycles


def test_unknown_preset_is_a_one_line_error() -> None:
    with pytest.raises(SelfSegError, match="unknown preset 'coco'"):
        SelfSegConfig.from_preset("coco")


def test_authors_code_switch_leaves_the_original() -> None:
    paper = SelfSegConfig.from_preset("ade20k")
    code = paper.authors_code("autoseg")
    assert code.cluster.k_values == tuple(range(2, 9)) and code.cluster.align_cost == "disagreement"
    assert code.caption.repetition_penalty == 1.1 and code.blip_model == BLIP_BASE_HUB_ID
    assert code.nouns.min_length == 3 and code.nouns.block_list == AUTOSEG_BLOCK_LIST
    assert paper.cluster.k_values == (2, 8) and paper.blip_model == BLIP_HUB_ID  # a deep copy
    with pytest.raises(SelfSegError, match="unknown --authors-code"):
        paper.authors_code("lavis")


def test_overrides_and_round_trip() -> None:
    cfg = SelfSegConfig().with_overrides({"caption.cycles": 3, "seed": 7, "cluster.k_values": [2, 4]})
    assert cfg.caption.cycles == 3 and cfg.seed == 7 and cfg.cluster.k_values == (2, 4)
    assert SelfSegConfig().with_overrides({}).to_dict() == SelfSegConfig().to_dict()
    with pytest.raises(SelfSegError, match="unknown config key 'caption.cycle'"):
        SelfSegConfig().with_overrides({"caption.cycle": 3})


def test_config_file(tmp_path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "cityscapes", "seed": 5, "caption": {"top_p": 0.9}}))
    cfg = SelfSegConfig.from_file(path)
    assert (cfg.preset, cfg.caption.cycles, cfg.seed, cfg.caption.top_p) == ("cityscapes", 20, 5, 0.9)
    path.write_text("{not json")
    with pytest.raises(SelfSegError, match="run.json: cannot read config file"):
        SelfSegConfig.from_file(path)


def test_cli_flags_map_onto_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    args = parser.parse_args(
        [
            "--preset",
            "ade20k",
            "--weights",
            "random-tiny",
            "--seed",
            "3",
            "--engine",
            "fast",
            "--set",
            "batch_size=4",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.preset, cfg.weights, cfg.seed, cfg.engine, cfg.batch_size) == (
        "ade20k",
        "random-tiny",
        3,
        "fast",
        4,
    )
    bad = parser.parse_args(["--set", "caption.cycles"])
    with pytest.raises(SelfSegError, match="expected KEY=VALUE"):
        config_from_args(bad)


@pytest.mark.parametrize("command", ["segment", "bench", "label", "export"])
def test_segmenter_flags_reach_the_config_of_every_command_that_segments(command: str) -> None:
    """--checkpoint (and --segmenter-backend where the command runs X-Decoder) set cfg.segmenter."""
    from selfseg_fast.cli import build_parser

    required = {
        "segment": ["x.jpg"],
        "bench": ["--dataset", "synthetic"],
        "label": ["folder", "--out", "o"],
        "export": ["xdecoder", "--onnx", "m.onnx"],
    }[command]
    flags = ["--checkpoint", "ckpt.pt"]
    if command != "export":
        flags += ["--segmenter-backend", "onnxruntime"]
    cfg = config_from_args(build_parser().parse_args([command, *required, *flags]))
    assert cfg.segmenter.checkpoint == "ckpt.pt"
    assert cfg.segmenter.backend == ("torch" if command == "export" else "onnxruntime")


# ---- validation (pydantic over the dataclasses): one line per problem, before any model loads ----------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"caption.cycles": 0}, "caption.cycles = 0: must be >= 1"),
        ({"seed": "abc"}, "seed = 'abc': input should be a valid integer"),
        ({"seed": True}, "seed = True: input should be a valid integer"),
        ({"batch_size": 2.5}, "batch_size = 2.5"),
        ({"segmenter.test_short_side": -5}, "segmenter.test_short_side = -5: must be >= 1"),
        ({"caption.top_p": 1.5}, "caption.top_p = 1.5: must be <= 1"),
        ({"caption.top_p": 0}, "caption.top_p = 0: must be > 0"),
        ({"caption.top_p": float("nan")}, "caption.top_p = nan: must be a finite number"),
        (
            {"cluster.align_cost": "cosine"},
            "cluster.align_cost = 'cosine': choose one of 'iou' or 'disagreement'",
        ),
        ({"engine": "turbo"}, "engine = 'turbo': choose one of 'reference' or 'fast'"),
        ({"cluster.k_values": [2, 0]}, "cluster.k_values.1 = 0: must be >= 1"),
        ({"cluster.k_values": []}, "cluster.k_values: give at least one k"),
        ({"caption.min_new_tokens": 30}, "must be <= caption.max_new_tokens (25)"),
        ({"cluster.majority_filter_size": 4}, "must be odd"),
        ({"device": "gpu"}, "device = 'gpu': use cpu, cuda"),
        ({"caption.cycle": 3}, "unknown config key 'caption.cycle'; did you mean 'caption.cycles'?"),
        ({"caption": 3}, "config key 'caption' is a section"),
    ],
)
def test_invalid_values_are_one_line_errors(overrides, message) -> None:
    with pytest.raises(SelfSegError) as info:
        SelfSegConfig().with_overrides(overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_problem_is_named_at_once_and_valid_values_pass() -> None:
    with pytest.raises(SelfSegError, match=r"seed = -1: must be >= 0; caption.cycles = 0"):
        SelfSegConfig().with_overrides({"caption.cycles": 0, "seed": -1})
    cfg = SelfSegConfig().with_overrides({"caption": {"top_p": 1, "cycles": 2}, "device": "cuda:1"})
    assert cfg.caption.top_p == 1.0 and isinstance(cfg.caption.top_p, float) and cfg.caption.cycles == 2
    assert cfg.caption.max_new_tokens == 25  # a section given as a dict is merged, not replaced


def test_pipeline_rules_apply_to_a_pipeline_only() -> None:
    encoder_only = SelfSegConfig().with_overrides({"encoder.resolutions": [384]})  # fine for the encoder
    with pytest.raises(SelfSegError, match=r"the largest must be cluster.output_grid \(32\) x 16 px"):
        encoder_only.validated(for_pipeline=True)


def test_validated_checks_a_config_built_in_python() -> None:
    cfg = SelfSegConfig()
    cfg.caption.cycles = 0
    with pytest.raises(SelfSegError, match="caption.cycles = 0"):
        cfg.validated()
    assert SelfSegConfig.from_preset("ade20k").validated() == SelfSegConfig.from_preset("ade20k")


def test_config_file_with_a_wrong_type_names_the_file(tmp_path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "voc", "caption": {"cycles": "three"}}))
    with pytest.raises(SelfSegError, match=r"run.json: invalid config: caption.cycles = 'three'"):
        SelfSegConfig.from_file(path)
    path.write_text(json.dumps({"preset": "coco"}))
    with pytest.raises(SelfSegError, match="run.json: unknown preset 'coco'"):
        SelfSegConfig.from_file(path)


def test_set_keeps_text_for_text_fields() -> None:
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    args = parser.parse_args(
        ["--set", "blip_model=1234", "--set", "segmenter.checkpoint=null", "--set", "seed=7"]
    )
    cfg = config_from_args(args)
    assert (cfg.blip_model, cfg.segmenter.checkpoint, cfg.seed) == ("1234", None, 7)
