"""BLIP for captioning: pretrained (hub id or local folder), full-size random, or tiny random weights.

    load_blip(cfg, device) -> BlipBundle(model: BlipForConditionalGeneration (eval), tokenizer, ...)

- `pretrained`: `cfg.blip_model` (default `Salesforce/blip-image-captioning-large`, ViT-L) from the
  HF cache/hub or a local folder; nothing there gives one WeightsError line with the fixes.
- `random`: the same architecture as that checkpoint (ViT-L/16 at 384 px, BERT-base decoder with
  cross-attention to 1024-d patches), seeded random weights: full-size FLOPs without a download.
- `random-tiny`: a few-layer 64-d model, seeded: for tests and an offline demo.
Random models keep the real vocabulary layout (30524 ids; [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
[MASK] 103, [DEC] 30522, [ENC] 30523) with a synthetic word list (`vocab.py`), so decoding,
special-token handling and the noun stage behave as with the real tokenizer.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertTokenizerFast, BlipConfig, BlipForConditionalGeneration

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import WeightsError
from selfseg_fast.hub import hub_reachable, looks_like_path
from selfseg_fast.models.vocab import synthetic_blip_tokenizer

log = logging.getLogger(__name__)

BLIP_LARGE_VISION = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=384, patch_size=16, layer_norm_eps=1e-5,
    initializer_range=0.02,  # HF's vision default (1e-10) would make random patch tokens all ~equal
)  # fmt: skip
BLIP_LARGE_TEXT = dict(
    vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=512, bos_token_id=30522, sep_token_id=102, pad_token_id=0, eos_token_id=2,
)  # fmt: skip
TINY_VISION = dict(
    BLIP_LARGE_VISION, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
)
TINY_TEXT = dict(
    BLIP_LARGE_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=64,
)  # fmt: skip


@dataclass
class BlipBundle:
    """A loaded BLIP captioner and what the stages need to know about it."""

    model: BlipForConditionalGeneration  # eval mode, on `device`
    tokenizer: object  # HF tokenizer (BertTokenizer layout, [DEC] as bos)
    weights: str  # pretrained | random | random-tiny
    source: str  # hub id / folder, or "random(seed=...)"
    device: torch.device

    @property
    def patch_size(self) -> int:
        return self.model.config.vision_config.patch_size

    @property
    def text_config(self):
        return self.model.config.text_config


def random_blip_config(tiny: bool) -> BlipConfig:
    """The captioning-large architecture (or its tiny test version) as a BlipConfig."""
    return BlipConfig(
        vision_config=dict(TINY_VISION if tiny else BLIP_LARGE_VISION),
        text_config=dict(TINY_TEXT if tiny else BLIP_LARGE_TEXT),
    )


def build_random_blip(seed: int, tiny: bool) -> BlipForConditionalGeneration:
    """Seeded random weights (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BlipForConditionalGeneration(random_blip_config(tiny))


def _missing_weights_error(source: str, reason: str) -> WeightsError:
    return WeightsError(
        f"BLIP weights not found: {source!r} ({reason}); download them once with network access "
        f"(hub id Salesforce/blip-image-captioning-large), pass a local folder with --blip PATH, or run "
        f"offline with --weights random (full size) or --weights random-tiny"
    )


def load_pretrained(source: str) -> tuple[BlipForConditionalGeneration, object]:
    """Model + tokenizer from a local folder (save_pretrained layout) or a hub id (cache, then network)."""
    if looks_like_path(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise _missing_weights_error(source, "no such folder")
        if not (folder / "config.json").is_file():
            raise _missing_weights_error(source, "folder has no config.json")
        attempts = [{"pretrained_model_name_or_path": str(folder)}]
    else:
        attempts = [{"pretrained_model_name_or_path": source, "local_files_only": True}]
        if hub_reachable():
            attempts.append({"pretrained_model_name_or_path": source})
    reason = "not in the local Hugging Face cache and the hub is unreachable"
    for kwargs in attempts:
        try:
            return BlipForConditionalGeneration.from_pretrained(**kwargs), AutoTokenizer.from_pretrained(
                **kwargs
            )
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0][:160]
    raise _missing_weights_error(source, reason)


def load_blip(cfg: SelfSegConfig, device: str | torch.device = "cpu") -> BlipBundle:
    """The captioner named by cfg.weights / cfg.blip_model, in eval mode (fp32) on `device`."""
    device = torch.device(device)
    if cfg.weights == "pretrained":
        model, tokenizer = load_pretrained(cfg.blip_model)
        source = cfg.blip_model
    elif cfg.weights in ("random", "random-tiny"):
        model = build_random_blip(cfg.seed, tiny=cfg.weights == "random-tiny")
        tokenizer = synthetic_blip_tokenizer()
        source = f"{cfg.weights}(seed={cfg.seed})"
    else:
        raise WeightsError(f"unknown --weights {cfg.weights!r}; use pretrained, random or random-tiny")
    model.eval().to(device)
    tokenizer = fast_tokenizer(tokenizer)
    return BlipBundle(model=model, tokenizer=tokenizer, weights=cfg.weights, source=source, device=device)


def fast_tokenizer(tokenizer):
    """The same (BERT-layout) tokenizer with the Rust `tokenizers` backend: the fast engine decodes
    every caption of a batch (160 per cityscapes image), several times faster than the Python one.
    transformers 5 tokenizers are fast already; 4.x may hand out the Python `BertTokenizer`."""
    if getattr(tokenizer, "is_fast", False):
        return tokenizer
    try:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            fast = BertTokenizerFast.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:  # a tokenizer that is not BERT-layout: keep it
        log.info("keeping the Python tokenizer (%s)", exc)
        return tokenizer
    return fast
