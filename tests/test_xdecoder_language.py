"""X-Decoder language side: CLIP tokenizer, causal text encoder (reference and fast), prompt averaging, cache.

References: a direct per-head softmax-attention computation written here from the CLIP text-encoder
definition; the official per-class loop (`embed_reference`). Tolerances (float32): atol 1e-5, rtol 1e-5.
"""

from __future__ import annotations

import copy
import gzip
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from selfseg_fast.errors import SelfSegError, WeightsError
from selfseg_fast.models.xdecoder.language import LanguageConfig, LanguageEncoder
from selfseg_fast.models.xdecoder.prompts import PROMPT_TEMPLATES, clean_class_name, prompt_texts
from selfseg_fast.models.xdecoder.text_embeddings import TextEmbedder, embed_reference
from selfseg_fast.models.xdecoder.tokenizer import (
    bundled_bpe_path,
    load_clip_tokenizer,
    tokenize,
    tokenizer_from_bpe,
    write_vocab_files,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}

# A tiny CLIP-format BPE file: header line, then merges (enough to spell the words used below).
TINY_MERGES = [
    "c a",
    "ca r</w>",
    "a r",
    "r o",
    "ro a",
    "roa d</w>",
    "t r",
    "tr e",
    "tre e</w>",
    "o f</w>",
    "ar t</w>",
]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("bpe") / "tiny_bpe.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("#version: tiny\n" + "\n".join(TINY_MERGES) + "\n")
    return tokenizer_from_bpe(path), path


def _random_encoder(vocab_size: int, *, seed: int = 0) -> LanguageEncoder:
    cfg = LanguageConfig(vocab_size=vocab_size, width=32, layers=2, heads=4, proj_dim=24)
    enc = LanguageEncoder(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 and p.numel() == 32 else 0.0)
            )
        enc.logit_scale.fill_(math.log(10.0))
    return enc


def _random_ids(vocab_size: int, eot: list[int], n: int = 77) -> torch.Tensor:
    """Rows [BOS, random words..., EOT at eot[i], EOT padding]; ids of words < vocab_size - 2."""
    ids = torch.randint(0, vocab_size - 2, (len(eot), n))
    ids[:, 0] = vocab_size - 2
    for row, pos in enumerate(eot):
        ids[row, pos:] = vocab_size - 1
    return ids


def _direct_embedding(enc: LanguageEncoder, ids: torch.Tensor) -> torch.Tensor:
    """CLIP text encoder written out: per-head causal softmax attention, QuickGELU MLP, EOT pooling."""
    t = enc.lang_encoder
    heads, (b, n) = enc.cfg.heads, ids.shape
    x = t.token_embedding.weight[ids] + t.positional_embedding[:n]

    def ln(v, m):
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)
        return m.weight * (v - mu) / torch.sqrt(var + 1e-12) + m.bias

    for blk in t.resblocks:
        h = ln(x, blk.ln_1)
        q, k, v = (h @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias).chunk(3, dim=-1)
        d = q.shape[-1] // heads
        outs = []
        for i in range(heads):
            qi, ki, vi = (z[..., i * d : (i + 1) * d] for z in (q, k, v))
            scores = qi @ ki.transpose(1, 2) / math.sqrt(d)
            future = torch.ones(n, n, dtype=torch.bool).triu(1)
            outs.append(scores.masked_fill(future, float("-inf")).softmax(-1) @ vi)
        x = x + torch.cat(outs, -1) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        h = ln(x, blk.ln_2) @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias
        x = x + (h * torch.sigmoid(1.702 * h)) @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias
    x = ln(x, t.ln_final)
    first_eot = (ids == ids.max(dim=1, keepdim=True).values).float().argmax(dim=1)
    e = x[torch.arange(b), first_eot] @ enc.lang_proj
    return e / (e.norm(dim=-1, keepdim=True) + 1e-7)


# ---- tokenizer ---------------------------------------------------------------------------------------


