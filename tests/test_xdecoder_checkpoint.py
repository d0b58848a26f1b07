"""Official X-Decoder checkpoints load by their own names: every key used or known-unused, none left over.

`official_key_shapes` (checkpoint.py) enumerates the official model's parameter names and shapes from the
official module tree, apart from our modules; it was checked key-for-key against the state dict of the
official code built on CPU (726 keys for Focal-T, 930 for Focal-L), and the spot checks below pin keys
read off that code. Coverage checks run on meta tensors (names and shapes only), so full-size models cost
no memory; the load itself is checked on a tiny configuration with random values (exact copy).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfseg_fast.errors import WeightsError
from selfseg_fast.models.xdecoder.backbone import FocalNet, FocalNetConfig
from selfseg_fast.models.xdecoder.checkpoint import (
    OFFICIAL_CHECKPOINTS,
    UNUSED_FOR_SEMSEG,
    OfficialLayout,
    apply_key_map,
    load_official_weights,
    match_state_dict,
    official_key_shapes,
    read_checkpoint,
    resolve_source,
    select_prefix,
)
from selfseg_fast.models.xdecoder.config import XDecoderConfig
from selfseg_fast.models.xdecoder.language import LanguageConfig, LanguageEncoder
from selfseg_fast.models.xdecoder.segmenter import XDecoder


def _meta_shapes(module_factory) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = module_factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---- coverage on the full-size official names ----------------------------------------------------------


def test_official_key_list_sizes_and_spot_checks() -> None:
    t, big = official_key_shapes("focal-t"), official_key_shapes("focal-l")
    assert len(t) == 726 and len(big) == 930
    assert t["backbone.patch_embed.proj.weight"] == (96, 3, 7, 7)
    assert t["backbone.layers.2.blocks.5.modulation.focal_layers.2.0.weight"] == (384, 1, 7, 7)
    assert t["backbone.layers.0.blocks.0.modulation.f.weight"] == (196, 96)  # 2C + levels + 1
    assert "backbone.layers.0.blocks.0.dw1.weight" in t and "backbone.layers.0.blocks.0.dw1.weight" not in big
    assert big["backbone.layers.2.blocks.17.modulation.focal_layers.3.0.weight"] == (768, 1, 9, 9)
    assert t["sem_seg_head.pixel_decoder.adapter_1.weight"] == (512, 96, 1, 1)
    assert "sem_seg_head.pixel_decoder.adapter_1.bias" not in t  # GroupNorm follows the conv
    assert t["sem_seg_head.pixel_decoder.input_proj.weight"] == (512, 768, 1, 1)
    assert "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.norm2.bias" in t
    assert "sem_seg_head.predictor.transformer_ffn_layers.8.linear1.weight" in t
    assert "sem_seg_head.predictor.transformer_ffn_layers.9.linear1.weight" not in t  # DEC_LAYERS - 1
    assert t["sem_seg_head.predictor.query_feat.weight"] == (101, 512)
    assert big["sem_seg_head.predictor.query_feat.weight"] == (201, 512)
    assert t["sem_seg_head.predictor.self_attn_mask"] == (1, 178, 178)
    assert t["sem_seg_head.predictor.lang_encoder.lang_encoder.token_embedding.weight"] == (49408, 512)
    assert t["sem_seg_head.predictor.lang_encoder.logit_scale"] == ()
    assert t["backbone_proj"] == (768, 512) and big["backbone_proj"] == (1536, 512)


FIXTURE = Path(__file__).parent / "fixtures" / "xdecoder" / "tiny_official.pt"


@pytest.mark.skipif(not FIXTURE.is_file(), reason="official parity fixture not present")
def test_layout_table_equals_the_official_state_dict_of_the_fixture() -> None:
    """The fixture's state dict came out of the official code (PROVENANCE.md): names AND shapes must match,
    and the loader must take its backbone and language encoder with nothing missing."""
    fx = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    m = fx["config"]["MODEL"]
    f, text = m["BACKBONE"]["FOCAL"], m["TEXT"]
    layout = OfficialLayout.from_official(fx["config"])
    assert {k: tuple(v.shape) for k, v in fx["state_dict"].items()} == official_key_shapes(layout)
    net = FocalNet(FocalNetConfig(embed_dim=f["EMBED_DIM"], depths=tuple(f["DEPTHS"])))
    report = load_official_weights(net, fx["state_dict"], prefix="backbone.")
    assert report.ok and len(report.loaded) == len(net.state_dict())
    lang_cfg = LanguageConfig(
        vocab_size=fx["config"]["VOCAB_SIZE"],
        width=text["WIDTH"],
        layers=text["LAYERS"],
        heads=text["HEADS"],
        proj_dim=m["DIM_PROJ"],
    )
    report = load_official_weights(
        LanguageEncoder(lang_cfg), fx["state_dict"], prefix="sem_seg_head.predictor.lang_encoder."
    )
    assert report.ok and len(report.loaded) == 4 + 12 * text["LAYERS"] + 2


@pytest.mark.parametrize(
    ("variant", "cfg"), [("focal-t", FocalNetConfig.focal_t()), ("focal-l", FocalNetConfig.focal_l())]
)
def test_backbone_uses_every_official_backbone_key(variant: str, cfg: FocalNetConfig) -> None:
    ckpt = select_prefix(official_key_shapes(variant), "backbone.")
    report = match_state_dict(_meta_shapes(lambda: FocalNet(cfg)), ckpt)
    assert report.ok, report.summary()
    assert len(report.loaded) == len(ckpt) and not report.ignored


@pytest.mark.parametrize("variant", ["focal-t", "focal-l"])
def test_language_encoder_uses_every_official_language_key(variant: str) -> None:
    ckpt = select_prefix(official_key_shapes(variant), "sem_seg_head.predictor.lang_encoder.")
    report = match_state_dict(_meta_shapes(lambda: LanguageEncoder(LanguageConfig())), ckpt)
    assert report.ok, report.summary()
    assert len(report.loaded) == len(ckpt) == 12 * 12 + 6


def test_unused_list_covers_exactly_the_non_semseg_keys() -> None:
    """Everything outside backbone / pixel decoder / predictor-without-captioning is in UNUSED_FOR_SEMSEG."""
    keys = official_key_shapes("focal-t")
    report = match_state_dict({}, keys)
    assert sorted(report.ignored) == sorted(
        [
            "backbone_proj",
            "criterion.empty_weight",
            "sem_seg_head.predictor.caping_embed",
            "sem_seg_head.predictor.pos_embed_caping.weight",
            "sem_seg_head.predictor.self_attn_mask",
        ]
    )
    assert len(UNUSED_FOR_SEMSEG) == 5


@pytest.mark.parametrize("variant", ["focal-t", "focal-l"])
def test_full_model_coverage(variant: str) -> None:
    """The whole port (segmenter.XDecoder with its focal_t()/focal_l() config): every official key is
    loaded or known-unused, no model key is missing, and every shape agrees (Focal-L: 201 queries)."""
    make_cfg = XDecoderConfig.focal_t if variant == "focal-t" else XDecoderConfig.focal_l
    report = match_state_dict(_meta_shapes(lambda: XDecoder(make_cfg())), official_key_shapes(variant))
    assert report.ok, f"{variant}: {report.summary()}"
    assert set(report.ignored) <= {
        "backbone_proj",
        "criterion.empty_weight",
        "sem_seg_head.predictor.caping_embed",
        "sem_seg_head.predictor.pos_embed_caping.weight",
        "sem_seg_head.predictor.self_attn_mask",
    }


# ---- loading real values on a tiny configuration -------------------------------------------------------

TINY = OfficialLayout(embed=8, depths=(1, 1, 2, 1), focal_levels=(2, 2, 2, 2))


def _tiny_checkpoint() -> dict[str, torch.Tensor]:
    """Official-named random tensors for the tiny backbone, plus the known-unused keys."""
    g = torch.Generator().manual_seed(7)
    shapes = official_key_shapes(TINY)
    sd = {k: torch.randn(s, generator=g) for k, s in shapes.items() if k.startswith("backbone.")}
    sd["backbone_proj"] = torch.randn(64, 512, generator=g)
    sd["criterion.empty_weight"] = torch.ones(134)
    return sd


def _tiny_backbone() -> FocalNet:
    return FocalNet(FocalNetConfig(embed_dim=8, depths=(1, 1, 2, 1), focal_levels=(2, 2, 2, 2)))


def test_load_copies_values_from_a_wrapped_file(tmp_path) -> None:
    sd = _tiny_checkpoint()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    net = _tiny_backbone()
    report = load_official_weights(net, str(path), prefix="backbone.", ignore=UNUSED_FOR_SEMSEG)
    assert report.ok and not report.missing and len(report.loaded) == len(net.state_dict())
    for key, value in net.state_dict().items():
        assert torch.equal(value, sd["backbone." + key]), key


def test_whole_model_prefixes_and_ignored_keys() -> None:
    """A module tree named like the official model loads straight, with unused keys reported as ignored."""
    model = torch.nn.Module()
    model.backbone = _tiny_backbone()
    report = load_official_weights(model, _tiny_checkpoint())
    assert report.ok and sorted(report.ignored) == ["backbone_proj", "criterion.empty_weight"]
    assert "ignored 2, missing 0, unexpected 0" in report.summary()


def test_strict_errors_are_one_line() -> None:
    sd = _tiny_checkpoint()
    missing = {k: v for k, v in sd.items() if not k.endswith("norm3.bias")}
    with pytest.raises(WeightsError, match="missing: norm3.bias") as err:
        load_official_weights(_tiny_backbone(), missing, prefix="backbone.")
    assert "\n" not in str(err.value)
    wrong = dict(sd, **{"backbone.norm0.weight": torch.ones(9)})
    with pytest.raises(WeightsError, match=r"norm0.weight: model \(8,\) vs checkpoint \(9,\)"):
        load_official_weights(_tiny_backbone(), wrong, prefix="backbone.")
    extra = dict(sd, **{"backbone.new_thing": torch.ones(1)})
    with pytest.raises(WeightsError, match="unexpected: new_thing"):
        load_official_weights(_tiny_backbone(), extra, prefix="backbone.")
    report = load_official_weights(_tiny_backbone(), extra, prefix="backbone.", strict=False)
    assert report.unexpected == ["new_thing"] and len(report.loaded) == len(sd) - 2


def test_key_map_renames_prefixes() -> None:
    sd = {"enc.a": torch.zeros(1), "enc.inner.b": torch.zeros(1), "other": torch.zeros(1)}
    out = apply_key_map(sd, {"enc.": "backbone.", "enc.inner.": "x."})
    assert sorted(out) == ["backbone.a", "other", "x.b"]


def test_sources_and_bad_files(tmp_path) -> None:
    assert resolve_source("xdecoder_focalt_last") == OFFICIAL_CHECKPOINTS["xdecoder_focalt_last"]
    assert resolve_source("xdecoder_focalt_last").endswith("/xdecoder_focalt_last.pt")
    with pytest.raises(WeightsError, match="checkpoint file not found"):
        read_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read the X-Decoder checkpoint"):
        read_checkpoint(bad)
    torch.save({"a": 1}, tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match="not a state dict of tensors"):
        read_checkpoint(tmp_path / "odd.pt")
