"""X-Decoder port end to end: the whole model against the official implementation's fixture (strict
load by official key names), and the segmenter API on random-tiny weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import SelfSegError, WeightsError
from selfseg_fast.models.xdecoder.checkpoint import load_official_weights
from selfseg_fast.models.xdecoder.segmenter import (
    XDecoder,
    XDecoderConfig,
    build_model,
    build_segmenter,
    semantic_map,
)

FIXTURE = Path(__file__).parent / "fixtures" / "xdecoder" / "tiny_official.pt"


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def official_model(fx):
    model = XDecoder(XDecoderConfig.from_official(fx["config"])).eval()
    report = load_official_weights(model, fx["state_dict"], strict=True)
    assert report.ok and not report.missing and len(report.ignored) <= 5
    return model


def test_whole_model_matches_official(fx, official_model):
    """pred_logits within 1e-4 (logit_scale.exp() ~ 55), pred_masks within 5e-4, sem_seg within 1e-4."""
    images, out = fx["inputs"]["images_normalized"], fx["outputs"]
    with torch.no_grad():
        got = official_model(images, out["class_text_embeddings"])
    assert (got["pred_logits"] - out["pred_logits"]).abs().max() < 1e-4
    assert (got["pred_masks"] - out["pred_masks"]).abs().max() < 5e-4
    size = tuple(images.shape[-2:])
    for i, (h, w) in enumerate(fx["inputs"]["output_sizes"].tolist()):
        sem = semantic_map(got["pred_logits"][i], got["pred_masks"][i], size, size, (h, w))
        assert (sem - out["sem_seg"][i]).abs().max() < 1e-4


def test_intermediate_boundaries_match_official(fx, official_model):
    out = fx["outputs"]
    with torch.no_grad():
        mask_features, encoded, multi = official_model.sem_seg_head.pixel_decoder(out["backbone"])
    assert (mask_features - out["mask_features"]).abs().max() < 1e-4
    assert (encoded - out["transformer_encoder_features"]).abs().max() < 1e-4
    for a, b in zip(multi, out["multi_scale_features"]):
        assert (a - b).abs().max() < 1e-4


@pytest.fixture(scope="module")
def tiny_segmenter():
    cfg = SelfSegConfig.from_preset("voc").with_overrides(
        {"weights": "random-tiny", "segmenter.test_short_side": 96}
    )
    return build_segmenter(cfg, "cpu")


def test_segmenter_vocabulary_per_call_and_text_cache(tiny_segmenter):
    rgb = np.random.default_rng(0).integers(0, 255, (70, 110, 3), dtype=np.uint8)
    first = tiny_segmenter.segment(rgb, ["car", "road", "tree"])
    assert first.shape == (70, 110) and first.dtype == np.int64 and first.min() >= 0 and first.max() < 3
    passes = tiny_segmenter.text.encoder_passes
    scores = tiny_segmenter.scores(rgb, ["car", "road", "tree"])
    assert tiny_segmenter.text.encoder_passes == passes  # cached names: no text-encoder pass
    np.testing.assert_array_equal(scores.argmax(0).numpy(), first)
    other = tiny_segmenter.scores(rgb, ["sky", "car"])  # a new vocabulary, same model
    assert other.shape == (2, 70, 110)
    assert tiny_segmenter.text.encoder_passes == passes + 1  # one pass for the one new name


def test_test_size_follows_detectron2(tiny_segmenter):
    tiny_segmenter.short_side, tiny_segmenter.max_size = 640, 2560
    assert tiny_segmenter.test_size(480, 640) == (640, 853)
    assert tiny_segmenter.test_size(100, 5000) == (51, 2560)
    tiny_segmenter.short_side = 96


def test_pretrained_without_checkpoint_is_one_line_with_the_fixes(tmp_path):
    with pytest.raises(WeightsError) as info:
        build_model("focal-t", "pretrained", 0, str(tmp_path / "missing.pt"))
    text = str(info.value)
    assert "\n" not in text and "--checkpoint" in text and "random-tiny" in text
    assert "huggingface.co/xdecoder/X-Decoder" in text


def test_batched_images_equal_single_images(tiny_segmenter):
    """Same-padded-size images share a forward pass; scores equal the one-image ones within 1e-5."""
    rng = np.random.default_rng(3)
    rgbs = [
        rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(70, 110, 3), (64, 100, 3), (110, 70, 3)]
    ]
    names = ["road", "sky", "person", "dog"]
    batched = tiny_segmenter.scores_batch(rgbs, names, max_batch=2)
    for rgb, got in zip(rgbs, batched):
        want = tiny_segmenter.scores(rgb, names)
        assert got.shape == (4, *rgb.shape[:2])
        assert float((got - want).abs().max()) < 1e-5
    maps = tiny_segmenter.segment(rgbs, names)
    assert [m.shape for m in maps] == [r.shape[:2] for r in rgbs]


@pytest.mark.parametrize(
    "rgb, names",
    [
        (np.zeros((8, 8, 3), np.float32), ["car"]),
        (np.zeros((8, 8), np.uint8), ["car"]),
        (np.zeros((8, 8, 3), np.uint8), []),
        (np.zeros((8, 8, 3), np.uint8), "car"),
    ],
)
def test_bad_input_is_one_line_error(tiny_segmenter, rgb, names):
    with pytest.raises(SelfSegError) as info:
        tiny_segmenter.segment(rgb, names)
    assert "\n" not in str(info.value) and "segment:" in str(info.value)