def test_tiny_bpe_tokenizer_pads_with_eot_and_truncates(tiny_tokenizer) -> None:
    tok, _ = tiny_tokenizer
    n_vocab = 512 + len(TINY_MERGES) + 2
    assert len(tok) == n_vocab
    ids, mask = tokenize(tok, ["car road", "tree of art " * 40])
    bos, eot = n_vocab - 2, n_vocab - 1
    assert ids.shape == (2, 77) and ids.dtype == torch.int64
    assert ids[0, 0] == bos and ids[0, 3] == eot and (ids[0, 3:] == eot).all()
    assert mask[0].tolist() == [1] * 4 + [0] * 73
    assert ids[1, -1] == eot and (ids[1, 1:-1] != eot).all() and mask[1].all()  # truncated, end kept
    assert tok.convert_ids_to_tokens(ids[0, 1:3].tolist()) == ["car</w>", "road</w>"]


def test_folder_loading_equals_bpe_building(tiny_tokenizer, tmp_path: Path) -> None:
    tok, bpe = tiny_tokenizer
    write_vocab_files(bpe, tmp_path)
    folder_tok = load_clip_tokenizer(str(tmp_path))
    texts = ["a car of art.", "the tree road"]
    assert torch.equal(tokenize(tok, texts)[0], tokenize(folder_tok, texts)[0])
    assert folder_tok.cls_token == folder_tok.eos_token  # as the official build_tokenizer sets it


def test_folder_without_vocab_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="vocab.json and merges.txt"):
        load_clip_tokenizer(str(tmp_path))


def test_unreachable_hub_id_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="cannot load the CLIP tokenizer"):
        load_clip_tokenizer("no-such-org/no-such-clip-tokenizer")


@pytest.mark.skipif(bundled_bpe_path() is None, reason="open_clip_torch (CLIP BPE file) not installed")
def test_real_clip_vocabulary_offline() -> None:
    tok = load_clip_tokenizer()
    assert len(tok) == 49408
    ids, _ = tokenize(tok, ["a photo of a cat."])
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]  # CLIP's published ids
    assert (ids[0, 7:] == 49407).all()


# ---- prompts -------------------------------------------------------------------------------------------


def test_prompts_match_official_set() -> None:
    assert len(PROMPT_TEMPLATES) == 81 and len(set(PROMPT_TEMPLATES)) == 81
    assert PROMPT_TEMPLATES[0] == "{}." and "a photo of a {}." in PROMPT_TEMPLATES
    assert clean_class_name("sky-other-merged") == "sky" and clean_class_name("wall-stuff") == "wall"
    assert prompt_texts("tree-merged")[:2] == ["tree.", "a photo of a tree."]


# ---- text encoder --------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_encoder_matches_direct_computation(impl: str) -> None:
    enc = _random_encoder(600)
    ids = _random_ids(600, eot=[5, 12, 76, 1])
    with torch.no_grad():
        got = enc.forward_language(ids, impl=impl)
        ref = _direct_embedding(enc, ids)
    torch.testing.assert_close(got, ref, **TOL)


def test_fast_equals_reference_on_fresh_inputs() -> None:
    enc = _random_encoder(600, seed=3)
    for trial in range(3):
        eot = torch.randint(1, 77, (6,), generator=torch.Generator().manual_seed(trial)).tolist()
        ids = _random_ids(600, eot)
        with torch.no_grad():
            torch.testing.assert_close(
                enc.forward_language(ids, impl="fast"), enc.forward_language(ids), **TOL
            )


def test_bfloat16_fast_path_stays_close_to_float32() -> None:
    """The GPU path runs half precision; the TF LayerNorm keeps its statistics in float32. Cosine >= 0.995."""
    enc = _random_encoder(600, seed=5)
    ids = _random_ids(600, eot=[5, 30, 76])
    with torch.no_grad():
        ref = enc.forward_language(ids, impl="reference")
        low = copy.deepcopy(enc).to(torch.bfloat16).forward_language(ids, impl="fast")
    assert low.dtype == torch.bfloat16
    assert ((ref * low.float()).sum(-1) >= 0.995).all()


