"""Official X-Decoder checkpoints load by their own names: every key used or known-unused, none left over.

`official_key_shapes` below enumerates the official parameter names and shapes of the whole model, written
from the official code's module tree (microsoft/X-Decoder v1.0: modeling/backbone/focal_dw.py and focal.py,
body/encoder/transformer_encoder_fpn.py, body/decoder/xdecoder.py, language/vlpencoder.py,
LangEncoder/transformer.py, architectures/xdecoder_model.py) with the configs' sizes: 726 entries for
Focal-T, 930 for Focal-L. Checks run on meta tensors (names and shapes only), so full-size models cost
no memory; the load itself is checked on a tiny configuration with random values (exact copy).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from selfseg_fast.errors import WeightsError
from selfseg_fast.models.xdecoder.backbone import FocalNet, FocalNetConfig
from selfseg_fast.models.xdecoder.checkpoint import (
    OFFICIAL_CHECKPOINTS,
    UNUSED_FOR_SEMSEG,
    apply_key_map,
    load_official_weights,
    match_state_dict,
    read_checkpoint,
    resolve_source,
    select_prefix,
)
from selfseg_fast.models.xdecoder.language import LanguageConfig, LanguageEncoder

Shape = tuple[int, ...]

FOCAL_T = dict(embed=96, depths=(2, 2, 6, 2), levels=(3, 3, 3, 3), dw=True, queries=101)
FOCAL_L = dict(embed=192, depths=(2, 2, 18, 2), levels=(4, 4, 4, 4), dw=False, queries=201)


def _linear(name: str, n_out: int, n_in: int) -> Iterator[tuple[str, Shape]]:
    yield f"{name}.weight", (n_out, n_in)
    yield f"{name}.bias", (n_out,)


def _norm(name: str, n: int) -> Iterator[tuple[str, Shape]]:
    yield f"{name}.weight", (n,)
    yield f"{name}.bias", (n,)


def _mha(name: str, d: int) -> Iterator[tuple[str, Shape]]:
    yield f"{name}.in_proj_weight", (3 * d, d)
    yield f"{name}.in_proj_bias", (3 * d,)
    yield from _linear(f"{name}.out_proj", d, d)


def _backbone(embed: int, depths: Shape, levels: Shape, dw: bool) -> Iterator[tuple[str, Shape]]:
    yield "patch_embed.proj.weight", (embed, 3, 7, 7)
    yield "patch_embed.proj.bias", (embed,)
    yield from _norm("patch_embed.norm", embed)
    for i, depth in enumerate(depths):
        c, lv = embed * 2**i, levels[i]
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            if dw:
                yield p + "dw1.weight", (c, 1, 3, 3)
                yield p + "dw1.bias", (c,)
            yield from _norm(p + "norm1", c)
            yield from _linear(p + "modulation.f", 2 * c + lv + 1, c)
            yield p + "modulation.h.weight", (c, c, 1, 1)
            yield p + "modulation.h.bias", (c,)
            yield from _linear(p + "modulation.proj", c, c)
            for level in range(lv):
                k = 3 + 2 * level
                yield p + f"modulation.focal_layers.{level}.0.weight", (c, 1, k, k)
            if dw:
                yield p + "dw2.weight", (c, 1, 3, 3)
                yield p + "dw2.bias", (c,)
            yield from _norm(p + "norm2", c)
            yield from _linear(p + "mlp.fc1", 4 * c, c)
            yield from _linear(p + "mlp.fc2", c, 4 * c)
            yield p + "gamma_1", (c,)
            yield p + "gamma_2", (c,)
        if i < len(depths) - 1:
            yield f"layers.{i}.downsample.proj.weight", (2 * c, c, 3, 3)
            yield f"layers.{i}.downsample.proj.bias", (2 * c,)
            yield from _norm(f"layers.{i}.downsample.norm", 2 * c)
    for i in range(len(depths)):
        yield from _norm(f"norm{i}", embed * 2**i)


def _language(width: int = 512, layers: int = 12, vocab: int = 49408, ctx: int = 77, proj: int = 512):
    yield "lang_encoder.token_embedding.weight", (vocab, width)
    yield "lang_encoder.positional_embedding", (ctx, width)
    for n in range(layers):
        p = f"lang_encoder.resblocks.{n}."
        yield from _mha(p + "attn", width)
        yield from _norm(p + "ln_1", width)
        yield from _linear(p + "mlp.c_fc", 4 * width, width)
        yield from _linear(p + "mlp.c_proj", width, 4 * width)
        yield from _norm(p + "ln_2", width)
    yield from _norm("lang_encoder.ln_final", width)
    yield "lang_proj", (width, proj)
    yield "logit_scale", ()


def _pixel_decoder(channels: list[int], d: int = 512, layers: int = 6, ff: int = 2048):
    for k, c in enumerate(channels[:-1], start=1):
        yield f"adapter_{k}.weight", (d, c, 1, 1)  # GroupNorm follows: no conv bias
        yield from _norm(f"adapter_{k}.norm", d)
    for k in range(1, len(channels) + 1):
        yield f"layer_{k}.weight", (d, d, 3, 3)
        yield from _norm(f"layer_{k}.norm", d)
    yield "mask_features.weight", (d, d, 3, 3)
    yield "mask_features.bias", (d,)
    yield "input_proj.weight", (d, channels[-1], 1, 1)
    yield "input_proj.bias", (d,)
    for n in range(layers):
        p = f"transformer.encoder.layers.{n}."
        yield from _mha(p + "self_attn", d)
        yield from _linear(p + "linear1", ff, d)
        yield from _linear(p + "linear2", d, ff)
        yield from _norm(p + "norm1", d)
        yield from _norm(p + "norm2", d)


def _predictor(queries: int, d: int = 512, layers: int = 9, ff: int = 2048, ctx: int = 77):
    for n in range(layers):  # DEC_LAYERS 10 in the config; the code builds DEC_LAYERS - 1
        yield from _mha(f"transformer_self_attention_layers.{n}.self_attn", d)
        yield from _norm(f"transformer_self_attention_layers.{n}.norm", d)
        yield from _mha(f"transformer_cross_attention_layers.{n}.multihead_attn", d)
        yield from _norm(f"transformer_cross_attention_layers.{n}.norm", d)
        yield from _linear(f"transformer_ffn_layers.{n}.linear1", ff, d)
        yield from _linear(f"transformer_ffn_layers.{n}.linear2", d, ff)
        yield from _norm(f"transformer_ffn_layers.{n}.norm", d)
    yield from _norm("decoder_norm", d)
    yield "query_feat.weight", (queries, d)
    yield "query_embed.weight", (queries, d)
    yield "level_embed.weight", (3, d)
    for k in range(3):
        yield from _linear(f"mask_embed.layers.{k}", d, d)
    yield "class_embed", (d, d)
    yield "caping_embed", (d, d)
    yield "pos_embed_caping.weight", (ctx, d)
    yield "self_attn_mask", (1, queries + ctx, queries + ctx)
    for key, shape in _language():
        yield "lang_encoder." + key, shape


def official_key_shapes(variant: dict) -> dict[str, Shape]:
    """The official model's state-dict names and shapes (see the module docstring)."""
    embed = variant["embed"]
    channels = [embed * 2**i for i in range(4)]
    out: dict[str, Shape] = {}
    for key, shape in _backbone(embed, variant["depths"], variant["levels"], variant["dw"]):
        out["backbone." + key] = shape
    for key, shape in _pixel_decoder(channels):
        out["sem_seg_head.pixel_decoder." + key] = shape
    for key, shape in _predictor(variant["queries"]):
        out["sem_seg_head.predictor." + key] = shape
    out["backbone_proj"] = (8 * embed, 512)
    out["criterion.empty_weight"] = (134,)
    return out


