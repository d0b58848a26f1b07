"""Captioning: the batched sampler against HF `generate` (greedy: same tokens; sampling: same
distribution) and the logits processors against HF's own."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.models.blip import load_blip
from selfseg_fast.stages.caption import (
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    caption_batched,
    caption_reference,
)


@pytest.fixture(scope="module")
def bundle():
    return load_blip(SelfSegConfig(weights="random-tiny", seed=0))


def _sharpen(bundle, factor: float):
    """Scale the LM head so the tiny random model has a peaked next-token distribution."""
    head = bundle.model.text_decoder.cls.predictions.decoder
    head.weight.data.mul_(factor)
    return head


def test_processors_equal_hf():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 50, generator=gen) * 3
    tokens = torch.randint(0, 50, (6, 7), generator=gen)
    torch.testing.assert_close(
        apply_repetition_penalty(scores, tokens, 100.0),
        RepetitionPenaltyLogitsProcessor(100.0)(tokens, scores.clone()),
    )
    for p in (0.3, 0.9, 1.0):
        torch.testing.assert_close(
            apply_top_p(scores, p), TopPLogitsWarper(p)(tokens, scores.clone()) if p < 1 else scores
        )
    torch.testing.assert_close(apply_top_k(scores, 5), TopKLogitsWarper(5)(tokens, scores.clone()))


def test_greedy_equals_hf_generate(bundle):
    cfg = SelfSegConfig(weights="random-tiny").with_overrides(
        {"caption.do_sample": False, "caption.cycles": 1, "caption.repetition_penalty": 1.5}
    )
    gen = torch.Generator().manual_seed(1)
    head = _sharpen(bundle, 40.0)  # make clusters produce different captions
    try:
        clusters = [torch.randn(n, 64, generator=gen) * 3 for n in (1, 5, 33, 200, 12, 77)]
        fast = caption_batched(bundle, clusters, cfg, list(range(len(clusters))))
        ref = [caption_reference(bundle, c, cfg, 0) for c in clusters]
    finally:
        head.weight.data.div_(40.0)
    assert fast == ref
    assert len(set(tuple(r) for r in ref)) > 1  # the test is decisive: captions differ by cluster


def _hf_next_token_probs(bundle, cluster: torch.Tensor, prefix: list[int], cc) -> torch.Tensor:
    """The exact next-token distribution HF samples from: the decoder's logits after HF's own
    processors (repetition penalty, min-length EOS ban, top-k, top-p) -> [V] float64."""
    ids = torch.tensor([prefix])
    with torch.inference_mode():
        logits = bundle.model.text_decoder(input_ids=ids, encoder_hidden_states=cluster[None]).logits[:, -1]
    scores = RepetitionPenaltyLogitsProcessor(cc.repetition_penalty)(ids, logits.float())
    if len(prefix) - 1 < cc.min_new_tokens:
        scores[:, cc.eos_token_id] = float("-inf")
    if cc.top_k > 0:
        scores = TopKLogitsWarper(cc.top_k)(ids, scores)
    if cc.top_p < 1.0:
        scores = TopPLogitsWarper(cc.top_p)(ids, scores)
    return scores.softmax(-1)[0].double()


def _tvd(counts: torch.Tensor, probs: torch.Tensor) -> float:
    return float(0.5 * (counts / counts.sum() - probs).abs().sum())


def _null_tvd_quantile(probs: torch.Tensor, target: torch.Tensor, q: float = 0.995, trials: int = 300):
    """The q-quantile of TVD(empirical, target) when each of the rows really draws one token from its own
    distribution `probs` [rows, V] (inverse-CDF draws, seeded)."""
    gen = torch.Generator().manual_seed(123)
    cdf = probs.cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    vocab = probs.shape[1]
    stats = []
    for _ in range(trials):
        u = torch.rand(probs.shape[0], 1, generator=gen, dtype=cdf.dtype)
        tokens = torch.searchsorted(cdf, u).clamp_(max=vocab - 1)[:, 0]
        stats.append(_tvd(torch.bincount(tokens, minlength=vocab).double(), target))
    return float(torch.tensor(stats).quantile(q))


def test_sampling_has_hf_token_distribution(bundle):
    """First and second sampled tokens over 600 rows, for our sampler and for HF `generate`: each is
    compared with the exact distribution HF samples from (HF's forward + HF's logits processors), and
    its total-variation distance must lie within the 99.5 % range of 600 true draws from it. The first
    token's distribution is fixed; the second token's is the mixture of the conditionals given each
    row's own first token (so both samplers are tested on their own first tokens)."""
    rows = 600
    cfg = SelfSegConfig(weights="random-tiny").with_overrides(
        {"caption.cycles": rows, "caption.max_new_tokens": 2, "caption.min_new_tokens": 2}
    )
    cc = cfg.caption
    cluster = torch.randn(9, 64, generator=torch.Generator().manual_seed(2)) * 3
    head = _sharpen(bundle, 60.0)
    try:
        samples = {
            "hf": [
                bundle.tokenizer.convert_tokens_to_ids(c.split())
                for c in caption_reference(bundle, cluster, cfg, 3)
            ],
            "ours": [
                bundle.tokenizer.convert_tokens_to_ids(c.split())
                for c in caption_batched(bundle, [cluster], cfg, [4])[0]
            ],
        }
        first = _hf_next_token_probs(bundle, cluster, [cc.bos_token_id], cc)
        firsts = {t for ids in samples.values() for t in (ids[0] for ids in ids)}
        second_given = {t: _hf_next_token_probs(bundle, cluster, [cc.bos_token_id, t], cc) for t in firsts}
    finally:
        head.weight.data.div_(60.0)
    vocab = first.shape[0]
    assert (first > 0.01).sum() > 3  # not degenerate: several first tokens are likely
    limit_first = _null_tvd_quantile(first.expand(rows, -1), first)
    for name, ids in samples.items():
        assert all(len(row) == 2 for row in ids), name
        counts = torch.bincount(torch.tensor([row[0] for row in ids]), minlength=vocab).double()
        assert _tvd(counts, first) < limit_first, f"{name}: first token"
        conditionals = torch.stack([second_given[row[0]] for row in ids])  # [rows, V]
        mixture = conditionals.mean(0)
        limit_second = _null_tvd_quantile(conditionals, mixture)
        counts = torch.bincount(torch.tensor([row[1] for row in ids]), minlength=vocab).double()
        assert _tvd(counts, mixture) < limit_second, f"{name}: second token"


