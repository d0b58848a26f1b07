"""X-Decoder port end to end: the whole model against the official implementation's fixture (strict
load by official key names), and the segmenter API on random-tiny weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


# ---- fast path: image branch + tiled post-processing ------------------------------------------------------
@pytest.mark.parametrize(
    "mask, padded, valid, out",
    [
        ((24, 32), (96, 128), (90, 120), (300, 400)),  # crop, then upsampling
        ((16, 16), (64, 64), (60, 50), (7, 5)),  # downsampling
        ((8, 640), (32, 2560), (1, 2560), (1, 3000)),  # one row
        ((160, 8), (640, 32), (640, 7), (91, 1)),  # one column (torch's single-column weights)
    ],
)
def test_tiled_postprocessing_equals_the_official_one(mask, padded, valid, out):
    """Ph @ masks @ Pw^T is the official resize-crop-resize: scores within 1e-5 of the official chain
    run in float64 (the official float32 run itself is off by up to 3e-4 on long sides), identical
    label maps, any tile size. The single-column case reproduces torch's own weights to 5e-3."""
    from selfseg_fast.models.xdecoder.postprocess import (
        class_probabilities,
        label_map_tiled,
        upsampling_matrices,
    )

    gen = torch.Generator().manual_seed(sum(out))
    logits, masks = torch.randn(11, 8, generator=gen) * 3, torch.randn(11, *mask, generator=gen) * 4
    ph, pw = upsampling_matrices(mask, padded, valid, out, "cpu")
    official = semantic_map(logits, masks, padded, valid, out)
    ours = torch.einsum("qk,qhw->khw", class_probabilities(logits), (ph @ masks @ pw.T).sigmoid())
    assert float((ours - official).abs().max()) < (5e-4 if out[1] > 1 else 5e-3)
    if out[1] > 1:
        exact = semantic_map(logits.double(), masks.double(), padded, valid, out)
        assert float((ours.double() - exact).abs().max()) < 1e-5
    for tile_bytes in (2**12, 2**26):
        labels = label_map_tiled(class_probabilities(logits), masks, ph, pw, tile_bytes=tile_bytes)
        assert torch.equal(labels.long(), official.argmax(0))


@pytest.fixture(scope="module")
def fast_and_reference():
    cfg = SelfSegConfig.from_preset("voc").with_overrides(
        {"weights": "random-tiny", "segmenter.test_short_side": 96, "engine": "fast"}
    )
    return build_segmenter(cfg, "cpu"), build_segmenter(cfg.with_overrides({"engine": "reference"}), "cpu")


def test_fast_segmenter_equals_reference_on_any_shape(fast_and_reference):
    """Batched image branch + tiled label maps == the official per-image scores' argmax, for ordinary
    images and for the extreme shapes a loader accepts (1 x 5000, 5000 x 1, 1 x 1)."""
    fast, ref = fast_and_reference
    rng = np.random.default_rng(5)
    shapes = [(70, 110), (64, 100), (70, 110), (1, 5000), (5000, 1), (1, 1)]
    rgbs = [rng.integers(0, 255, (*s, 3), dtype=np.uint8) for s in shapes]
    names = ["road", "sky", "person", "dog", "tree"]
    got = fast.segment(rgbs, names)
    for rgb, labels in zip(rgbs, got):
        assert labels.shape == rgb.shape[:2] and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, ref.segment(rgb, names))


def test_image_branch_launches_per_image_fall_with_the_batch(fast_and_reference):
    """Images of one padded size share one image-branch pass: kernel launches per image at 4 images
    are well under half of those at 1."""
    from selfseg_fast.counters import OpCounter

    fast, _ = fast_and_reference
    rgbs = [np.random.default_rng(i).integers(0, 255, (70, 110, 3), dtype=np.uint8) for i in range(4)]
    per_image = []
    for n in (1, 4):
        with OpCounter() as counter:
            fast.image_branch(rgbs[:n])
        per_image.append(counter.get().launches / n)
    assert per_image[1] < 0.4 * per_image[0], per_image


