"""FocalNet backbone: output names, shapes and strides; one block against a direct functional computation.

The direct computation below is written channels-first from the paper's formula (not from backbone.py's
channels-last code), so a wiring mistake in either shows up. Tolerance: float32, atol 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfseg_fast.errors import SelfSegError
from selfseg_fast.models.xdecoder.backbone import FocalModulationBlock, FocalNet, FocalNetConfig

ATOL = 1e-5


def _randomize(module: torch.nn.Module) -> None:
    """Random weights everywhere (the init leaves gammas at 1e-4, which would hide the block's branches)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("variant", ["focal_dw", "focal"])
@pytest.mark.parametrize("hw", [(64, 96), (70, 45)])
def test_outputs_shapes_and_strides(variant: str, hw: tuple[int, int]) -> None:
    cfg = FocalNetConfig(variant=variant, embed_dim=8, depths=(1, 1, 1, 1), focal_levels=(2, 2, 2, 2))
    net = FocalNet(cfg).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = net(x)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for i, name in enumerate(out):
        stride = 4 * 2**i
        expected = (2, 8 * 2**i, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
        assert tuple(out[name].shape) == expected
        assert torch.isfinite(out[name]).all()
    assert net.output_shape() == {"res2": (8, 4), "res3": (16, 8), "res4": (32, 16), "res5": (64, 32)}


def test_presets_match_official_configs() -> None:
    t, big = FocalNetConfig.focal_t(), FocalNetConfig.focal_l()
    assert (t.variant, t.embed_dim, t.depths, t.focal_levels, t.focal_windows) == (
        "focal_dw",
        96,
        (2, 2, 6, 2),
        (3, 3, 3, 3),
        (3, 3, 3, 3),
    )
    expected_l = ("focal", 192, (2, 2, 18, 2), (4,) * 4)
    assert (big.variant, big.embed_dim, big.depths, big.focal_levels) == expected_l
    assert t.use_conv_embed and t.use_postln and t.use_layerscale and t.scaling_modulator
    assert t.num_features == [96, 192, 384, 768]


def _modulation_direct(m, x: torch.Tensor) -> torch.Tensor:
    """Focal modulation on x [B, C, H, W], channels-first, from the parameters."""
    c, levels = x.shape[1], m.focal_level
    y = torch.einsum("bchw,oc->bohw", x, m.f.weight) + m.f.bias[None, :, None, None]
    q, ctx, gates = y[:, :c], y[:, c : 2 * c], y[:, 2 * c :]
    agg = torch.zeros_like(q)
    for level in range(levels):
        w = m.focal_layers[level][0].weight
        ctx = F.gelu(F.conv2d(ctx, w, padding=w.shape[-1] // 2, groups=c))
        agg = agg + ctx * gates[:, level : level + 1]
    agg = agg + F.gelu(ctx.mean(dim=(2, 3), keepdim=True)) * gates[:, levels:]
    agg = agg / (levels + 1)  # scaling_modulator
    modulator = F.conv2d(agg, m.h.weight, m.h.bias)
    out = q * modulator
    return torch.einsum("bchw,oc->bohw", out, m.proj.weight) + m.proj.bias[None, :, None, None]


def _ln(x: torch.Tensor, norm) -> torch.Tensor:
    """LayerNorm over the channel axis of [B, C, H, W]."""
    y = F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias)
    return y.permute(0, 3, 1, 2)


def _mlp(x: torch.Tensor, mlp) -> torch.Tensor:
    h = x.permute(0, 2, 3, 1)
    return F.linear(F.gelu(F.linear(h, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias).permute(
        0, 3, 1, 2
    )


def _block_direct(blk, x: torch.Tensor, variant: str) -> torch.Tensor:
    """One post-LN block on x [B, C, H, W] with layerscale gammas g1, g2."""
    g1, g2 = blk.gamma_1[None, :, None, None], blk.gamma_2[None, :, None, None]
    if variant == "focal_dw":
        x = x + F.conv2d(x, blk.dw1.weight, blk.dw1.bias, padding=1, groups=x.shape[1])
        x = _ln(x + g1 * _modulation_direct(blk.modulation, x), blk.norm1)
        x = x + F.conv2d(x, blk.dw2.weight, blk.dw2.bias, padding=1, groups=x.shape[1])
        return _ln(x + g2 * _mlp(x, blk.mlp), blk.norm2)
    x = x + g1 * _ln(_modulation_direct(blk.modulation, x), blk.norm1)
    return x + g2 * _ln(_mlp(x, blk.mlp), blk.norm2)


@pytest.mark.parametrize("variant", ["focal_dw", "focal"])
def test_block_matches_direct_computation(variant: str) -> None:
    cfg = FocalNetConfig(variant=variant)
    blk = FocalModulationBlock(dim=12, cfg=cfg, focal_level=3, focal_window=3).eval()
    _randomize(blk)
    x = torch.randn(2, 12, 9, 7)
    with torch.no_grad():
        ours = blk(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        ref = _block_direct(blk, x, variant)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)


def test_stem_padding_differs_between_variants() -> None:
    dw = FocalNet(FocalNetConfig.tiny())
    plain = FocalNet(FocalNetConfig(variant="focal", embed_dim=16, depths=(1, 1, 1, 1)))
    assert dw.patch_embed.proj.padding == (3, 3) and plain.patch_embed.proj.padding == (2, 2)
    assert dw.patch_embed.proj.kernel_size == (7, 7) and dw.patch_embed.proj.stride == (4, 4)
    assert not hasattr(plain.layers[0].blocks[0], "dw1")


def test_bad_input_is_a_one_line_error() -> None:
    net = FocalNet(FocalNetConfig.tiny())
    with pytest.raises(SelfSegError, match="expected images"):
        net(torch.randn(3, 32, 32))