def test_seeded_and_batch_independent(bundle):
    cfg = SelfSegConfig(weights="random-tiny").with_overrides({"caption.cycles": 3})
    gen = torch.Generator().manual_seed(5)
    clusters = [torch.randn(n, 64, generator=gen) for n in (4, 9)]
    both = caption_batched(bundle, clusters, cfg, [10, 11])
    alone = caption_batched(bundle, clusters[1:], cfg, [11])
    assert both[1] == alone[0]
    assert caption_reference(bundle, clusters[0], cfg, 7) == caption_reference(bundle, clusters[0], cfg, 7)
    assert all(3 <= len(c.split()) <= 25 for caps in both for c in caps)


PROMPT = "goldfish lapdog "  # two words of the random-weight vocabulary (LAVIS uses "a picture of ")


@pytest.mark.parametrize("keep, includes", [(False, False), (True, True)])
def test_prompt_and_lengths_equal_hf_generate(bundle, keep, includes):
    """caption.prompt feeds text after [DEC]; keep_prompt_text keeps it in the caption; with
    length_includes_prompt min/max count [DEC] + prompt too (HF's min_length / max_length)."""
    cfg = SelfSegConfig(weights="random-tiny").with_overrides(
        {
            "caption.do_sample": False,
            "caption.prompt": PROMPT,
            "caption.keep_prompt_text": keep,
            "caption.length_includes_prompt": includes,
            "caption.min_new_tokens": 7,
            "caption.max_new_tokens": 7,
        }
    )
    gen = torch.Generator().manual_seed(4)
    clusters = [torch.randn(n, 64, generator=gen) * 3 for n in (3, 20)]
    fast = caption_batched(bundle, clusters, cfg, [0, 1])
    ref = [caption_reference(bundle, c, cfg, 0) for c in clusters]
    assert fast == ref
    plain = caption_batched(bundle, clusters, cfg.with_overrides({"caption.prompt": ""}), [0, 1])
    assert plain != fast  # the prompt conditions what follows
    for (caption,) in fast:
        words = caption.split()
        assert caption.startswith(PROMPT.strip()) == keep
        # 7 tokens in all with the prompt counted ([DEC] + 2 prompt words + 4 new), else 7 new ones
        assert len(words) == (7 - 3 if includes else 7) + (2 if keep else 0)


