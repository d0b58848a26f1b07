"""X-Decoder's pixel decoder (`transformer_encoder_fpn`): a transformer encoder on res5, then an FPN.

    features {res2..res5: [B, C_i, H/4..H/32, W/4..W/32]}
      -> res5: 1x1 input_proj, + sine position, `layers` post-norm encoder layers, 3x3 conv (layer_4)
      -> res4, res3, res2: 1x1 lateral (adapter_k) + nearest-upsampled coarser map, 3x3 conv (layer_k)
      -> mask_features [B, mask_dim, H/4, W/4] (3x3 conv of the res2 map)
         multi_scale_features: the res5, res4, res3 maps [B, conv_dim, h, w] (low to high resolution)

Attribute names reproduce the official module tree (`sem_seg_head.pixel_decoder.*`), so the
official checkpoints load name for name. Convolutions with a norm carry it as `.norm` (detectron2's
Conv2d layout): conv, GroupNorm(32), ReLU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PixelDecoderConfig:
    """Defaults: Focal-T's `MODEL.ENCODER` (+ the decoder's head count / FFN width the encoder reuses)."""

    in_channels: tuple[int, ...] = (96, 192, 384, 768)  # res2..res5 (Focal-T: 96 * 2^i)
    conv_dim: int = 512
    mask_dim: int = 512
    encoder_layers: int = 6
    heads: int = 8
    ffn_dim: int = 2048
    groups: int = 32  # GroupNorm groups ("GN")


class ConvNorm(nn.Conv2d):
    """detectron2's Conv2d with a norm and an activation applied after the convolution."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int | None, relu: bool) -> None:
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=groups is None)
        self.norm = nn.GroupNorm(groups, cout) if groups else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def sine_position(x: torch.Tensor, num_feats: int) -> torch.Tensor:
    """DETR's normalised sine embedding for a [B, C, H, W] map -> [B, 2 * num_feats, H, W] (y then x)."""
    b, _, h, w = x.shape
    ones = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    y = ones.cumsum(1, dtype=x.dtype)
    xx = ones.cumsum(2, dtype=x.dtype)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    xx = xx / (xx[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=x.dtype, device=x.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    px, py = xx[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; positions are added to queries and keys only."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # [HW, B, C] -> same
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src, need_weights=False)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class _Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _Transformer(nn.Module):
    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__()
        self.encoder = _Encoder(
            [EncoderLayer(cfg.conv_dim, cfg.heads, cfg.ffn_dim) for _ in range(cfg.encoder_layers)]
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # [B, C, h, w] -> same
        b, c, h, w = x.shape
        src, pos = x.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)
        for layer in self.encoder.layers:
            src = layer(src, pos)
        return src.permute(1, 2, 0).reshape(b, c, h, w)


class PixelDecoder(nn.Module):
    """`transformer_encoder_fpn` with the official parameter names (see the module docstring)."""

    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, groups = cfg.conv_dim, cfg.groups
        n = len(cfg.in_channels)
        for idx, cin in enumerate(cfg.in_channels[:-1]):  # res2..res4: lateral adapters + output convs
            self.add_module(f"adapter_{idx + 1}", ConvNorm(cin, dim, 1, groups, relu=False))
            self.add_module(f"layer_{idx + 1}", ConvNorm(dim, dim, 3, groups, relu=True))
        self.add_module(f"layer_{n}", ConvNorm(dim, dim, 3, groups, relu=True))  # after the transformer
        self.mask_features = nn.Conv2d(dim, cfg.mask_dim, 3, padding=1)
        self.input_proj = nn.Conv2d(cfg.in_channels[-1], dim, 1)
        self.transformer = _Transformer(cfg)

    def forward(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """-> (mask_features [B, mask_dim, H/4, W/4], transformer output [B, C, H/32, W/32],
        multi-scale features [res5, res4, res3] maps)."""
        names = sorted(features)  # res2 .. res5
        n = len(names)
        x5 = features[names[-1]]
        encoded = self.transformer(self.input_proj(x5), sine_position(x5, self.cfg.conv_dim // 2))
        y = getattr(self, f"layer_{n}")(encoded)
        multi_scale = [y]
        for idx in range(n - 2, -1, -1):  # res4, res3, res2
            lateral = getattr(self, f"adapter_{idx + 1}")(features[names[idx]])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{idx + 1}")(y)
            if len(multi_scale) < 3:
                multi_scale.append(y)
        return self.mask_features(y), encoded, multi_scale
