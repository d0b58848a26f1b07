"""Stage 3: each cluster's patch tokens -> `cycles` captions from BLIP's text decoder.

    cluster embeddings [n_patches, 1024] (512-px tokens of the cluster's patches)
      -> decoder cross-attends to them, starts from [DEC] (30522), stops at [SEP] (102)
      -> nucleus sampling: min 4 / max 25 new tokens, top-p 1, repetition penalty 100 (HF semantics)
      -> `cycles` strings per cluster

Reference: HF `text_decoder.generate`, one call per cluster (its cycles are the rows of that call),
seeded with `torch.manual_seed(seed)` just before.

Fast (`caption_batched`): ONE decoding loop over every (image, cluster, cycle) row of a batch:
clusters of different sizes are padded and masked in cross-attention, each row's cross-attention
keys/values are computed once (first step) and kept in the KV cache, repetition penalty, the
min-length EOS ban, top-k and top-p applied exactly as HF's logits processors do, rows finish
independently, and the loop checks "all finished" on the host only every `sync_every` steps.
Parity (tested): greedy decoding gives HF `generate`'s tokens; seeded sampling gives the same token
distribution (different random streams, so not the same strings).
"""

from __future__ import annotations

import torch

from selfseg_fast.config import CaptionConfig, SelfSegConfig
from selfseg_fast.models.blip import BlipBundle


def _decode(bundle: BlipBundle, tokens: torch.Tensor) -> list[str]:
    return [text.strip() for text in bundle.tokenizer.batch_decode(tokens, skip_special_tokens=True)]


