"""BLIP's ViT vision tower, written for speed: fused-kernel attention (SDPA), fp16/bf16, any resolution.

Loads the very same weights as HF's `BlipVisionModel` (its state dict, unchanged names), so the
pretrained, random and random-tiny models all work. HF's BLIP has only eager attention (matmul,
softmax, matmul in the model dtype); here attention is `scaled_dot_product_attention` (flash /
memory-efficient kernels on CUDA), and the interpolated position embedding for each resolution is
computed once and cached. Parity with HF in fp32 is tested (max abs error, see tests/test_features.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # same layout as HF: [3, heads, head_dim] on the output axis
        self.projection = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, N, C]
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, head_dim]
        return self.projection(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, heads)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, hidden)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, dim: int, patch: int, image_size: int) -> None:
        super().__init__()
        self.patch_size = patch
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.position_embedding = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self._cache: dict[tuple, torch.Tensor] = {}

    def position_for(self, height: int, width: int) -> torch.Tensor:
        """[1, 1 + h*w, C] position embedding for a height x width input (HF's bicubic interpolation)."""
        key = (height, width, self.position_embedding.dtype, self.position_embedding.device)
        if key not in self._cache:
            pos = self.position_embedding.detach()
            n = pos.shape[1] - 1
            side = int(round(n**0.5))
            h, w = height // self.patch_size, width // self.patch_size
            if h * w == n and h == w:
                self._cache[key] = pos
            else:
                grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
                grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
                grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(pos.dtype)
                self._cache[key] = torch.cat([pos[:, :1], grid], 1)
        return self._cache[key]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, 1 + h*w, C]
        patches = (
            self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        )
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1).to(patches.dtype)
        return torch.cat([cls, patches], 1) + self.position_for(pixels.shape[2], pixels.shape[3]).to(
            patches.dtype
        )


class _Encoder(nn.Module):
    def __init__(self, layers: list[_Layer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class FastBlipVision(nn.Module):
    """HF BlipVisionModel's function with SDPA attention; `load_state_dict` takes HF's state dict."""

    def __init__(self, config) -> None:  # a transformers BlipVisionConfig
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = _Embeddings(dim, config.patch_size, config.image_size)
        self.encoder = _Encoder(
            [
                _Layer(dim, config.num_attention_heads, config.intermediate_size, eps)
                for _ in range(config.num_hidden_layers)
            ]
        )
        self.post_layernorm = nn.LayerNorm(dim, eps=eps)

    @classmethod
    def from_hf(cls, vision_model: nn.Module, dtype: torch.dtype | None = None) -> FastBlipVision:
        """A copy of HF's `model.vision_model` (same weights), on its device, optionally cast."""
        fast = cls(vision_model.config)
        fast.load_state_dict(vision_model.state_dict(), strict=True)
        param = next(vision_model.parameters())
        return fast.to(device=param.device, dtype=dtype or param.dtype).eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, 1 + h*w, C] (post-LN)
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)
