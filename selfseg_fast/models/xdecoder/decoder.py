"""X-Decoder's transformer decoder (`xdecoder`), the semantic-segmentation path only.

    multi-scale features [res5, res4, res3] maps [B, C, h_l, w_l], mask_features [B, C, H/4, W/4],
    text embeddings [K, P] (normalised, one per class name, the trailing "background" included)
      -> Q = num_queries learnable queries (the last one is the class token)
      -> `layers` rounds over the 3 scales in turn: masked cross-attention (a query attends only where
         its previous mask prediction is >= 0.5; a query whose mask is empty everywhere attends
         everywhere), self-attention (object queries and the class token do not see each other),
         FFN; post-norm
      -> pred_logits [B, Q, K] = logit_scale.exp() * normalised(query @ class_embed) @ text^T
         pred_masks [B, Q, H/4, W/4] = mask_embed(query) . mask_features
The class token's output is re-computed as the similarity-weighted mean of the object queries, as the
official `forward_prediction_heads` does. Attribute names reproduce `sem_seg_head.predictor.*`; the
captioning head's parameters (`caping_embed`, `pos_embed_caping`) are kept so checkpoints load whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfseg_fast.models.xdecoder.language import LanguageConfig, LanguageEncoder
from selfseg_fast.models.xdecoder.pixel_decoder import sine_position


@dataclass
class DecoderConfig:
    """Defaults: Focal-T's `MODEL.DECODER` (DEC_LAYERS 10 -> 9 rounds after the initial prediction)."""

    in_channels: int = 512  # the pixel decoder's conv_dim
    hidden: int = 512
    proj_dim: int = 512  # MODEL.DIM_PROJ
    num_queries: int = 101  # 100 object queries + 1 class token
    heads: int = 8
    ffn_dim: int = 2048
    dec_layers: int = 10  # as configured; the module runs dec_layers - 1 rounds
    mask_dim: int = 512
    context_length: int = 77
    enforce_input_proj: bool = False


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = x + pos
        return self.norm(x + self.self_attn(q, k, value=x, attn_mask=mask, need_weights=False)[0])


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, memory, mask, pos, query_pos) -> torch.Tensor:
        out = self.multihead_attn(
            x + query_pos, memory + pos, value=memory, attn_mask=mask, need_weights=False
        )[0]
        return self.norm(x + out)