def test_pooling_is_causal_and_at_first_eot() -> None:
    enc = _random_encoder(600)
    ids = _random_ids(600, eot=[6]).repeat(2, 1)
    ids[1, 10:] = torch.randint(0, 598, (67,))  # change only tokens after the end token
    ids[1, 20] = 599  # a second end token later on: pooling still takes the first
    with torch.no_grad():
        a = enc.forward_language(ids, impl="reference")
        b = enc.forward_language(ids[:, :7], impl="fast")
    torch.testing.assert_close(a[0], a[1], **TOL)  # later tokens cannot leak into the end token
    torch.testing.assert_close(a, b, **TOL)
    ids[1, 3] = (ids[1, 3] + 1) % 598  # an earlier token does matter
    with torch.no_grad():
        c = enc.forward_language(ids, impl="reference")
    assert (c[0] - c[1]).abs().max() > 1e-3


def test_env_switch_and_bad_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The debugging switch is read by the plan (once per engine) and reaches the encoder's config."""
    from selfseg_fast.config import SelfSegConfig
    from selfseg_fast.plan import resolve_plan

    enc = _random_encoder(600)
    assert enc.resolve_impl(None) == "fast" == resolve_plan(SelfSegConfig(), "cpu").text_encoder
    monkeypatch.setenv("SELFSEG_XDECODER_TEXT_IMPL", "reference")
    assert resolve_plan(SelfSegConfig(), "cpu").text_encoder == "reference"
    enc.cfg.impl = "reference"
    assert enc.resolve_impl(None) == "reference"
    monkeypatch.setenv("SELFSEG_XDECODER_TEXT_IMPL", "bogus")
    with pytest.raises(SelfSegError, match="unknown text encoder"):
        resolve_plan(SelfSegConfig(), "cpu")
    enc.cfg.impl = "bogus"
    with pytest.raises(SelfSegError, match="unknown implementation"):
        enc.resolve_impl(None)
    with pytest.raises(SelfSegError, match="token ids"):
        enc.forward_language(torch.zeros(2, 80, dtype=torch.long))


def test_similarity_uses_exp_logit_scale() -> None:
    enc = _random_encoder(600)
    v, t = torch.randn(2, 5, 24), F.normalize(torch.randn(3, 24), dim=-1)
    with torch.no_grad():
        got = enc.compute_similarity(v, t)
    torch.testing.assert_close(got, 10.0 * F.normalize(v, dim=-1) @ t.T, **TOL)


# ---- text embeddings and their cache -------------------------------------------------------------------


def test_embedder_equals_official_loop_and_caches(tiny_tokenizer) -> None:
    tok, _ = tiny_tokenizer
    enc = _random_encoder(len(tok))
    emb = TextEmbedder(enc, tok, batch_size=50)  # 81 prompts per name: several batches
    names = ["car", "road-other", "tree", "car"]
    first = emb(names)
    ref = embed_reference(enc, tok, names)
    torch.testing.assert_close(first, ref, **TOL)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(4), **TOL)
    passes = emb.encoder_passes
    assert passes == math.ceil(3 * 81 / 50) and len(emb) == 3  # duplicates are encoded once

    calls = []
    enc.register_forward_hook(lambda *a: calls.append(1))
    enc.lang_encoder.register_forward_hook(lambda *a: calls.append(1))
    for block in enc.lang_encoder.resblocks:
        block.register_forward_hook(lambda *a: calls.append(1))
    again = emb(["tree", "car"])
    assert calls == [] and emb.encoder_passes == passes  # cached names: no encoder pass at all
    torch.testing.assert_close(again, first[[2, 0]], atol=0, rtol=0)

    emb(["art", "car"])  # one new name: one more batched pass (81 prompts <= 2 batches of 50)
    assert emb.encoder_passes == passes + 2 and len(calls) > 0


def test_embedder_lru_and_bad_names(tiny_tokenizer) -> None:
    tok, _ = tiny_tokenizer
    emb = TextEmbedder(_random_encoder(len(tok)), tok, max_cached=2)
    emb(["car"])
    emb(["road", "tree"])
    assert "car" not in emb and len(emb) == 2
    assert emb([]).shape == (0, 24)
    with pytest.raises(SelfSegError, match="non-empty string"):
        emb(["car", " "])
    with pytest.raises(SelfSegError, match="not one string"):
        emb("car")
