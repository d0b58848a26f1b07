"""A BERT-layout vocabulary of 30524 ids made offline, for BLIP models with random weights.

The special tokens sit at BERT/BLIP's ids ([PAD] 0, [unusedN] 1-99, [UNK] 100, [CLS] 101, [SEP] 102,
[MASK] 103, [DEC] 30522, [ENC] 30523); ids 104..30521 are English words: WordNet's single-word noun
lemmas, evenly sampled across the alphabet (deterministic), so random-weight captions are made of
words and the noun stage has something to find. Written once to a cache folder, never committed.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from selfseg_fast.paths import cache_path

VOCAB_SIZE = 30524
SPECIAL = {
    0: "[PAD]",
    100: "[UNK]",
    101: "[CLS]",
    102: "[SEP]",
    103: "[MASK]",
    30522: "[DEC]",
    30523: "[ENC]",
}
FIRST_WORD_ID, LAST_WORD_ID = 104, 30521


def vocab_dir() -> Path:
    return cache_path("blip_vocab")


def synthetic_vocab() -> list[str]:
    """The 30524 tokens in id order."""
    from selfseg_fast.nlp_data import wordnet

    lemmas = sorted(
        {n for n in wordnet().all_lemma_names("n") if n.isalpha() and n.islower() and 3 <= len(n) <= 12}
    )
    n_words = LAST_WORD_ID - FIRST_WORD_ID + 1
    step = max(1, len(lemmas) // n_words)
    words = lemmas[::step][:n_words]
    words += [f"word{i}" for i in range(n_words - len(words))]  # only if WordNet were tiny
    tokens = [SPECIAL.get(i, f"[unused{i - 1}]") for i in range(FIRST_WORD_ID)]
    tokens += words
    tokens += [SPECIAL[30522], SPECIAL[30523]]
    assert len(tokens) == VOCAB_SIZE
    return tokens


@cache
def synthetic_blip_tokenizer():
    """A BertTokenizer over the synthetic vocabulary, configured like BLIP's ([DEC] is bos)."""
    from transformers import BertTokenizer

    folder = vocab_dir()
    vocab_file = folder / "vocab.txt"
    if not vocab_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"vocab.txt.{os.getpid()}.tmp"
        tmp.write_text("\n".join(synthetic_vocab()) + "\n")
        os.replace(tmp, vocab_file)
    tokenizer = BertTokenizer(
        str(vocab_file), do_lower_case=True, bos_token="[DEC]", additional_special_tokens=["[ENC]"]
    )
    assert tokenizer.convert_tokens_to_ids("[DEC]") == 30522 and tokenizer.sep_token_id == 102
    return tokenizer
