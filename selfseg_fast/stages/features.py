"""Stage 1: images -> multi-resolution BLIP patch features, each patch ++ a 2-D sin-cos embedding.

    images (list of [H, W, 3] uint8)
      -> per resolution r in (384, 512): BLIP preprocessing (bicubic resize to r x r, CLIP mean/std)
      -> vision tower (post-LN last hidden state, as BLIP's captioner feeds its decoder), CLS dropped
      -> PatchFeatures(tokens [B, (r/16)^2, 1024], with_position [B, (r/16)^2, 1024 + 256])

The sin-cos embedding (`sincos_2d`) is the `positional-encodings` library's PositionalEncoding2D with
256 channels: the first 128 encode the row, the last 128 the column, sin/cos interleaved (tested
against the library). It serves clustering only; captioning uses the 1024-d tokens.

Reference: HF `BlipVisionModel` in fp32 (eager attention, `interpolate_pos_encoding=True`), one
resolution at a time. Fast (`FastEncoder`): the SDPA tower of `models/blip_vision_fast.py` in fp16
(bf16 on request) on CUDA, fp32 on CPU, with preprocessing done on the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.models.blip import BlipBundle
from selfseg_fast.records import PatchFeatures


def sincos_2d(height: int, width: int, dim: int = 256) -> torch.Tensor:
    """[height * width, dim] 2-D sin-cos embedding (row-major patches), as PositionalEncoding2D(dim)."""
    channels = int(np.ceil(dim / 4) * 2)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, channels, 2).float() / channels))

    def axis(n: int) -> torch.Tensor:  # [n, channels], sin and cos interleaved
        angles = torch.arange(n, dtype=torch.float32)[:, None] * inv_freq[None, :]
        return torch.stack([angles.sin(), angles.cos()], -1).flatten(1)

    emb = torch.zeros(height, width, 2 * channels)
    emb[:, :, :channels] = axis(height)[:, None, :]
    emb[:, :, channels:] = axis(width)[None, :, :]
    return emb[:, :, :dim].reshape(height * width, dim)


def preprocess(rgb: np.ndarray, size: int, cfg: SelfSegConfig) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, size, size] float32: BLIP's processor (PIL bicubic, rescale, normalise)."""
    resized = np.asarray(Image.fromarray(rgb).resize((size, size), resample=Image.BICUBIC), dtype=np.float32)
    mean = np.asarray(cfg.encoder.image_mean, dtype=np.float32)
    std = np.asarray(cfg.encoder.image_std, dtype=np.float32)
    return torch.from_numpy(((resized / 255.0 - mean) / std).transpose(2, 0, 1).copy())


def _with_position(tokens: torch.Tensor, grid: int, cfg: SelfSegConfig) -> torch.Tensor:
    pos = sincos_2d(grid, grid, cfg.encoder.pos_embed_dim).to(tokens.device, tokens.dtype)
    return torch.cat([tokens, pos.expand(tokens.shape[0], -1, -1)], -1)


@torch.inference_mode()
def encode_reference(
    bundle: BlipBundle, images: list[np.ndarray], cfg: SelfSegConfig
) -> dict[int, PatchFeatures]:
    """HF BLIP vision model (fp32, eager) at each resolution -> {resolution: PatchFeatures}."""
    out: dict[int, PatchFeatures] = {}
    vision = bundle.model.vision_model
    for res in cfg.encoder.resolutions:
        pixels = torch.stack([preprocess(rgb, res, cfg) for rgb in images]).to(bundle.device)
        hidden = vision(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state  # [B, 1+N, C]
        tokens = hidden[:, 1:].float()
        grid = res // bundle.patch_size
        out[res] = PatchFeatures(res, (grid, grid), tokens, _with_position(tokens, grid, cfg))
    return out


class FastEncoder:
    """Batched encoder: device-side preprocessing, SDPA vision tower in fp16 on CUDA (fp32 on CPU)."""

    def __init__(self, bundle: BlipBundle, cfg: SelfSegConfig, device: torch.device | str) -> None:
        from selfseg_fast.models.blip_vision_fast import FastBlipVision

        self.cfg = cfg
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.dtype, torch.float32)
        if not on_gpu:
            self.dtype = torch.float32
        self.patch = bundle.patch_size
        self.tower = FastBlipVision.from_hf(bundle.model.vision_model, self.dtype).to(self.device)
        self.bucketed = cfg.compile
        if cfg.compile:
            mode = "reduce-overhead" if on_gpu else "default"  # reduce-overhead = CUDA graphs
            self.tower = torch.compile(self.tower, mode=mode, dynamic=False)
        self.mean = torch.tensor(cfg.encoder.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.encoder.image_std, device=self.device).view(1, 3, 1, 1)

    def pixels(self, images: list[np.ndarray], size: int) -> torch.Tensor:
        """[B, 3, size, size] normalised; the resize runs in PIL (bicubic, identical to the reference)."""
        resized = np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
        )
        x = torch.from_numpy(resized).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
        return ((x - self.mean) / self.std).to(self.dtype)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> dict[int, PatchFeatures]:
        out: dict[int, PatchFeatures] = {}
        n = len(images)
        for res in self.cfg.encoder.resolutions:
            pixels = self.pixels(images, res)
            if self.bucketed:  # fixed shapes for compiled / graph-captured code: pad to a power of two
                bucket = 1 << (n - 1).bit_length()
                pixels = (
                    torch.cat([pixels, pixels[-1:].expand(bucket - n, -1, -1, -1)]) if bucket > n else pixels
                )
            hidden = self.tower(pixels)[:n]  # [B, 1+N, C]
            tokens = hidden[:, 1:]
            grid = res // self.patch
            out[res] = PatchFeatures(
                res, (grid, grid), tokens, _with_position(tokens.float(), grid, self.cfg)
            )
        return out


def resize_bicubic_on_device(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bicubic resize on the device ([B, 3, H, W] float): an option for huge batches where
    PIL's CPU resize is the bottleneck; differs from PIL by interpolation rounding (not the default)."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
