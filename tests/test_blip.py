"""BLIP loading: random and random-tiny builds, the save/load round trip, the missing-weights error."""

from __future__ import annotations

import pytest
import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import WeightsError
from selfseg_fast.models.blip import load_blip, random_blip_config


def test_random_tiny_is_seeded_and_keeps_vocab_layout():
    a = load_blip(SelfSegConfig(weights="random-tiny", seed=3))
    b = load_blip(SelfSegConfig(weights="random-tiny", seed=3))
    c = load_blip(SelfSegConfig(weights="random-tiny", seed=4))
    wa, wb, wc = (m.model.vision_model.embeddings.patch_embedding.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    tok = a.tokenizer
    assert len(tok) == 30524 and tok.convert_tokens_to_ids("[DEC]") == 30522 and tok.sep_token_id == 102
    assert tok.pad_token_id == 0


def test_full_size_config_matches_blip_large():
    cfg = random_blip_config(tiny=False)
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size, v.image_size) == (
        1024,
        24,
        16,
        16,
        384,
    )
    assert (t.hidden_size, t.num_hidden_layers, t.vocab_size, t.encoder_hidden_size) == (768, 12, 30524, 1024)


def test_pretrained_path_loads_a_saved_folder(tmp_path):
    tiny = load_blip(SelfSegConfig(weights="random-tiny", seed=1))
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_blip(SelfSegConfig(weights="pretrained", blip_model=str(tmp_path)))
    for (name, p), (_, q) in zip(tiny.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(p, q), name
    assert loaded.tokenizer.convert_tokens_to_ids("[DEC]") == 30522


@pytest.mark.parametrize("source", ["/no/such/folder", "Salesforce/blip-image-captioning-large"])
def test_missing_weights_one_line_error(source):
    with pytest.raises(WeightsError) as info:
        load_blip(SelfSegConfig(weights="pretrained", blip_model=source))
    text = str(info.value)
    assert "\n" not in text
    for needle in (
        "Salesforce/blip-image-captioning-large",
        "--blip PATH",
        "--weights random",
        "random-tiny",
    ):
        assert needle in text


def test_a_python_tokenizer_is_swapped_for_the_fast_one_with_the_same_text():
    """transformers 4.x hands out the Python BertTokenizer; the bundle gets the Rust one, which decodes
    captions to the very same strings."""
    import torch

    from selfseg_fast.models.blip import fast_tokenizer
    from selfseg_fast.models.vocab import VOCAB_FILE, synthetic_blip_tokenizer, vocab_dir

    try:  # transformers 5 keeps the Python implementation under this name
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
    except ImportError:  # transformers 4.x: BertTokenizer is the Python one
        from transformers import BertTokenizer as Slow
    synthetic_blip_tokenizer()
    slow = Slow(
        str(vocab_dir() / VOCAB_FILE),
        do_lower_case=True,
        bos_token="[DEC]",
        additional_special_tokens=["[ENC]"],
    )
    assert not slow.is_fast
    fast = fast_tokenizer(slow)
    assert fast.is_fast and fast.convert_tokens_to_ids("[DEC]") == 30522
    ids = torch.randint(0, 30524, (64, 26), generator=torch.Generator().manual_seed(0)).tolist()
    ids[0][:4] = [30522, 2000, 102, 0]
    assert fast.batch_decode(ids, skip_special_tokens=True) == slow.batch_decode(
        ids, skip_special_tokens=True
    )
