"""X-Decoder's model shape: one dataclass per module (defined beside it), gathered here per variant.

focal-t  `xdecoder_focalt_last.pt` / `xdecoder_focalt_best_openseg.pt` (the paper's segmenter)
focal-l  `xdecoder_focall_last.pt`
tiny     a few-layer random-weight model for tests and the offline demo
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    def from_official(cls, cfg: Mapping[str, Any]) -> XDecoderConfig:
        """Build from an official X-Decoder config (the parsed yaml, e.g. `focalt_unicl_lang.yaml`), so
        any checkpoint trained with the official code loads with the sizes it was trained with."""
        try:
            m = cfg["MODEL"]
            f, enc, dec, text = m["BACKBONE"]["FOCAL"], m["ENCODER"], m["DECODER"], m["TEXT"]
            backbone = FocalNetConfig(
                variant="focal_dw" if m["BACKBONE"]["NAME"] == "focal_dw" else "focal",
                embed_dim=f["EMBED_DIM"],
                depths=tuple(f["DEPTHS"]),
                focal_levels=tuple(f["FOCAL_LEVELS"]),
                focal_windows=tuple(f["FOCAL_WINDOWS"]),
                mlp_ratio=f.get("MLP_RATIO", 4.0),
                patch_size=f.get("PATCH_SIZE", 4),
                use_conv_embed=f.get("USE_CONV_EMBED", True),
                use_postln=f.get("USE_POSTLN", True),
                use_postln_in_modulation=f.get("USE_POSTLN_IN_MODULATION", False),
                scaling_modulator=f.get("SCALING_MODULATOR", True),
                use_layerscale=f.get("USE_LAYERSCALE", True),
                patch_norm=f.get("PATCH_NORM", True),
            )
            return cls(
                backbone=backbone,
                pixel=PixelDecoderConfig(
                    in_channels=tuple(backbone.num_features),
                    conv_dim=enc["CONVS_DIM"],
                    mask_dim=enc["MASK_DIM"],
                    encoder_layers=enc["TRANSFORMER_ENC_LAYERS"],
                    heads=dec["NHEADS"],
                    ffn_dim=dec["DIM_FEEDFORWARD"],
                ),
                decoder=DecoderConfig(
                    in_channels=enc["CONVS_DIM"],
                    hidden=dec["HIDDEN_DIM"],
                    proj_dim=m["DIM_PROJ"],
                    num_queries=dec["NUM_OBJECT_QUERIES"],
                    heads=dec["NHEADS"],
                    ffn_dim=dec["DIM_FEEDFORWARD"],
                    dec_layers=dec["DEC_LAYERS"],
                    mask_dim=enc["MASK_DIM"],
                    context_length=text["CONTEXT_LENGTH"],
                    enforce_input_proj=dec.get("ENFORCE_INPUT_PROJ", False),
                ),
                language=LanguageConfig(
                    vocab_size=cfg.get("VOCAB_SIZE", LanguageConfig.vocab_size),
                    context_length=text["CONTEXT_LENGTH"],
                    width=text["WIDTH"],
                    layers=text["LAYERS"],
                    heads=text["HEADS"],
                    proj_dim=m["DIM_PROJ"],
                    autoregressive=text.get("AUTOGRESSIVE", True),
                ),
            )
        except (KeyError, TypeError) as exc:
            raise SelfSegError(
                f"not an official X-Decoder config: missing or malformed entry {exc}; "
                "give a yaml from microsoft/X-Decoder's configs/xdecoder/"
            ) from None

    @classmethod
    def from_official_yaml(cls, path: str | Path) -> XDecoderConfig:
        """`from_official` on a yaml file (its `_BASE_` includes are not followed: give a complete file)."""
        import yaml

        try:
            cfg = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SelfSegError(f"cannot read X-Decoder config {path}: {exc}") from None
        if not isinstance(cfg, Mapping):
            raise SelfSegError(f"{path}: not an official X-Decoder config (expected a mapping with MODEL)")
        return cls.from_official(cfg)

    @classmethod
    def for_variant(cls, name: str) -> XDecoderConfig:
        """'focal-t' | 'focal-l' | 'tiny' -> its config."""
        if name not in VARIANTS:
            raise SelfSegError(f"unknown X-Decoder variant {name!r}; use one of {', '.join(VARIANTS)}")
        return {"focal-t": cls.focal_t, "focal-l": cls.focal_l, "tiny": cls.tiny}[name]()
