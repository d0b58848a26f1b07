"""X-Decoder's language encoder (`vlpencoder` + the CLIP-style causal `transformer`), in plain PyTorch.

`LanguageEncoder` mirrors the official module tree so its weights load by their own names under
`sem_seg_head.predictor.lang_encoder.`: `lang_encoder.{token_embedding, positional_embedding,
resblocks.{i}.{attn, ln_1, mlp.c_fc, mlp.c_proj, ln_2}, ln_final}`, `lang_proj` [width, proj] and
`logit_scale` (a scalar; logits use its exp).

A text's embedding is the last hidden state at its end-of-text token (the first position of the largest
token id, `<|endoftext|>`), times `lang_proj`, L2-normalized. Two implementations of that:
  - `reference`: the official computation, all 77 positions through `nn.MultiheadAttention` with an
    additive -inf upper-triangular mask;
  - `fast`: with the causal mask nothing at or before the end token sees a later position, so the batch is
    cut to (last end token + 1) positions (prompts are ~10 tokens of 77), attention runs through
    `scaled_dot_product_attention(is_causal=True)`, and only the end-token rows go through the final norm
    and projection. Equal to the reference up to float rounding (parity test). Used only when the encoder
    is causal (`autoregressive`, as in every released config); otherwise the reference runs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from selfseg_fast.errors import SelfSegError

TextImpl = Literal["reference", "fast"]


@dataclass
class LanguageConfig:
    """Text encoder shape; defaults are the official `MODEL.TEXT` (+ `DIM_PROJ`) of every X-Decoder config."""

    vocab_size: int = 49408  # the CLIP BPE vocabulary
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    proj_dim: int = 512  # MODEL.DIM_PROJ
    autoregressive: bool = True  # causal mask (official key AUTOGRESSIVE)
    tokenizer: str = "openai/clip-vit-base-patch32"  # hub id or folder (see tokenizer.py)
    impl: TextImpl = "fast"

    @classmethod
    def tiny(cls) -> LanguageConfig:
        """A small random-weight test model (real CLIP vocabulary size, so the real tokenizer fits)."""
        return cls(width=32, layers=2, heads=4, proj_dim=32)


class LayerNorm(nn.Module):
    """The official TF-style LayerNorm: eps 1e-12 inside the square root, statistics in float32."""

    def __init__(self, width: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)
        return self.weight * y + self.bias


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x)). Input is batch-first [B, L, D]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn = nn.MultiheadAttention(width, heads)  # in_proj_weight/bias, out_proj.{weight,bias}
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def attention_reference(
        self, x: torch.Tensor, mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Official: nn.MultiheadAttention on [L, B, D] with an additive mask [L, L] (or key padding)."""
        xt = x.transpose(0, 1)
        mask = mask.to(dtype=x.dtype) if mask is not None else None
        out = self.attn(xt, xt, xt, key_padding_mask=key_padding_mask, need_weights=False, attn_mask=mask)
        return out[0].transpose(0, 1)

    def attention_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Causal SDPA with the same weights; x [B, L, D] -> [B, L, D]."""
        b, n, d = x.shape
        qkv = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, L, d/h]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.attn.out_proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        fast: bool = False,
    ) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + (self.attention_fast(h) if fast else self.attention_reference(h, mask, key_padding_mask))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """The official `Transformer` language model: token + positional embedding, blocks, ln_final."""

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads) for _ in range(cfg.layers)
        )
        self.ln_final = LayerNorm(cfg.width)

    def causal_mask(self, n: int, device: torch.device) -> torch.Tensor:
        """Additive [n, n] mask: -inf above the diagonal (a position sees itself and earlier ones)."""
        return torch.full((n, n), float("-inf"), device=device).triu_(1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reference: input_ids [B, context_length] -> last hidden state [B, context_length, width].

        As in the official code, `attention_mask` masks padding only when the encoder is not causal.
        """
        x = self.token_embedding(input_ids) + self.positional_embedding
        causal = self.cfg.autoregressive
        mask = self.causal_mask(input_ids.shape[1], input_ids.device) if causal else None
        padding = attention_mask == 0 if not causal and attention_mask is not None else None  # [B, L]
        for block in self.resblocks:
            x = block(x, mask, padding)
        return self.ln_final(x)

    def forward_causal_prefix(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Fast: input_ids [B, n] (n <= context_length) -> hidden states before ln_final [B, n, width]."""
        n = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:n]
        for block in self.resblocks:
            x = block(x, fast=True)
        return x


def eot_index(input_ids: torch.Tensor) -> torch.Tensor:
    """Position of the end-of-text token per row: the first maximum of the ids ([B, L] -> [B])."""
    return input_ids.argmax(dim=-1)


class LanguageEncoder(nn.Module):
    """The official `vlpencoder` LanguageEncoder: text transformer + `lang_proj` + `logit_scale`."""

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lang_encoder = TextTransformer(cfg)
        self.lang_proj = nn.Parameter(torch.empty(cfg.width, cfg.proj_dim))
        nn.init.trunc_normal_(self.lang_proj, std=0.02)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def resolve_impl(self, impl: TextImpl | None) -> TextImpl:
        """Explicit argument, else the config (which `build_segmenter` sets from the engine's plan, where
        the SELFSEG_XDECODER_TEXT_IMPL switch is read); `fast` needs the causal encoder."""
        impl = impl or self.cfg.impl
        if impl not in ("reference", "fast"):
            raise SelfSegError(f"text encoder: unknown implementation {impl!r}; use reference|fast")
        return "fast" if impl == "fast" and self.cfg.autoregressive else "reference"

    def forward_language(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        norm: bool = True,
        impl: TextImpl | None = None,
    ) -> torch.Tensor:
        """input_ids [B, context_length] (CLIP-tokenized, padded) -> text embeddings [B, proj_dim].

        norm: divide by (L2 norm + 1e-7) as the official `forward_language` does.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] > self.cfg.context_length:
            n, shape = self.cfg.context_length, tuple(input_ids.shape)
            raise SelfSegError(f"LanguageEncoder: expected token ids [B, <= {n}], got {shape}")
        eot = eot_index(input_ids)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if self.resolve_impl(impl) == "fast":
            n = int(eot.max()) + 1 if input_ids.numel() else 1
            hidden = self.lang_encoder.forward_causal_prefix(input_ids[:, :n])
            x = self.lang_encoder.ln_final(hidden[rows, eot])
        else:
            if input_ids.shape[1] != self.cfg.context_length:
                n = self.cfg.context_length
                raise SelfSegError(f"LanguageEncoder: the reference path needs ids padded to {n} tokens")
            x = self.lang_encoder(input_ids, attention_mask)[rows, eot]
        x = x @ self.lang_proj.to(x.dtype)
        if norm:
            x = x / (x.norm(dim=-1, keepdim=True) + 1e-7)
        return x

    def compute_similarity(self, v_emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """Official class logits: logit_scale.exp() * normalize(v_emb) @ t_emb.T.

        v_emb [B, Q, proj_dim] (class-token-projected queries), t_emb [C, proj_dim] (normalized) -> [B, Q, C].
        """
        v = v_emb / (v_emb.norm(dim=-1, keepdim=True) + 1e-7)
        return self.logit_scale.exp() * v @ t_emb.t().to(v.dtype)
