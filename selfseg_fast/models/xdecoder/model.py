"""The X-Decoder model (official module and parameter names) and how it is built for each kind of weights.

build_model(variant, weights, seed, checkpoint) -> XDecoder
  pretrained: the official checkpoint (strict load by official names, `checkpoint.py`)
  random: the variant's full size with seeded weights (same FLOPs); random-tiny: a test-size model
"""

from __future__ import annotations

import torch
from torch import nn

from selfseg_fast.errors import WeightsError
from selfseg_fast.models.xdecoder.backbone import FocalNet
from selfseg_fast.models.xdecoder.checkpoint import (
    DEFAULT_CHECKPOINT,
    load_official_weights,
    read_checkpoint,
    resolve_source,
)
from selfseg_fast.models.xdecoder.config import XDecoderConfig
from selfseg_fast.models.xdecoder.decoder import XDecoderHead
from selfseg_fast.models.xdecoder.pixel_decoder import PixelDecoder


class _SemSegHead(nn.Module):
    def __init__(self, cfg: XDecoderConfig) -> None:
        super().__init__()
        self.pixel_decoder = PixelDecoder(cfg.pixel)
        self.predictor = XDecoderHead(cfg.decoder, cfg.language)


class XDecoder(nn.Module):
    """Backbone + pixel decoder + decoder, named as the official model (`backbone.*`, `sem_seg_head.*`)."""

    def __init__(self, cfg: XDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = FocalNet(cfg.backbone)
        self.sem_seg_head = _SemSegHead(cfg)

    @property
    def language(self):
        return self.sem_seg_head.predictor.lang_encoder

    def forward_image(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W] normalised (H, W multiples of 32) -> class_embed [B, Q, P] (before the
        text), pred_masks [B, Q, H/4, W/4]."""
        features = self.backbone(images)
        mask_features, _, multi_scale = self.sem_seg_head.pixel_decoder(features)
        return self.sem_seg_head.predictor.forward_image(multi_scale, mask_features)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W], text [K, P] -> pred_logits [B, Q, K], pred_masks [B, Q, H/4, W/4]."""
        out = self.forward_image(images)
        logits = self.language.compute_similarity(out["class_embed"], text)
        return {"pred_logits": logits, "pred_masks": out["pred_masks"]}


def build_model(
    variant: str, weights: str, seed: int, checkpoint: str | None, official_config: str | None = None
) -> XDecoder:
    """The model for --weights pretrained (official checkpoint) | random (full size) | random-tiny.
    `official_config` (an official yaml) sets the sizes instead of `variant`. The checkpoint and config
    are read before the model is built, so a missing file fails at once."""
    state = None
    if weights == "pretrained":
        try:
            state = read_checkpoint(checkpoint or DEFAULT_CHECKPOINT[variant])
        except WeightsError as exc:
            official = resolve_source(DEFAULT_CHECKPOINT[variant])
            fix = (
                f"download {official} and pass --checkpoint PATH"
                if checkpoint is None or resolve_source(checkpoint) == official
                else f"pass --checkpoint with an official X-Decoder {variant} file (e.g. {official})"
            )
            raise WeightsError(
                f"X-Decoder {variant} weights unavailable ({exc}); {fix} "
                "(or --set segmenter.checkpoint=PATH), or run with --weights random or --weights random-tiny"
            ) from None
    if weights == "random-tiny":
        cfg = XDecoderConfig.tiny()
    elif official_config:
        cfg = XDecoderConfig.from_official_yaml(official_config)
    else:
        cfg = XDecoderConfig.for_variant(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = XDecoder(cfg)
        if state is None:
            _random_init(model)
    if state is not None:
        load_official_weights(model, state)
    return model.eval()


def _random_init(model: nn.Module) -> None:
    """Seeded weights with unit-scale activations (the official init leaves layerscale at 1e-4 and
    the projections tiny, which makes a random model's output nearly constant)."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, std=(1.0 / p[0].numel()) ** 0.5)
        elif "gamma" in name:
            nn.init.constant_(p, 0.5)
        elif name.endswith("logit_scale"):
            nn.init.constant_(p, 2.0)
