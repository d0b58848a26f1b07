"""BLIP's text decoder, one token at a time for many rows, with the cross-attention shared per cluster.

Runs on the very same weights as HF's `BlipTextLMHeadModel` (it holds a reference to that module and
calls its Linear/LayerNorm/Embedding layers), with its own attention:
- self-attention over a preallocated KV cache [layers][R, heads, T_max, head_dim] (no re-allocation,
  no concatenation per step), via `scaled_dot_product_attention`;
- cross-attention keys/values computed ONCE per cluster (not per row, not per step): rows are laid
  out cluster-major with `cycles` rows per cluster, so the queries of one cluster's cycles form a
  [cycles]-long query block against that cluster's keys (cross-attention has no causal order
  between queries, so this is exact), and padded patches are masked out. (HF's BLIP text model in
  transformers 4.57 drops `encoder_attention_mask` inside its cross-attention, so it cannot batch
  clusters of different sizes; this path can.)
Parity with HF (greedy tokens identical) is tested in tests/test_caption.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FastBlipTextDecoder:
    """Step function over HF's text decoder weights: `start(...)` once, then `step(tokens)` per token."""

    def __init__(self, text_decoder: nn.Module) -> None:
        self.hf = text_decoder
        cfg = text_decoder.config
        self.heads = cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.head_dim = self.hidden // self.heads
        self.layers = text_decoder.bert.encoder.layer
        self.embeddings = text_decoder.bert.embeddings
        self.head = text_decoder.cls.predictions
        self.act = F.gelu if cfg.hidden_act == "gelu" else getattr(F, cfg.hidden_act)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, heads, T, hd]
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:  # [B, heads, T, hd] -> [B, T, C]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.hidden)

    @torch.inference_mode()
    def start(
        self,
        clusters: torch.Tensor,  # [K, n, C_enc] padded patch tokens
        cluster_mask: torch.Tensor,  # [K, n] bool, True = real patch
        rows_per_cluster: int,
        max_len: int,
    ) -> None:
        """Compute every cluster's cross-attention K/V and allocate the self-attention cache."""
        k, _, _ = clusters.shape
        self.k, self.cycles = k, rows_per_cluster
        rows = k * rows_per_cluster
        dtype, device = clusters.dtype, clusters.device
        self.cross_kv = []
        for layer in self.layers:
            attn = layer.crossattention.self
            self.cross_kv.append((self._split(attn.key(clusters)), self._split(attn.value(clusters))))
        # additive mask [K, 1, 1, n]: 0 for real patches, -inf for padding
        self.cross_mask = torch.zeros(k, 1, 1, clusters.shape[1], dtype=dtype, device=device)
        self.cross_mask.masked_fill_(~cluster_mask[:, None, None, :], float("-inf"))
        shape = (rows, self.heads, max_len, self.head_dim)
        self.cache = [
            (torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
            for _ in self.layers
        ]
        self.length = 0

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # [R] last tokens -> [R, V] next-token logits
        t = self.length
        pos = self.embeddings.position_ids[:, t : t + 1]
        x = self.embeddings.word_embeddings(tokens[:, None]) + self.embeddings.position_embeddings(pos)
        x = self.embeddings.LayerNorm(x)  # [R, 1, C]
        for layer, (k_cache, v_cache), (k_cross, v_cross) in zip(self.layers, self.cache, self.cross_kv):
            # causal self-attention over the cache (this token sees all earlier ones)
            sa = layer.attention.self
            k_cache[:, :, t : t + 1] = self._split(sa.key(x))
            v_cache[:, :, t : t + 1] = self._split(sa.value(x))
            ctx = F.scaled_dot_product_attention(
                self._split(sa.query(x)), k_cache[:, :, : t + 1], v_cache[:, :, : t + 1]
            )
            out = layer.attention.output
            x = out.LayerNorm(out.dense(self._merge(ctx)) + x)
            # cross-attention: a cluster's cycles are one query block against its shared K/V
            ca = layer.crossattention.self
            q = self._split(ca.query(x))  # [R, heads, 1, hd]
            q = q.view(self.k, self.cycles, self.heads, self.head_dim).transpose(
                1, 2
            )  # [K, heads, cycles, hd]
            ctx = F.scaled_dot_product_attention(q, k_cross, v_cross, attn_mask=self.cross_mask)
            ctx = ctx.transpose(1, 2).reshape(-1, 1, self.hidden)  # [R, 1, C]
            out = layer.crossattention.output
            x = out.LayerNorm(out.dense(ctx) + x)
            # feed-forward
            h = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(h) + x)
        self.length = t + 1
        return self.head(x)[:, 0]
