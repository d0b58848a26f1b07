"""Stage 3: each cluster's patch tokens -> `cycles` captions from BLIP's text decoder.

    image patch tokens [B, N, 1024] (512-px) + cluster labels [B, N] + rows (image, cluster id)
      -> the decoder cross-attends to the row's cluster patches; its input starts with [DEC] (30522)
         and the tokens of `caption.prompt` (none by default), generation stops at [SEP] (102)
      -> nucleus sampling: min 4 / max 25 new tokens, top-p 1, repetition penalty 100 (HF semantics)
      -> `cycles` strings per cluster

Prompt and lengths (what the authors' LAVIS code does is a config switch away): `prompt` is text fed
after [DEC] before sampling ("a picture of " in LAVIS); `keep_prompt_text` keeps it in the returned
text (LAVIS cuts `len(prompt)` characters off the decoded string); `length_includes_prompt` makes
`min_new_tokens` / `max_new_tokens` count the whole sequence, [DEC] and prompt included, as HF's
`min_length` / `max_length` do in LAVIS.

Reference: HF `text_decoder.generate`, one call per cluster (its cycles are the rows of that call),
seeded with `torch.manual_seed(seed)` just before.

Fast (`sample_captions`): ONE decoding loop over every (image, cluster, cycle) row of a batch:
- cross-attention K/V computed once per image over its patches; each row attends to its cluster's
  patches through a mask (`models/blip_text_fast.py`): no cluster is padded to the largest one;
- the decode step has static shapes and no host sync (CUDA-graph capturable; captured on CUDA with
  `compile=true`);
- logits processing and sampling fused in float32 (`sample_next`): HF's repetition penalty, the
  min-length EOS ban, top-k, top-p, then inverse-CDF sampling with one uniform per row and step from
  the row's own seeded stream (top-k / top-p work on the k candidates only; no float64, no sort of
  the vocabulary unless top-p < 1 without top-k);
- every `sync_every` steps ONE host check: stop when all rows finished, and compact the finished rows
  away when at least half of them are done (their cache rows are dropped, not decoded further).
Parity (tested): greedy decoding gives HF `generate`'s tokens; seeded sampling gives HF's token
distribution (different random streams, so not the same strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from selfseg_fast.config import CaptionConfig, SelfSegConfig
from selfseg_fast.errors import SelfSegError
from selfseg_fast.host import to_host
from selfseg_fast.models.blip import BlipBundle
from selfseg_fast.models.blip_text_fast import CrossLayout, FastBlipTextDecoder


# ---- prompt and lengths (both paths) ---------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeSpec:
    """The token prefix and the number of tokens to generate after it, from a CaptionConfig."""

    prefix: tuple[int, ...]  # [DEC] + prompt tokens
    min_new: int
    max_new: int

    @classmethod
    def from_config(cls, tokenizer, cc: CaptionConfig) -> DecodeSpec:
        prompt = tuple(tokenizer(cc.prompt, add_special_tokens=False)["input_ids"]) if cc.prompt else ()
        prefix = (cc.bos_token_id, *prompt)
        skip = len(prefix) if cc.length_includes_prompt else 0
        min_new, max_new = max(0, cc.min_new_tokens - skip), cc.max_new_tokens - skip
        if max_new < 1:
            raise SelfSegError(
                f"caption: max_new_tokens={cc.max_new_tokens} leaves nothing to generate after the "
                f"{len(prefix)}-token [DEC] + prompt prefix (length_includes_prompt=true); raise it"
            )
        return cls(prefix, min_new, max_new)


def decode_captions(tokenizer, ids: np.ndarray | torch.Tensor, cc: CaptionConfig) -> list[str]:
    """Token ids [rows, T] (prefix included) -> caption strings: special tokens skipped; without
    `keep_prompt_text` the prompt's characters are cut from the front, as LAVIS does."""
    texts = tokenizer.batch_decode(np.asarray(ids).tolist(), skip_special_tokens=True)
    cut = 0 if cc.keep_prompt_text else len(cc.prompt)
    return [text[cut:].strip() for text in texts]