# ---- reference -------------------------------------------------------------------------------------------
@torch.inference_mode()
def caption_reference(
    bundle: BlipBundle, cluster_embeds: torch.Tensor, cfg: SelfSegConfig, seed: int
) -> list[str]:  # cfg.caption.cycles captions
    """HF `generate` on one cluster's embeddings [n, C]; the cycles are the rows of one call."""
    cc = cfg.caption
    decoder = bundle.model.text_decoder
    dtype = next(decoder.parameters()).dtype
    enc = cluster_embeds.to(bundle.device, dtype)[None].expand(cc.cycles, -1, -1)
    input_ids = torch.full((cc.cycles, 1), cc.bos_token_id, dtype=torch.long, device=bundle.device)
    with torch.random.fork_rng(devices=[bundle.device] if bundle.device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = decoder.generate(
            input_ids=input_ids,
            encoder_hidden_states=enc,
            encoder_attention_mask=torch.ones(enc.shape[:2], dtype=torch.long, device=bundle.device),
            eos_token_id=cc.eos_token_id,
            pad_token_id=cc.pad_token_id,
            do_sample=cc.do_sample,
            num_beams=1,
            **({"top_p": cc.top_p, "top_k": cc.top_k, "temperature": 1.0} if cc.do_sample else {}),
            repetition_penalty=cc.repetition_penalty,
            min_new_tokens=cc.min_new_tokens,
            max_new_tokens=cc.max_new_tokens,
        )
    return _decode(bundle, out)


# ---- fast: logits processing exactly as HF applies it -----------------------------------------------------
def apply_repetition_penalty(scores: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF RepetitionPenaltyLogitsProcessor: every token already in the row (BOS included) gets
    score * penalty if negative, else score / penalty. scores [R, V], tokens [R, T]."""
    if penalty == 1.0:
        return scores
    picked = scores.gather(1, tokens)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, tokens, picked)


def apply_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """HF TopKLogitsWarper (k > 0): keep the k highest scores (ties at the k-th kept), rest -inf."""
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def apply_top_p(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """HF TopPLogitsWarper: drop the low tail whose cumulative probability is <= 1 - top_p."""
    if top_p >= 1.0:
        return scores
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cum <= (1 - top_p)
    remove_sorted[..., -min_tokens_to_keep:] = False
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def process_logits(
    scores: torch.Tensor, tokens: torch.Tensor, new_tokens: int, cc: CaptionConfig
) -> torch.Tensor:
    """HF's order: repetition penalty, min-new-tokens EOS ban, then (sampling) top-k, top-p."""
    scores = apply_repetition_penalty(scores, tokens, cc.repetition_penalty)
    if new_tokens < cc.min_new_tokens:
        scores[:, cc.eos_token_id] = float("-inf")
    if cc.do_sample:
        scores = apply_top_p(apply_top_k(scores, cc.top_k), cc.top_p)
    return scores


def _pad_clusters(clusters: list[torch.Tensor], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [n_i, C] -> padded [K, n_max, C] and mask [K, n_max] (1 = real patch)."""
    n_max = max(c.shape[0] for c in clusters)
    padded = torch.zeros(len(clusters), n_max, clusters[0].shape[1], device=device, dtype=dtype)
    mask = torch.zeros(len(clusters), n_max, dtype=torch.long, device=device)
    for i, c in enumerate(clusters):
        padded[i, : c.shape[0]] = c.to(device, dtype)
        mask[i, : c.shape[0]] = 1
    return padded, mask


@torch.inference_mode()
def caption_batched(
    bundle: BlipBundle,
    clusters: list[torch.Tensor],  # K tensors [n_k, C]: each cluster's patch tokens
    cfg: SelfSegConfig,
    seeds: list[int],  # one per cluster
    *,
    sync_every: int = 4,
) -> list[list[str]]:  # [K][cycles]
    """All clusters x cycles decoded together; see the module docstring."""
    from selfseg_fast.models.blip_text_fast import FastBlipTextDecoder

    if not clusters:
        return []
    cc = cfg.caption
    decoder = bundle.model.text_decoder
    device, dtype = bundle.device, next(decoder.parameters()).dtype
    enc, enc_mask = _pad_clusters(clusters, device, dtype)  # [K, n, C], [K, n]
    cycles = cc.cycles
    rows = len(clusters) * cycles  # cluster-major: row = k * cycles + c
    fast = FastBlipTextDecoder(decoder)
    fast.start(enc, enc_mask.bool(), cycles, cc.max_new_tokens + 1)

    # Per-row random streams: cluster k's rows draw from seed_k's generator, so a cluster's captions
    # do not depend on what else is in the batch. One uniform per row and step (inverse-CDF sampling).
    uniforms = torch.empty(len(clusters), cycles, cc.max_new_tokens, dtype=torch.float64)
    for k, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed))
        uniforms[k] = torch.rand(cycles, cc.max_new_tokens, generator=gen, dtype=torch.float64)
    uniforms = uniforms.reshape(rows, cc.max_new_tokens).to(device)

    tokens = torch.full((rows, cc.max_new_tokens + 1), cc.pad_token_id, dtype=torch.long, device=device)
    tokens[:, 0] = cc.bos_token_id  # preallocated; column t+1 is written at step t
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    length = 1
    for step in range(cc.max_new_tokens):
        logits = fast.step(tokens[:, step])  # [R, V]
        scores = process_logits(logits.float(), tokens[:, : step + 1], step, cc)
        if cc.do_sample:
            cdf = scores.softmax(-1).double().cumsum(-1)
            u = uniforms[:, step : step + 1] * cdf[:, -1:]
            nxt = torch.searchsorted(cdf, u).clamp_(max=scores.shape[-1] - 1).squeeze(1)
        else:
            nxt = scores.argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, cc.pad_token_id), nxt)
        tokens[:, step + 1] = nxt
        finished |= nxt == cc.eos_token_id
        length = step + 2
        if (step + 1) % sync_every == 0 and bool(finished.all()):  # the only host sync in the loop
            break
    texts = _decode(bundle, tokens[:, :length])
    return [texts[k * cycles : (k + 1) * cycles] for k in range(len(clusters))]
