"""Encoding: sin-cos embedding vs positional-encodings, fast SDPA tower vs HF BLIP (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from positional_encodings.torch_encodings import PositionalEncoding2D
from transformers import BlipVisionConfig, BlipVisionModel

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.models.blip import load_blip
from selfseg_fast.models.blip_vision_fast import FastBlipVision
from selfseg_fast.plan import resolve_plan
from selfseg_fast.stages.features import FastEncoder, encode_reference, preprocess, sincos_2d


def fast_encoder(bundle, cfg, device="cpu") -> FastEncoder:
    return FastEncoder(bundle, cfg, resolve_plan(cfg, device, engine="fast"))


@pytest.mark.parametrize("shape", [(24, 24, 256), (32, 32, 256), (5, 7, 64), (3, 3, 30)])
def test_sincos_matches_positional_encodings(shape):
    h, w, dim = shape
    lib = PositionalEncoding2D(dim)(torch.zeros(1, h, w, 1024 if dim <= 1024 else dim))[0]
    torch.testing.assert_close(sincos_2d(h, w, dim), lib.reshape(h * w, -1)[:, :dim], rtol=0, atol=1e-6)


def test_reference_shapes_and_fast_parity():
    cfg = SelfSegConfig(weights="random-tiny")
    bundle = load_blip(cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((40, 70), (300, 200), (1, 1))]
    ref = encode_reference(bundle, images, cfg)
    fast = fast_encoder(bundle, cfg)(images)
    assert sorted(ref) == [384, 512]
    assert ref[384].tokens.shape == (3, 576, 64) and ref[512].tokens.shape == (3, 1024, 64)
    assert ref[512].for_clustering().shape == (3, 1024, 64 + 256)
    for res in ref:
        torch.testing.assert_close(fast[res].tokens, ref[res].tokens, rtol=0, atol=1e-4)
        torch.testing.assert_close(fast[res].for_clustering(), ref[res].for_clustering(), rtol=0, atol=1e-4)


def test_fast_tower_matches_hf_with_vit_l_head_dims():
    # ViT-L's head size (64) and 16 heads, fewer/narrower layers to stay quick on a CPU
    config = BlipVisionConfig(
        hidden_size=1024, intermediate_size=256, num_hidden_layers=2, num_attention_heads=16,
        image_size=384, patch_size=16, initializer_range=0.02,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = BlipVisionModel(config).eval()
    fast = FastBlipVision.from_hf(hf)
    x = torch.randn(2, 3, 512, 512)
    with torch.no_grad():
        want = hf(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        got = fast(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_preprocess_matches_blip_processor():
    from transformers import BlipImageProcessor

    rgb = np.random.default_rng(1).integers(0, 255, (37, 61, 3), dtype=np.uint8)
    cfg = SelfSegConfig()
    processor = BlipImageProcessor(size={"height": 512, "width": 512})
    want = processor(rgb, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(preprocess(rgb, 512, cfg), want, rtol=0, atol=1e-4)


@pytest.mark.gpu
def test_fast_tower_half_precision_on_gpu():
    cfg = SelfSegConfig(weights="random-tiny", dtype="float16")
    bundle = load_blip(cfg, "cuda")
    images = [np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    ref = encode_reference(bundle, images, cfg)
    fast = fast_encoder(bundle, cfg, "cuda")(images)
    for res in ref:
        torch.testing.assert_close(fast[res].tokens.float(), ref[res].tokens, rtol=0, atol=2e-2)


@pytest.mark.slow
def test_compiled_bucketed_encoder_matches_reference():
    """compile=True (CPU: inductor; CUDA: CUDA graphs) pads batches to power-of-two buckets."""
    cfg = SelfSegConfig(weights="random-tiny").with_overrides({"compile": True, "encoder.resolutions": [384]})
    bundle = load_blip(cfg)
    images = [np.random.default_rng(i).integers(0, 255, (32, 48, 3), dtype=np.uint8) for i in range(3)]
    fast = fast_encoder(bundle, cfg)(images)  # batch 3 runs as a bucket of 4
    ref = encode_reference(bundle, images, cfg)
    torch.testing.assert_close(fast[384].tokens, ref[384].tokens, rtol=0, atol=1e-4)