# ---- reference -------------------------------------------------------------------------------------------
@torch.inference_mode()
def caption_reference(
    bundle: BlipBundle,
    cluster_embeds: torch.Tensor,
    cfg: SelfSegConfig,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
) -> list[str] | None:  # cfg.caption.cycles captions
    """HF `generate` on one cluster's embeddings [n, C]; the cycles are the rows of one call.
    `should_stop` (e.g. a deadline) is asked before the call and after every decoder step (an HF
    stopping criterion); once it says stop, generation ends and None is returned."""
    if should_stop is not None and should_stop():
        return None
    cc = cfg.caption
    plan = DecodeSpec.from_config(bundle.tokenizer, cc)
    decoder = bundle.model.text_decoder
    dtype = next(decoder.parameters()).dtype
    enc = cluster_embeds.to(bundle.device, dtype)[None].expand(cc.cycles, -1, -1)
    input_ids = torch.tensor([plan.prefix], dtype=torch.long, device=bundle.device).expand(cc.cycles, -1)
    if cc.length_includes_prompt:
        lengths = {"min_length": cc.min_new_tokens, "max_length": cc.max_new_tokens}
    else:
        lengths = {"min_new_tokens": cc.min_new_tokens, "max_new_tokens": cc.max_new_tokens}
    stop = _StopWhen(should_stop) if should_stop is not None else None
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
            **lengths,
            **({"stopping_criteria": StoppingCriteriaList([stop])} if stop else {}),
        )
    if stop is not None and stop.fired:
        return None  # cut short: the unfinished captions are not kept
    return decode_captions(bundle.tokenizer, out.cpu(), cc)


class _StopWhen(StoppingCriteria):
    """HF stopping criterion: every row stops once `should_stop()` says so (host check, per step)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop, self.fired = should_stop, False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        stop = self.fired = self.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


# ---- fast: logits processing + sampling, fused in float32 --------------------------------------------
def apply_repetition_penalty(scores: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF RepetitionPenaltyLogitsProcessor: every token already in the row (BOS included) gets
    score * penalty if negative, else score / penalty. scores [R, V], tokens [R, T]."""
    if penalty == 1.0:
        return scores
    picked = scores.gather(1, tokens)
    return scores.scatter(1, tokens, picked * torch.where(picked < 0, penalty, 1.0 / penalty))


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


def sample_next(
    logits: torch.Tensor,  # [R, V] float32 next-token logits
    tokens: torch.Tensor,  # [R, T] the tokens so far (prefix included)
    new_tokens: int,  # tokens generated so far
    uniforms: torch.Tensor,  # [R] float32 draws in [0, 1)
    cc: CaptionConfig,
    min_new: int,
) -> torch.Tensor:  # [R] next tokens
    """HF's order (repetition penalty, min-length EOS ban, top-k, top-p), then an inverse-CDF draw.
    With top-k, top-p and the draw see only the k candidates (sorted, HF's tie rule at the k-th
    aside), which is the same distribution as HF's masked vocabulary."""
    scores = apply_repetition_penalty(logits, tokens, cc.repetition_penalty)
    if new_tokens < min_new:
        scores[:, cc.eos_token_id] = float("-inf")
    if not cc.do_sample:
        return scores.argmax(-1)
    candidates = None
    if 0 < cc.top_k < scores.shape[-1]:
        scores, candidates = torch.topk(scores, cc.top_k, dim=-1)  # [R, k], descending
    scores = apply_top_p(scores, cc.top_p)
    cdf = scores.softmax(-1).cumsum(-1)
    pick = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None]).clamp_(max=scores.shape[-1] - 1)
    return (candidates.gather(1, pick) if candidates is not None else pick).squeeze(1)


# ---- fast: the batched sampler ---------------------------------------------------------------------------
def row_uniforms(seeds: list[int], cycles: int, steps: int, first_cycle: int = 0) -> torch.Tensor:
    """[len(seeds) * cycles, steps] float32: cluster k's rows draw from seed_k's own generator, so a
    cluster's captions never depend on what else is in the batch. Cycle c always gets the c-th block of
    the stream: `first_cycle` skips the blocks of earlier cycles (adaptive rounds draw exactly what the
    fixed-cycle run draws for the same cycles)."""
    out = torch.empty(len(seeds), cycles, steps, dtype=torch.float32)
    for k, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed))
        drawn = torch.rand(first_cycle + cycles, steps, generator=gen, dtype=torch.float64)
        out[k] = (drawn[first_cycle:] if first_cycle else drawn).float()  # no extra op when fixed
    return out.reshape(len(seeds) * cycles, steps)


