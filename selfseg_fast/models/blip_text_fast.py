"""BLIP's text decoder, one token at a time for many rows, with ONE cross-attention K/V set per image.

Runs on the very same weights as HF's `BlipTextLMHeadModel` (it calls that module's Linear, LayerNorm
and Embedding layers; only the self-attention's query/key/value projections are concatenated into
one matrix per layer at construction), with its own attention:

- self-attention over a preallocated KV cache [layers][R, heads, T_max, 2 * head_dim] written in place
  at the step's position (a device tensor) and read whole under a position mask: every step has the
  same shapes and no host sync, so it can be captured in a CUDA graph;
- cross-attention keys/values computed ONCE per image over all its patches ([B, heads, N, head_dim];
  not per cluster, not per row, not per step, and no cluster is padded to the largest one). The rows
  of one image form a query block against that image's K/V, and each row sees only its own cluster's
  patches through a boolean mask ([B, 1, L, N]; L = most rows of one image). Cross-attention has no
  causal order between queries, so this is exact. (HF's BLIP text model in transformers 4.57 drops
  `encoder_attention_mask` inside its cross-attention; this path masks exactly.)

Parity with HF `generate` (greedy tokens identical, sampled distribution equal) is tested in
tests/test_caption.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CrossLayout:
    """Where each decoding row sits in the per-image query blocks of the cross-attention."""

    gather: torch.Tensor  # [B * L] row feeding each (image, slot); filler slots repeat row 0
    scatter: torch.Tensor  # [R] the (image, slot) of each row (filler slots are never read back)
    mask: torch.Tensor  # [B, 1, L, N] bool: the slot's cluster owns the patch (fillers see everything)
    slots: int  # L

    @classmethod
    def build(
        cls,
        row_image: list[int],  # [R] image of each row (rows of one image together)
        row_mask: torch.Tensor,  # [R, N] bool: patches of each row's cluster
        images: int,
    ) -> CrossLayout:
        """Slot indices computed on the host (no sync: `row_image` is host data)."""
        per_image = [0] * images
        scatter = []
        for b in row_image:
            scatter.append(b)
            per_image[b] += 1
        slots = max(per_image) if row_image else 1
        gather = [0] * (images * slots)
        is_filler = [True] * (images * slots)
        seen = [0] * images
        for r, b in enumerate(row_image):
            scatter[r] = b * slots + seen[b]
            gather[scatter[r]], is_filler[scatter[r]] = r, False
            seen[b] += 1
        device = row_mask.device
        gather_t = torch.tensor(gather, dtype=torch.int64).to(device, non_blocking=True)
        scatter_t = torch.tensor(scatter, dtype=torch.int64).to(device, non_blocking=True)
        filler = torch.tensor(is_filler).to(device, non_blocking=True)[:, None]
        mask = (row_mask.index_select(0, gather_t) | filler).view(images, 1, slots, row_mask.shape[1])
        return cls(gather_t, scatter_t, mask, slots)


class FastBlipTextDecoder:
    """Step function over HF's text decoder weights: `start(image_tokens)` once per batch, a cache per
    set of rows (`new_cache`, `select_rows`), then `step(tokens, position, cache, layout)` per token."""

    def __init__(self, text_decoder: nn.Module) -> None:
        self.hf = text_decoder
        cfg = text_decoder.config
        self.heads = cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.head_dim = self.hidden // self.heads
        self.layers = text_decoder.bert.encoder.layer
        self.embeddings = text_decoder.bert.embeddings
        self.head = text_decoder.cls.predictions
        self.qkv = [
            (
                torch.cat([a.query.weight, a.key.weight, a.value.weight]),
                torch.cat([a.query.bias, a.key.bias, a.value.bias]),
            )
            for a in (layer.attention.self for layer in self.layers)
        ]
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.word_embeddings.weight.dtype

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, heads, T, hd]
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    @torch.inference_mode()
    def start(self, image_tokens: torch.Tensor) -> None:
        """Cross-attention K/V of every image's patches, per layer: image_tokens [B, N, C_enc]."""
        tokens = image_tokens.to(self.dtype)
        self.cross_kv = [
            (
                self._heads(layer.crossattention.self.key(tokens)),
                self._heads(layer.crossattention.self.value(tokens)),
            )
            for layer in self.layers
        ]

    def new_cache(self, rows: int, max_len: int) -> list[torch.Tensor]:
        """Self-attention cache, one [R, heads, T_max, 2 * head_dim] tensor (keys | values) per layer."""
        device = self.embeddings.word_embeddings.weight.device
        shape = (rows, self.heads, max_len, 2 * self.head_dim)
        return [torch.zeros(shape, dtype=self.dtype, device=device) for _ in self.layers]

    @staticmethod
    def select_rows(cache: list[torch.Tensor], keep: torch.Tensor) -> list[torch.Tensor]:
        """The cache of the rows `keep` [R'] (finished rows compacted away)."""
        return [c.index_select(0, keep) for c in cache]

    @torch.inference_mode()
    def step(
        self,
        tokens: torch.Tensor,  # [R] the last token of every row
        position: torch.Tensor,  # [1] int64 on the device: the position of `tokens`
        cache: list[torch.Tensor],
        layout: CrossLayout,
    ) -> torch.Tensor:  # [R, V] next-token logits
        """One decoding step for every row: static shapes, no host sync (CUDA-graph capturable)."""
        emb = self.embeddings
        x = emb.LayerNorm(
            emb.word_embeddings(tokens)[:, None] + emb.position_embeddings(position)
        )  # [R, 1, C]
        seen = (torch.arange(cache[0].shape[2], device=tokens.device) <= position)[
            None, None, None
        ]  # [1,1,1,T]
        for layer, (w_qkv, b_qkv), kv_cache, (k_cross, v_cross) in zip(
            self.layers, self.qkv, cache, self.cross_kv
        ):
            x = self._self_attention(layer, x, w_qkv, b_qkv, kv_cache, position, seen)
            x = self._cross_attention(layer, x, k_cross, v_cross, layout)
            h = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(h) + x)
        return self.head(x)[:, 0]

    def _self_attention(self, layer, x, w_qkv, b_qkv, kv_cache, position, seen) -> torch.Tensor:
        """Causal self-attention: write this token's key/value at `position`, attend to positions <= it."""
        r, hd = x.shape[0], self.head_dim
        q, kv = F.linear(x, w_qkv, b_qkv).view(r, 1, 3, self.heads, hd).transpose(1, 3).split([1, 2], dim=2)
        kv_cache.index_copy_(2, position, kv.reshape(r, self.heads, 1, 2 * hd))  # [R, heads, 1, 2*hd]
        ctx = F.scaled_dot_product_attention(
            q[:, :, 0], kv_cache[..., :hd], kv_cache[..., hd:], attn_mask=seen
        )
        out = layer.attention.output
        return out.LayerNorm(out.dense(ctx.transpose(1, 2).reshape(r, 1, self.hidden)) + x)

    def _cross_attention(self, layer, x, k_cross, v_cross, layout: CrossLayout) -> torch.Tensor:
        """Each image's rows as one query block against the image's K/V, masked to the row's cluster."""
        r, b = x.shape[0], k_cross.shape[0]
        q = layer.crossattention.self.query(x)[:, 0].index_select(0, layout.gather)  # [B*L, C]
        q = q.view(b, layout.slots, self.heads, self.head_dim).transpose(1, 2)  # [B, heads, L, hd]
        ctx = F.scaled_dot_product_attention(q, k_cross, v_cross, attn_mask=layout.mask)  # [B, heads, L, hd]
        ctx = ctx.transpose(1, 2).reshape(b * layout.slots, self.hidden).index_select(0, layout.scatter)
        out = layer.crossattention.output
        return out.LayerNorm(out.dense(ctx.view(r, 1, self.hidden)) + x)