def test_finished_rows_are_compacted_without_changing_captions(bundle, monkeypatch):
    """Rows that hit [SEP] early are dropped from the decoding batch at the next host check; every
    caption is the one a run without compaction gives (seeded sampling: same draws per row)."""
    from selfseg_fast.models.blip_text_fast import FastBlipTextDecoder

    kept = []
    select = FastBlipTextDecoder.select_rows
    monkeypatch.setattr(
        FastBlipTextDecoder, "select_rows", staticmethod(lambda c, k: kept.append(len(k)) or select(c, k))
    )
    cfg = SelfSegConfig(weights="random-tiny").with_overrides(
        {"caption.cycles": 6, "caption.min_new_tokens": 1}
    )
    gen = torch.Generator().manual_seed(6)
    clusters = [torch.randn(n, 64, generator=gen) for n in (5, 11, 30)]
    head = bundle.model.text_decoder.cls.predictions.decoder
    head.bias.data[102] += 9.0  # make [SEP] likely, so rows finish at different steps
    try:
        compacted = caption_batched(bundle, clusters, cfg, [1, 2, 3], sync_every=1)
        whole = caption_batched(bundle, clusters, cfg, [1, 2, 3], sync_every=1000)
    finally:
        head.bias.data[102] -= 9.0
    lengths = {len(c.split()) for caps in whole for c in caps}
    assert compacted == whole and len(lengths) > 2
    assert kept and kept[0] <= 9 and kept == sorted(kept, reverse=True)  # 18 rows, compacted at least once


def test_sampler_ops_per_token_do_not_grow_with_rows(bundle):
    """Dispatched ops per generated token: the same for 1 row and for 6 clusters x 4 cycles (nothing in
    the decoding loop is per row or per cluster)."""
    from selfseg_fast.counters import OpCounter

    gen = torch.Generator().manual_seed(7)
    per_token = []
    for n_clusters, cycles in ((1, 1), (6, 4)):
        clusters = [torch.randn(5 + 3 * i, 64, generator=gen) for i in range(n_clusters)]
        ops = []
        for tokens in (2, 6):
            cfg = SelfSegConfig(weights="random-tiny").with_overrides(
                {"caption.cycles": cycles, "caption.min_new_tokens": tokens, "caption.max_new_tokens": tokens}
            )
            with OpCounter() as counter:
                caption_batched(bundle, clusters, cfg, list(range(n_clusters)), sync_every=100)
            ops.append(counter.get().ops)
        per_token.append((ops[1] - ops[0]) / 4)
    assert per_token[0] == per_token[1], per_token


@pytest.mark.gpu
def test_cuda_graph_decode_equals_eager():
    """The decode step replayed from CUDA graphs (captured again after each compaction) gives the
    eager tokens."""
    from selfseg_fast.stages.caption import sample_captions

    bundle = load_blip(SelfSegConfig(weights="random-tiny", seed=0), "cuda")
    cc = SelfSegConfig().with_overrides({"caption.cycles": 5, "caption.min_new_tokens": 1}).caption
    gen = torch.Generator().manual_seed(8)
    tokens = torch.randn(3, 40, 64, generator=gen).cuda()
    labels = torch.randint(0, 3, (3, 40), generator=gen).cuda()
    rows = [(b, c) for b in range(3) for c in range(3)]
    head = bundle.model.text_decoder.cls.predictions.decoder
    head.bias.data[102] += 9.0  # rows finish early: compaction, then a new capture
    args = (bundle, tokens, labels, rows, list(range(9)), cc)
    eager = sample_captions(*args, sync_every=1)
    graphed = sample_captions(*args, sync_every=1, cuda_graphs=True)
    assert (eager == graphed).all()