def test_resize_interpolation_is_a_field():
    cfg = SelfSegConfig.from_preset("voc").with_overrides(
        {
            "weights": "random-tiny",
            "segmenter.test_short_side": 40,
            "segmenter.resize_interpolation": "bicubic",
        }
    )
    bicubic, bilinear = (
        build_segmenter(cfg, "cpu"),
        build_segmenter(cfg.with_overrides({"segmenter.resize_interpolation": "bilinear"}), "cpu"),
    )
    rgb = np.random.default_rng(6).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    a, b = bicubic.preprocess(rgb), bilinear.preprocess(rgb)
    want = np.asarray(Image.fromarray(rgb).resize((64, 40), Image.BICUBIC)).astype(np.float32)
    got = (a.pixels[0, :, :40, :64] * bicubic.std + bicubic.mean).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert not torch.equal(a.pixels, b.pixels) and a.valid == b.valid == (40, 64)


def test_requests_over_the_limits_are_refused_before_any_work(fast_and_reference, monkeypatch):
    """ResourceError, one line, before the model runs: a 12000 x 12000 image over a memory budget,
    more names than segmenter.max_names."""
    from selfseg_fast.errors import ResourceError

    fast, _ = fast_and_reference
    monkeypatch.setattr(fast, "forward_image", lambda *a: pytest.fail("the model ran"))
    monkeypatch.setattr(fast.sc, "memory_budget_mb", 512.0)
    big = np.zeros((12000, 12000, 3), np.uint8)
    with pytest.raises(ResourceError) as info:
        fast.segment(big, ["car"])
    assert "\n" not in str(info.value) and "memory_budget_mb" in str(info.value)
    with pytest.raises(ResourceError, match="max_names"):
        fast.segment(big[:10, :10], [f"name{i}" for i in range(fast.sc.max_names + 1)])

    # same model input (short side 96): the fast path's peak grows by the label maps (int32 on the
    # device + int64 on the host) and the upsampling matrices, about 12 bytes per pixel, whatever K is
    one, four = fast.estimate_peak_bytes(1000, 1000, 5), fast.estimate_peak_bytes(2000, 2000, 5)
    assert 12 <= (four - one) / 3e6 < 13
    assert fast.estimate_peak_bytes(2000, 2000, 250) == four


def test_fast_path_memory_does_not_grow_with_names_times_pixels(tmp_path):
    """A 6-megapixel image with 40 names: the official [K, H, W] float32 scores and resized masks alone
    would take (2 Q + K) x 4 B x 6 MP = 1.5 GB; the tiled fast path stays within its label maps (12 B/px)
    + two tiles (128 MiB) + the model. Measured as the growth of the peak resident memory of a fresh
    process during the call (Linux: the peak is reset through /proc/self/clear_refs first)."""
    import subprocess
    import sys

    script = tmp_path / "peak.py"
    script.write_text(
        """
import numpy as np
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.models.xdecoder.segmenter import build_segmenter
cfg = SelfSegConfig.from_preset("voc").with_overrides(
    {"weights": "random-tiny", "segmenter.test_short_side": 96, "engine": "fast"})
seg = build_segmenter(cfg, "cpu")
rgb = np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8)
names = [f"thing{i}" for i in range(40)]
seg.segment(rgb[:64, :64], names)  # warm up: text embeddings, kernels
def status(key):  # kB
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident size (VmHWM) to the current one
before = status("VmRSS:")
labels = seg.segment(rgb, names)
print((status("VmHWM:") - before) / 1024, labels.shape)
"""
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=True
    )
    grown_mib = float(out.stdout.split()[0])
    assert grown_mib < 400, out.stdout  # 6 MP x 12 B = 69 MiB, two tiles 128 MiB, model activations