@torch.inference_mode()
def sample_captions(
    bundle: BlipBundle,
    image_tokens: torch.Tensor,  # [B, N, C] each image's patch tokens (the 512-px ones)
    labels: torch.Tensor,  # [B, N] int64 cluster id of every patch (-1: belongs to no cluster)
    rows: list[tuple[int, int]],  # (image, cluster id) per captioned cluster, image-major
    seeds: list[int],  # one per row
    cc: CaptionConfig,
    *,
    sync_every: int = 4,
    cuda_graphs: bool = False,
    first_cycle: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray | None:  # [len(rows) * cycles, T] int64 token ids (prefix included, pad after [SEP])
    """Every row x cycle decoded together; see the module docstring. `cc.cycles` cycles per row,
    numbered from `first_cycle` (their random draws are those of the same cycles in a longer run).
    `should_stop` (a host-side check, e.g. a deadline) is asked before every decoder step: when it says
    stop, the loop ends and None is returned (nothing of this call is kept). With it the loop syncs
    every step (not every `sync_every`), so the host never runs more than one step ahead of the device."""
    spec = DecodeSpec.from_config(bundle.tokenizer, cc)
    if not rows:
        return np.zeros((0, len(spec.prefix) + spec.max_new), dtype=np.int64)
    if should_stop is not None:  # sync every step: the host (and its clock) stays within one step
        sync_every = 1  # of the device, so a stop is overshot by at most one decoder step on CUDA too
    decoder = FastBlipTextDecoder(bundle.model.text_decoder)
    decoder.start(image_tokens)
    uniforms = row_uniforms(seeds, cc.cycles, spec.max_new, first_cycle)
    state = _DecodeState.start(decoder, spec, rows, labels, uniforms, cc)
    step = _Stepper(decoder, cuda_graphs)
    for pos in range(len(spec.prefix) - 1):  # feed the prompt (its logits are not needed)
        if should_stop is not None and should_stop():
            return None
        step(state, pos)
    for new in range(spec.max_new):
        if should_stop is not None and should_stop():
            return None
        pos = len(spec.prefix) - 1 + new
        logits = step(state, pos)
        nxt = sample_next(
            logits.float(), state.tokens[:, : pos + 1], new, state.uniforms[:, new], cc, spec.min_new
        )
        state.append(pos + 1, nxt, cc)
        at_check = (new + 1) % sync_every == 0 and new + 1 < spec.max_new
        if at_check and not state.check_and_compact(decoder):  # the one host sync
            break
    state.flush()
    return to_host(state.out)


class _Stepper:
    """`decoder.step` for the current rows: eager, or (on CUDA, `cuda_graphs`) replayed from a CUDA
    graph captured at the first step after every change of the rows (start, compaction): the cache
    and the cross layout stay the same in between, only the token and the position change."""

    def __init__(self, decoder: FastBlipTextDecoder, cuda_graphs: bool) -> None:
        self.decoder, self.enabled = decoder, cuda_graphs and torch.cuda.is_available()
        self.graph, self.layout = None, None

    def __call__(self, state: _DecodeState, pos: int) -> torch.Tensor:  # [R, V]
        tokens = state.tokens[:, pos]
        if not self.enabled:
            return self.decoder.step(
                tokens, torch.tensor([pos], device=tokens.device), state.cache, state.layout
            )
        if self.layout is not state.layout:
            return self._capture(state, tokens, pos)
        self.tokens.copy_(tokens)
        self.pos.fill_(pos)
        self.graph.replay()
        return self.out

    def _capture(self, state: _DecodeState, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """Run this step eagerly on a side stream (the warm-up capture needs), then capture it."""
        self.tokens, self.pos = tokens.clone(), torch.tensor([pos], device=tokens.device)
        side = torch.cuda.Stream(tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side):
            logits = self.decoder.step(self.tokens, self.pos, state.cache, state.layout).clone()
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records only: the cache is not written again
            self.out = self.decoder.step(self.tokens, self.pos, state.cache, state.layout)
        self.layout = state.layout
        return logits


class _DecodeState:
    """The rows still decoding: their tokens, cache, random draws and cross layout, plus the output
    of every row (finished rows are written there when they are compacted away)."""

    def __init__(self, tokens, cache, uniforms, row_image, row_mask, images) -> None:
        device = tokens.device
        self.tokens, self.cache, self.uniforms = tokens, cache, uniforms
        self.out, self.row_ids = tokens.clone(), torch.arange(tokens.shape[0], device=device)
        self.finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=device)
        self.row_image, self.row_mask, self.images = row_image, row_mask, images
        self.live = list(range(tokens.shape[0]))  # host copy of row_ids
        self.layout = CrossLayout.build(row_image, row_mask, images)

    @classmethod
    def start(cls, decoder, spec: DecodeSpec, rows, labels, uniforms, cc: CaptionConfig) -> _DecodeState:
        """Rows are cluster-major: row = cluster row * cycles + cycle."""
        device = labels.device
        row_image = [b for b, _ in rows for _ in range(cc.cycles)]
        image_index = torch.tensor(row_image).to(device, non_blocking=True)
        cluster_id = torch.tensor([c for _, c in rows for _ in range(cc.cycles)]).to(
            device, non_blocking=True
        )
        row_mask = labels.index_select(0, image_index) == cluster_id[:, None]  # [R, N]
        width = len(spec.prefix) + spec.max_new
        tokens = torch.zeros(len(row_image), width, dtype=torch.long, device=device)
        tokens[:, : len(spec.prefix)] = torch.tensor(spec.prefix, device=device)
        cache = decoder.new_cache(len(row_image), width)
        return cls(tokens, cache, uniforms.to(device), row_image, row_mask, labels.shape[0])

    def append(self, column: int, nxt: torch.Tensor, cc: CaptionConfig) -> None:
        """Write the sampled tokens; finished rows get padding."""
        nxt = torch.where(self.finished, cc.pad_token_id, nxt)
        self.tokens[:, column] = nxt
        self.finished |= nxt == cc.eos_token_id

    def flush(self) -> None:
        self.out.index_copy_(0, self.row_ids, self.tokens)

    def check_and_compact(self, decoder: FastBlipTextDecoder) -> bool:
        """One host sync: False when every row has finished; drops finished rows once at least half
        of the live rows are done (their tokens are kept in `out`)."""
        finished = to_host(self.finished)
        if finished.all():
            return False
        if finished.sum() * 2 < len(finished):
            return True
        self.flush()
        keep_host = np.flatnonzero(~finished)
        keep = torch.from_numpy(keep_host).to(self.tokens.device, non_blocking=True)
        self.tokens, self.uniforms = self.tokens.index_select(0, keep), self.uniforms.index_select(0, keep)
        self.row_ids, self.finished = self.row_ids.index_select(0, keep), self.finished.index_select(0, keep)
        self.cache = decoder.select_rows(self.cache, keep)
        self.live = [self.live[i] for i in keep_host]
        live = torch.tensor(self.live).to(self.row_mask.device, non_blocking=True)
        self.layout = CrossLayout.build(
            [self.row_image[i] for i in self.live], self.row_mask.index_select(0, live), self.images
        )
        return True


@torch.inference_mode()
def caption_batched(
    bundle: BlipBundle,
    clusters: list[torch.Tensor],  # K tensors [n_k, C]: each cluster's patch tokens
    cfg: SelfSegConfig,
    seeds: list[int],  # one per cluster
    *,
    sync_every: int = 4,
) -> list[list[str]]:  # [K][cycles]
    """`sample_captions` for loose clusters (tests, tools): each cluster is packed as an image of its
    own patches (padding patches belong to no cluster), decoded and turned into text."""
    if not clusters:
        return []
    cc = cfg.caption
    device, dtype = bundle.device, bundle.model.text_decoder.bert.embeddings.word_embeddings.weight.dtype
    n_max = max(c.shape[0] for c in clusters)
    tokens = torch.zeros(len(clusters), n_max, clusters[0].shape[1], device=device, dtype=dtype)
    labels = torch.full((len(clusters), n_max), -1, dtype=torch.int64, device=device)
    for i, c in enumerate(clusters):
        tokens[i, : c.shape[0]] = c.to(device, dtype)
        labels[i, : c.shape[0]] = 0
    rows = [(i, 0) for i in range(len(clusters))]
    ids = sample_captions(bundle, tokens, labels, rows, seeds, cc, sync_every=sync_every)
    texts = decode_captions(bundle.tokenizer, ids, cc)
    return [texts[k * cc.cycles : (k + 1) * cc.cycles] for k in range(len(clusters))]
