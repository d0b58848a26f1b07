"""FocalNet backbone of X-Decoder (focal modulation, not attention), in plain PyTorch.

Two official variants share one module: `focal_dw` (Focal-T checkpoints: a depth-wise 3x3 conv before the
modulation and before the MLP, norm after each residual add) and `focal` (Focal-L checkpoints: no depth-wise
convs, post-norm inside the residual branch, stem conv padding 2). Attribute names reproduce the official
parameter names (`patch_embed.proj`, `layers.{i}.blocks.{j}.modulation.f`, `norm{i}`, ...), so the official
`backbone.*` weights load with a plain `load_state_dict`. Blocks run channels-last ([B, H, W, C]) and only
switch to channels-first around the convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfseg_fast.errors import SelfSegError


@dataclass
class FocalNetConfig:
    """The backbone's shape. Defaults: Focal-T as in the official `focalt_unicl_lang.yaml`."""

    variant: Literal["focal_dw", "focal"] = "focal_dw"
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    focal_levels: tuple[int, ...] = (3, 3, 3, 3)
    focal_windows: tuple[int, ...] = (3, 3, 3, 3)
    focal_factor: int = 2  # kernel of focal level l: focal_factor * l + focal_window
    mlp_ratio: float = 4.0
    patch_size: int = 4
    in_chans: int = 3
    use_conv_embed: bool = True  # overlapping conv stem (7x7 / 4) and 3x3 / 2 downsampling
    use_postln: bool = True
    use_postln_in_modulation: bool = False
    scaling_modulator: bool = True  # divide the aggregated context by focal_level + 1
    use_layerscale: bool = True
    layerscale_value: float = 1e-4  # init only; the checkpoint overwrites gamma_1 / gamma_2
    patch_norm: bool = True
    out_indices: tuple[int, ...] = (0, 1, 2, 3)

    @classmethod
    def focal_t(cls) -> FocalNetConfig:
        """Focal-T (`xdecoder_focalt_last.pt`, `xdecoder_focalt_best_openseg.pt`)."""
        return cls()

    @classmethod
    def focal_l(cls) -> FocalNetConfig:
        """Focal-L (`xdecoder_focall_last.pt`): the non-dw `focal` code, embed 192, depths 2-2-18-2."""
        return cls(variant="focal", embed_dim=192, depths=(2, 2, 18, 2), focal_levels=(4, 4, 4, 4))

    @classmethod
    def tiny(cls) -> FocalNetConfig:
        """A small random-weight test model with the Focal-T code path."""
        return cls(embed_dim=16, depths=(1, 1, 2, 1), focal_levels=(2, 2, 2, 2))

    @property
    def num_features(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (official `Mlp`; dropout is 0 at inference)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FocalModulation(nn.Module):
    """Query times an aggregated multi-level context: q * h(sum_l gate_l * ctx_l + gate_g * ctx_global)."""

    def __init__(self, dim: int, cfg: FocalNetConfig, focal_level: int, focal_window: int) -> None:
        super().__init__()
        self.focal_level = focal_level
        self.scaling_modulator = cfg.scaling_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, kernel_size=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for level in range(focal_level):
            k = cfg.focal_factor * level + focal_window
            conv = nn.Conv2d(dim, dim, kernel_size=k, padding=k // 2, groups=dim, bias=False)
            self.focal_layers.append(nn.Sequential(conv, nn.GELU()))  # keys: focal_layers.{l}.0.weight
        self.ln = nn.LayerNorm(dim) if cfg.use_postln_in_modulation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        c = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2)  # [B, 2C+L+1, H, W]
        q, ctx, gates = torch.split(x, (c, c, self.focal_level + 1), dim=1)
        ctx_all = 0
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(dim=(2, 3), keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level :]
        if self.scaling_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        out = (q * self.h(ctx_all)).permute(0, 2, 3, 1)  # [B, H, W, C]
        if self.ln is not None:
            out = self.ln(out)
        return self.proj(out)


def _dwconv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Residual depth-wise conv on a channels-last map: x + conv(x), x [B, H, W, C]."""
    return x + conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FocalModulationBlock(nn.Module):
    """One block; `variant` picks the official `focal_dw` or `focal` wiring (see the module docstring)."""

    def __init__(self, dim: int, cfg: FocalNetConfig, focal_level: int, focal_window: int) -> None:
        super().__init__()
        self.dw = cfg.variant == "focal_dw"
        self.use_postln = cfg.use_postln
        if self.dw:
            self.dw1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, cfg, focal_level, focal_window)
        if self.dw:
            self.dw2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        if cfg.use_layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), cfg.layerscale_value))
            self.gamma_2 = nn.Parameter(torch.full((dim,), cfg.layerscale_value))
        else:
            self.gamma_1 = self.gamma_2 = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        return self._forward_dw(x) if self.dw else self._forward_plain(x)

    def _forward_dw(self, x: torch.Tensor) -> torch.Tensor:
        x = _dwconv(x, self.dw1)
        shortcut = x
        x = self.modulation(x if self.use_postln else self.norm1(x))
        x = shortcut + self.gamma_1 * x
        if self.use_postln:
            x = self.norm1(x)
        x = _dwconv(x, self.dw2)
        if self.use_postln:
            return self.norm2(x + self.gamma_2 * self.mlp(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.modulation(x if self.use_postln else self.norm1(x))
        if self.use_postln:
            x = self.norm1(x)
        x = shortcut + self.gamma_1 * x
        if self.use_postln:
            return x + self.gamma_2 * self.norm2(self.mlp(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Strided conv + LayerNorm; the stem (stride 4) and the between-stage downsampling (stride 2)."""

    def __init__(self, cfg: FocalNetConfig, in_chans: int, embed_dim: int, *, is_stem: bool) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size if is_stem else 2
        if cfg.use_conv_embed:
            stem_pad = 3 if cfg.variant == "focal_dw" else 2  # the two official files differ here
            k, s, p = (7, 4, stem_pad) if is_stem else (3, 2, 1)
        else:
            k, s, p = self.patch_size, self.patch_size, 0
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=k, stride=s, padding=p)
        self.norm = nn.LayerNorm(embed_dim) if cfg.patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, H', W', C'] (right/bottom zero-padded to a multiple of the stride first)."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class BasicLayer(nn.Module):
    """One stage: blocks, then (except for the last stage) the downsampling PatchEmbed."""

    def __init__(self, cfg: FocalNetConfig, stage: int) -> None:
        super().__init__()
        dim = cfg.num_features[stage]
        level, window = cfg.focal_levels[stage], cfg.focal_windows[stage]
        self.blocks = nn.ModuleList(
            FocalModulationBlock(dim, cfg, level, window) for _ in range(cfg.depths[stage])
        )
        last = stage == len(cfg.depths) - 1
        self.downsample = None if last else PatchEmbed(cfg, dim, 2 * dim, is_stem=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, H, W, C] -> (stage output [B, H, W, C], next stage input [B, H/2, W/2, 2C])."""
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is None:
            return x, x
        return x, self.downsample(x.permute(0, 3, 1, 2))


class FocalNet(nn.Module):
    """Image backbone: x [B, 3, H, W] -> {"res2": [B, C, H/4, W/4], ..., "res5": [B, 8C, H/32, W/32]}."""

    size_divisibility = 32

    def __init__(self, cfg: FocalNetConfig) -> None:
        super().__init__()
        n = len(cfg.depths)
        if not (len(cfg.focal_levels) == len(cfg.focal_windows) == n):
            raise SelfSegError("FocalNetConfig: give depths, focal_levels and focal_windows 1 per stage")
        self.cfg = cfg
        self.num_features = cfg.num_features
        self.patch_embed = PatchEmbed(cfg, cfg.in_chans, cfg.embed_dim, is_stem=True)
        self.layers = nn.ModuleList(BasicLayer(cfg, i) for i in range(n))
        for i in cfg.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """Feature name -> (channels, stride), as detectron2's ShapeSpec would give."""
        return {f"res{i + 2}": (self.num_features[i], 4 * 2**i) for i in self.cfg.out_indices}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, 3, H, W] (normalized pixels) -> dict res{i+2}: [B, C_i, ceil(H / 2^(i+2)), ...]."""
        if x.dim() != 4 or x.shape[1] != self.cfg.in_chans:
            shape = tuple(x.shape)
            raise SelfSegError(f"FocalNet: expected images [B, {self.cfg.in_chans}, H, W], got {shape}")
        x = self.patch_embed(x)  # [B, H/4, W/4, C]
        outs: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            if i in self.cfg.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs[f"res{i + 2}"] = out.permute(0, 3, 1, 2).contiguous()
        return outs
