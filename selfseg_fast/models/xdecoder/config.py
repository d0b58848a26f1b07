"""X-Decoder's model shape: one dataclass per module (defined beside it), gathered here per variant.

focal-t  `xdecoder_focalt_last.pt` / `xdecoder_focalt_best_openseg.pt` (the paper's segmenter)
focal-l  `xdecoder_focall_last.pt`
tiny     a few-layer random-weight model for tests and the offline demo
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfseg_fast.errors import SelfSegError
from selfseg_fast.models.xdecoder.backbone import FocalNetConfig
from selfseg_fast.models.xdecoder.decoder import DecoderConfig
from selfseg_fast.models.xdecoder.language import LanguageConfig
from selfseg_fast.models.xdecoder.pixel_decoder import PixelDecoderConfig

VARIANTS = ("focal-t", "focal-l", "tiny")


@dataclass
class XDecoderConfig:
    """The whole model's shape. Defaults: Focal-T (`xdecoder_focalt_last.pt`)."""

    backbone: FocalNetConfig = field(default_factory=FocalNetConfig.focal_t)
    pixel: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)

    @classmethod
    def focal_t(cls) -> XDecoderConfig:
        return cls()

    @classmethod
    def focal_l(cls) -> XDecoderConfig:
        """Focal-L (`xdecoder_focall_last.pt`): backbone 192-d, depths 2-2-18-2; 200 object queries + the
        class token (`NUM_OBJECT_QUERIES: 201` in focall_unicl_lang.yaml); otherwise Focal-T's heads."""
        backbone = FocalNetConfig.focal_l()
        return cls(
            backbone=backbone,
            pixel=PixelDecoderConfig(in_channels=tuple(backbone.num_features)),
            decoder=DecoderConfig(num_queries=201),
        )

    @classmethod
    def tiny(cls) -> XDecoderConfig:
        """A few-layer random-weight model for tests and the offline demo (real CLIP vocabulary)."""
        backbone = FocalNetConfig.tiny()
        return cls(
            backbone=backbone,
            pixel=PixelDecoderConfig(
                in_channels=tuple(backbone.num_features),
                conv_dim=64,
                mask_dim=64,
                encoder_layers=1,
                heads=4,
                ffn_dim=128,
            ),
            decoder=DecoderConfig(
                in_channels=64,
                hidden=64,
                proj_dim=32,
                num_queries=11,
                heads=4,
                ffn_dim=128,
                dec_layers=4,
                mask_dim=64,
            ),
            language=LanguageConfig.tiny(),
        )

    @classmethod
    def for_variant(cls, name: str) -> XDecoderConfig:
        """'focal-t' | 'focal-l' | 'tiny' -> its config."""
        if name not in VARIANTS:
            raise SelfSegError(f"unknown X-Decoder variant {name!r}; use one of {', '.join(VARIANTS)}")
        return {"focal-t": cls.focal_t, "focal-l": cls.focal_l, "tiny": cls.tiny}[name]()
