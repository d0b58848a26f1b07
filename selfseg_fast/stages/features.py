"""Stage 1: images -> multi-resolution BLIP patch features, each patch ++ a 2-D sin-cos embedding.

    images (list of [H, W, 3] uint8)
      -> per resolution r in (384, 512): BLIP preprocessing (bicubic resize to r x r, CLIP mean/std)
      -> vision tower (post-LN last hidden state, as BLIP's captioner feeds its decoder), CLS dropped
      -> PatchFeatures(tokens [B, (r/16)^2, 1024], position [(r/16)^2, 256])

The sin-cos embedding (`sincos_2d`) is the `positional-encodings` library's PositionalEncoding2D with
256 channels: the first 128 encode the row, the last 128 the column, sin/cos interleaved (tested
against the library). It serves clustering only; captioning uses the 1024-d tokens.

Reference: HF `BlipVisionModel` in fp32 (eager attention, `interpolate_pos_encoding=True`), one
resolution at a time. Fast (`FastEncoder`): the SDPA tower of `models/blip_vision_fast.py` in fp16
(bf16 on request) on CUDA, fp32 on CPU; the PIL resize (the same bicubic resize as BLIP's processor)
runs on the host in worker threads (`stages/prepare.py`), the uint8 pixels are copied to the device
(pinned, non-blocking on CUDA) and normalised there.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from PIL import Image

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.models.blip import BlipBundle
from selfseg_fast.models.blip_vision_fast import FastBlipVision
from selfseg_fast.plan import ExecutionPlan
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


@cache
def _position(grid: int, dim: int) -> torch.Tensor:
    return sincos_2d(grid, grid, dim)


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
        grid = res // bundle.patch_size
        out[res] = PatchFeatures(
            res, (grid, grid), hidden[:, 1:].float(), _position(grid, cfg.encoder.pos_embed_dim)
        )
    return out


def resize_for_encoder(rgb: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [size, size, 3] uint8 with PIL bicubic, exactly as BLIP's processor resizes."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), resample=Image.BICUBIC))


class FastEncoder:
    """Batched encoder: uint8 pixels (resized on the host, see `stages/prepare.py`) normalised on the
    device, the SDPA vision tower in the plan's dtype (fp16 on CUDA, fp32 on CPU)."""

    def __init__(self, bundle: BlipBundle, cfg: SelfSegConfig, plan: ExecutionPlan) -> None:
        self.cfg = cfg
        self.device = plan.device
        self.dtype = plan.dtype
        self.patch = bundle.patch_size
        self.tower = FastBlipVision.from_hf(bundle.model.vision_model, self.dtype).to(self.device)
        self.bucketed = plan.compile_encoder
        if plan.compile_encoder:
            mode = "reduce-overhead" if plan.on_gpu else "default"  # reduce-overhead = CUDA graphs
            self.tower = torch.compile(self.tower, mode=mode, dynamic=False)
        self.mean = torch.tensor(cfg.encoder.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.encoder.image_std, device=self.device).view(1, 3, 1, 1)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, S, S, 3] uint8 (host, pinned on CUDA) -> [B, 3, S, S] normalised, on the device."""
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
        return ((x - self.mean) / self.std).to(self.dtype)

    @torch.inference_mode()
    def encode(self, pixels: dict[int, torch.Tensor]) -> dict[int, PatchFeatures]:
        """{resolution: [B, r, r, 3] uint8} -> {resolution: PatchFeatures [B, (r/16)^2, C]}."""
        out: dict[int, PatchFeatures] = {}
        for res, batch in pixels.items():
            x = self.normalise(batch)
            n = x.shape[0]
            if self.bucketed:  # fixed shapes for compiled / graph-captured code: pad to a power of two
                bucket = 1 << (n - 1).bit_length()
                x = torch.cat([x, x[-1:].expand(bucket - n, -1, -1, -1)]) if bucket > n else x
            hidden = self.tower(x)[:n]  # [B, 1+N, C]
            grid = res // self.patch
            out[res] = PatchFeatures(
                res, (grid, grid), hidden[:, 1:], _position(grid, self.cfg.encoder.pos_embed_dim)
            )
        return out

    def __call__(self, images: list[np.ndarray]) -> dict[int, PatchFeatures]:
        """Resize inline and encode (tools and tests; the engine prepares pixels off the critical path)."""
        return self.encode(
            {
                res: torch.from_numpy(np.stack([resize_for_encoder(im, res) for im in images]))
                for res in self.cfg.encoder.resolutions
            }
        )