class _FFN(nn.Module):
    def __init__(self, dim: int, ffn: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class _MLP(nn.Module):
    def __init__(self, dim: int, out: int, layers: int) -> None:
        super().__init__()
        sizes = [dim] * (layers - 1) + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([dim] + sizes[:-1], sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def official_self_attn_mask(num_queries: int, context_length: int) -> torch.Tensor:
    """The official [1, Q + T, Q + T] bool mask (True = blocked): object queries and the class token
    do not see each other; caption tokens are causal and unseen by the queries."""
    q, t = num_queries, context_length
    mask = torch.zeros(1, q + t, q + t, dtype=torch.bool)
    mask[:, :q, q:] = True
    mask[:, q:, q:] = torch.triu(torch.ones(1, t, t), diagonal=1).bool()
    mask[:, : q - 1, q - 1 : q] = True
    mask[:, q - 1 : q, : q - 1] = True
    return mask


class XDecoderHead(nn.Module):
    """The decoder + language encoder (`sem_seg_head.predictor`), semantic-segmentation inference."""

    def __init__(self, cfg: DecoderConfig, lang: LanguageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, rounds = cfg.hidden, cfg.dec_layers - 1
        self.transformer_self_attention_layers = nn.ModuleList(
            _SelfAttention(dim, cfg.heads) for _ in range(rounds)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            _CrossAttention(dim, cfg.heads) for _ in range(rounds)
        )
        self.transformer_ffn_layers = nn.ModuleList(_FFN(dim, cfg.ffn_dim) for _ in range(rounds))
        self.decoder_norm = nn.LayerNorm(dim)
        self.query_feat = nn.Embedding(cfg.num_queries, dim)
        self.query_embed = nn.Embedding(cfg.num_queries, dim)
        self.level_embed = nn.Embedding(3, dim)
        project = cfg.in_channels != dim or cfg.enforce_input_proj
        self.input_proj = nn.ModuleList(
            nn.Conv2d(cfg.in_channels, dim, 1) if project else nn.Sequential() for _ in range(3)
        )
        self.lang_encoder = LanguageEncoder(lang)
        self.mask_embed = _MLP(dim, cfg.mask_dim, 3)
        self.class_embed = nn.Parameter(torch.zeros(dim, cfg.proj_dim))
        self.caping_embed = nn.Parameter(torch.zeros(dim, cfg.proj_dim))  # captioning head (unused here)
        self.pos_embed_caping = nn.Embedding(cfg.context_length, dim)  # captioning head (unused here)
        self.register_buffer("self_attn_mask", official_self_attn_mask(cfg.num_queries, cfg.context_length))

    def _predict(self, output: torch.Tensor, mask_features: torch.Tensor, target_size):
        """Class embeddings (before the text), mask logits and the next round's attention mask from the
        queries [Q, B, C]. The text enters only the class logits, never the masks or the attention."""
        q = self.cfg.num_queries
        dec = self.decoder_norm(output).transpose(0, 1)  # [B, Q, C]
        normed = dec / (dec.norm(dim=-1, keepdim=True) + 1e-7)
        sim = (normed[:, q - 1 : q] @ normed[:, : q - 1].transpose(1, 2)).softmax(-1)[:, 0, :, None]
        cls_token = (sim * dec[:, : q - 1]).sum(dim=1, keepdim=True)
        dec = torch.cat((dec[:, : q - 1], cls_token), dim=1)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(dec), mask_features)
        attn = F.interpolate(masks, size=target_size, mode="bicubic", align_corners=False, antialias=True)
        attn = attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.cfg.heads, 1, 1).flatten(0, 1) < 0.5
        return dec, masks, attn.detach()

    def forward_image(
        self, features: list[torch.Tensor], mask_features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The text-free part: features [res5, res4, res3] maps -> class_embed [B, Q, P] (the queries
        projected by `class_embed`, before the similarity with the text), pred_masks [B, Q, h, w]."""
        src, pos, sizes = [], [], []
        for i, x in enumerate(features):
            sizes.append(x.shape[-2:])
            pos.append(sine_position(x, self.cfg.hidden // 2).flatten(2).permute(2, 0, 1))
            src.append(
                (self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]).permute(
                    2, 0, 1
                )
            )
        bs = src[0].shape[1]
        q = self.cfg.num_queries
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)
        self_mask = self.self_attn_mask[:, :q, :q].repeat(bs * self.cfg.heads, 1, 1)
        dec, masks, attn = self._predict(output, mask_features, sizes[0])
        for i in range(len(self.transformer_cross_attention_layers)):
            level = i % 3
            attn = attn & ~attn.all(-1, keepdim=True)  # a query with an empty mask attends everywhere
            output = self.transformer_cross_attention_layers[i](
                output, src[level], attn, pos[level], query_pos
            )
            output = self.transformer_self_attention_layers[i](output, self_mask, query_pos)
            output = self.transformer_ffn_layers[i](output)
            dec, masks, attn = self._predict(output, mask_features, sizes[(i + 1) % 3])
        return {"class_embed": dec @ self.class_embed, "pred_masks": masks}

    def forward(
        self, features: list[torch.Tensor], mask_features: torch.Tensor, text: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """features: [res5, res4, res3] maps; text [K, P] -> pred_logits [B, Q, K], pred_masks [B, Q, h, w]
        (h, w: the mask features' size). Only the last round's logits are computed (the official code
        computes every round's for its auxiliary losses; inference reads the last)."""
        out = self.forward_image(features, mask_features)
        return {
            "pred_logits": self.lang_encoder.compute_similarity(out["class_embed"], text),
            "pred_masks": out["pred_masks"],
        }
