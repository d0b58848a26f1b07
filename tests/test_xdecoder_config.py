"""Reading official X-Decoder configs (the yaml files of microsoft/X-Decoder) into our config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from selfseg_fast.errors import SelfSegError
from selfseg_fast.models.xdecoder.checkpoint import (
    OFFICIAL_LAYOUTS,
    OfficialLayout,
    load_official_weights,
    official_key_shapes,
)
from selfseg_fast.models.xdecoder.config import XDecoderConfig
from selfseg_fast.models.xdecoder.segmenter import build_model

FIXTURE = Path(__file__).parent / "fixtures" / "xdecoder" / "tiny_official.pt"

# The entries our reader uses, with the values of configs/xdecoder/focalt_unicl_lang.yaml.
FOCAL_T_YAML = {
    "MODEL": {
        "DIM_PROJ": 512,
        "TEXT": {"CONTEXT_LENGTH": 77, "WIDTH": 512, "HEADS": 8, "LAYERS": 12, "AUTOGRESSIVE": True},
        "BACKBONE": {
            "NAME": "focal_dw",
            "FOCAL": {
                "EMBED_DIM": 96,
                "DEPTHS": [2, 2, 6, 2],
                "FOCAL_LEVELS": [3, 3, 3, 3],
                "FOCAL_WINDOWS": [3, 3, 3, 3],
                "USE_CONV_EMBED": True,
                "USE_POSTLN": True,
                "USE_LAYERSCALE": True,
            },
        },
        "ENCODER": {"CONVS_DIM": 512, "MASK_DIM": 512, "TRANSFORMER_ENC_LAYERS": 6, "NUM_CLASSES": 133},
        "DECODER": {
            "HIDDEN_DIM": 512,
            "NUM_OBJECT_QUERIES": 101,
            "NHEADS": 8,
            "DIM_FEEDFORWARD": 2048,
            "DEC_LAYERS": 10,
        },
    }
}


def _focal_l_yaml() -> dict:
    """focall_unicl_lang.yaml: the non-dw `focal` backbone, 192-d, depths 2-2-18-2, 4 levels; 201 queries."""
    cfg = copy.deepcopy(FOCAL_T_YAML)
    cfg["MODEL"]["BACKBONE"]["NAME"] = "focal"
    cfg["MODEL"]["BACKBONE"]["FOCAL"].update(EMBED_DIM=192, DEPTHS=[2, 2, 18, 2], FOCAL_LEVELS=[4, 4, 4, 4])
    cfg["MODEL"]["DECODER"]["NUM_OBJECT_QUERIES"] = 201
    return cfg


def test_official_focal_t_and_focal_l_configs_give_our_presets() -> None:
    assert XDecoderConfig.from_official(FOCAL_T_YAML) == XDecoderConfig.focal_t()
    assert XDecoderConfig.from_official(_focal_l_yaml()) == XDecoderConfig.focal_l()
    assert OfficialLayout.from_official(FOCAL_T_YAML) == OFFICIAL_LAYOUTS["focal-t"]
    assert OfficialLayout.from_official(_focal_l_yaml()) == OFFICIAL_LAYOUTS["focal-l"]


def test_other_sizes_are_read_not_defaulted() -> None:
    cfg = copy.deepcopy(FOCAL_T_YAML)
    cfg["MODEL"]["DECODER"].update(NUM_OBJECT_QUERIES=51, DEC_LAYERS=7)
    cfg["MODEL"]["TEXT"]["LAYERS"] = 6
    got = XDecoderConfig.from_official(cfg)
    assert (got.decoder.num_queries, got.decoder.dec_layers, got.language.layers) == (51, 7, 6)


def test_fixture_config_builds_the_model_its_official_state_dict_fits(tmp_path: Path) -> None:
    """The fixture's config came out of the official code; written as yaml and given to build_model
    (`segmenter.official_config`), it builds a model that takes the official state dict strictly."""
    fx = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(fx["config"]))
    model = build_model("focal-t", "random", 0, None, official_config=str(path))
    report = load_official_weights(model, fx["state_dict"], strict=True)
    assert report.ok and not report.missing and not report.unexpected
    assert official_key_shapes(OfficialLayout.from_official(fx["config"])) == {
        k: tuple(v.shape) for k, v in fx["state_dict"].items()
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [("MODEL: {DIM_PROJ: 512}\n", "missing or malformed entry"), ("- a\n- b\n", "expected a mapping")],
)
def test_malformed_config_is_one_line_error(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SelfSegError, match=needle) as err:
        XDecoderConfig.from_official_yaml(path)
    assert "\n" not in str(err.value)


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(SelfSegError, match="cannot read X-Decoder config .*nope.yaml"):
        XDecoderConfig.from_official_yaml(tmp_path / "nope.yaml")