def _meta_shapes(module_factory) -> dict[str, Shape]:
    with torch.device("meta"):
        module = module_factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---- coverage on the full-size official names ----------------------------------------------------------


def test_official_key_list_sizes() -> None:
    assert len(official_key_shapes(FOCAL_T)) == 726
    assert len(official_key_shapes(FOCAL_L)) == 930


@pytest.mark.parametrize(
    ("variant", "cfg"), [(FOCAL_T, FocalNetConfig.focal_t()), (FOCAL_L, FocalNetConfig.focal_l())]
)
def test_backbone_uses_every_official_backbone_key(variant: dict, cfg: FocalNetConfig) -> None:
    ckpt = select_prefix(official_key_shapes(variant), "backbone.")
    report = match_state_dict(_meta_shapes(lambda: FocalNet(cfg)), ckpt)
    assert report.ok, report.summary()
    assert len(report.loaded) == len(ckpt) and not report.ignored


@pytest.mark.parametrize("variant", [FOCAL_T, FOCAL_L])
def test_language_encoder_uses_every_official_language_key(variant: dict) -> None:
    ckpt = select_prefix(official_key_shapes(variant), "sem_seg_head.predictor.lang_encoder.")
    report = match_state_dict(_meta_shapes(lambda: LanguageEncoder(LanguageConfig())), ckpt)
    assert report.ok, report.summary()
    assert len(report.loaded) == len(ckpt) == 12 * 12 + 6


def test_unused_list_covers_exactly_the_non_semseg_keys() -> None:
    """Everything outside backbone / pixel decoder / predictor-without-captioning is in UNUSED_FOR_SEMSEG."""
    keys = official_key_shapes(FOCAL_T)
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


def test_full_model_coverage_when_segmenter_exists() -> None:
    """With the whole port assembled, the full official key list loads with nothing missing or left over."""
    segmenter = pytest.importorskip("selfseg_fast.models.xdecoder.segmenter")
    build = getattr(segmenter, "build_xdecoder_model", None)
    if build is None:
        pytest.skip("segmenter.build_xdecoder_model(variant) not available yet")
    for name, variant in (("focal-t", FOCAL_T), ("focal-l", FOCAL_L)):
        report = match_state_dict(_meta_shapes(lambda n=name: build(n)), official_key_shapes(variant))
        assert report.ok, f"{name}: {report.summary()}"
        assert set(report.ignored) <= {
            "backbone_proj",
            "criterion.empty_weight",
            "sem_seg_head.predictor.caping_embed",
            "sem_seg_head.predictor.pos_embed_caping.weight",
            "sem_seg_head.predictor.self_attn_mask",
        }


# ---- loading real values on a tiny configuration -------------------------------------------------------

TINY = dict(embed=8, depths=(1, 1, 2, 1), levels=(2, 2, 2, 2), dw=True, queries=5)


def _tiny_checkpoint() -> dict[str, torch.Tensor]:
    """Official-named random tensors for the tiny backbone, plus the known-unused keys."""
    g = torch.Generator().manual_seed(7)
    sd = {
        "backbone." + k: torch.randn(s, generator=g)
        for k, s in _backbone(TINY["embed"], TINY["depths"], TINY["levels"], TINY["dw"])
    }
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
