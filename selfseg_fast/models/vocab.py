"""A BERT-layout vocabulary of 30524 ids made offline, for BLIP models with random weights.

The special tokens sit at BERT/BLIP's ids ([PAD] 0, [unusedN] 1-99, [UNK] 100, [CLS] 101, [SEP] 102,
[MASK] 103, [DEC] 30522, [ENC] 30523); ids 104..30521 are clean, concrete English nouns, so random-
weight captions are made of words, the noun stage has something to find, and nothing a user sees
(captions, overlays, logs) is a slur or an obscenity:

- the words: WordNet noun lemmas (lower-case letters only, 3..12 long: no proper names) in the
  lexicographer files of physical things (`CONCRETE_LEXNAMES`: artifacts, animals, plants, food,
  substances, natural objects, places, phenomena, shapes). People (noun.person) and body parts
  (noun.body) are left out entirely: that is where WordNet keeps almost every slur and obscenity.
- a word is dropped if ANY of its noun senses (in any file) is marked in WordNet as offensive: a usage
  domain in `FLAGGED_DOMAINS` (ethnic slur, obscenity, disparagement, ...) or a gloss that says
  so (`FLAGGED_GLOSS`: "offensive", "obscene", "slur", "vulgar", ...), so "coon" (raccoon, but also a
  slur) and "dyke" (a dike, but also a slur) go;
- then our own `BLOCK_LIST` (whole words) and `BLOCKED_ROOTS` (any word containing them) remove what
  WordNet does not mark;
- the remaining ids are the numbers "0", "1", ... (harmless, and never WordNet nouns).
Deterministic (sorted, no sampling). Built by reading WordNet's data.noun once (wndb(5WN) format):
~1 s, against ~37 s through NLTK's Synset objects on 2 busy cores. Written once to the cache
(`vocab-v2.txt`: a cache made by the earlier, unfiltered builder is never reused), never committed.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
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
VOCAB_FILE = "vocab-v2.txt"  # bump when the word list changes, so old caches are not reused

CONCRETE_LEXNAMES = frozenset(
    {
        "noun.artifact",
        "noun.animal",
        "noun.plant",
        "noun.food",
        "noun.substance",
        "noun.object",
        "noun.location",
        "noun.phenomenon",
        "noun.shape",
    }
)
# Usage domains WordNet gives to offensive or crude senses (head words of the domain synsets).
# ("slang" is not one: it also marks harmless senses, e.g. "cat" for a Caterpillar tractor.)
FLAGGED_DOMAINS = frozenset({"ethnic_slur", "obscenity", "vulgarism", "disparagement", "profanity"})
FLAGGED_GLOSS = re.compile(
    r"\b(offensive|obscene|obscenity|slur|vulgar|derogatory|disparaging|contemptuous|insulting|abusive|"
    r"racist|pejorative|sexual intercourse|genitals?|penis|vagina|excrement|feces|faeces)\b",
    re.IGNORECASE,
)
# Whole words removed whatever WordNet says of them: slurs, obscenities, crude or hateful words that
# have a harmless concrete sense in WordNet too (rape is a plant, cock a bird, coon a raccoon).
# fmt: off
BLOCK_LIST = frozenset((
    "arse", "ass", "asshole", "bastard", "beaner", "bimbo", "bitch", "bollock", "bollocks", "boob",
    "boobs", "bugger", "bulldyke", "butt", "chink", "clit", "cock", "coon", "cracker", "crap", "cripple",
    "dago", "darkey", "darkie", "darky", "dick", "dickhead", "dildo", "douche", "dyke", "fag", "faggot",
    "fagot", "fanny", "fart", "feces", "faeces", "gook", "gyp", "gypsy", "halfbreed", "heeb", "hebe",
    "homo", "honkey", "honkie", "honky", "hooker", "hymie", "injun", "jap", "jigaboo", "jizz", "kike",
    "knocker", "knockers", "kraut", "lesbo", "midget", "mick", "mongol", "mongoloid", "mulatto", "negress",
    "negro", "nigga", "nigger", "nigra", "nip", "paki", "pansy", "penis", "pickaninny", "piss", "pisser",
    "poof", "poofter", "poon", "poop", "porn", "porno", "pornography", "prick", "pussy", "queer", "rape",
    "raper", "rapist", "redskin", "retard", "scrotum", "semen", "shemale", "shit", "skank", "slant",
    "slut", "sodomite", "spade", "spastic", "spaz", "spic", "spick", "squaw", "swastika", "tit", "tits",
    "titty", "towelhead", "tranny", "turd", "twat", "vagina", "wank", "wanker", "wetback", "whore", "wog",
    "wop", "yid", "hitler", "nazi", "lynching", "noose", "kkk",
))
# fmt: on
# Any word containing one of these is removed (they have no harmless longer words worth keeping).
BLOCKED_ROOTS = ("fuck", "shit", "cunt", "nigg", "whore", "slut", "bitch", "twat", "wank", "jizz", "dildo")


def vocab_dir() -> Path:
    return cache_path("blip_vocab")


def is_blocked(word: str) -> bool:
    """Our own block-list check (whole word or a blocked root inside it)."""
    return word in BLOCK_LIST or any(root in word for root in BLOCKED_ROOTS)


def concrete_nouns(wordnet_reader) -> list[str]:
    """The clean concrete nouns of a WordNet (see the module docstring), sorted."""
    synsets = _read_noun_synsets(wordnet_reader)
    lexnames = _lexnames(wordnet_reader)
    flagged_domains = {
        offset
        for offset, (_, words, _, _) in synsets.items()
        if words and words[0].lower() in FLAGGED_DOMAINS
    }
    senses: dict[str, list[tuple[str, bool]]] = defaultdict(list)  # word -> [(lexname, flagged)]
    written_lower: set[str] = set()  # proper names ('Cnut', 'Druze') are never written in lower case
    for lexfile, words, domains, gloss in synsets.values():
        flagged = bool(domains & flagged_domains) or bool(FLAGGED_GLOSS.search(gloss))
        for word in words:
            senses[word.lower()].append((lexnames[lexfile], flagged))
            if word.islower():
                written_lower.add(word)
    return sorted(
        word
        for word, word_senses in senses.items()
        if word in written_lower
        and word.isascii()
        and word.isalpha()
        and 3 <= len(word) <= 12
        and any(lexname in CONCRETE_LEXNAMES for lexname, _ in word_senses)
        and not any(flagged for _, flagged in word_senses)
        and not is_blocked(word)
    )


def synthetic_vocab() -> list[str]:
    """The 30524 tokens in id order."""
    from selfseg_fast.nlp_data import wordnet

    n_words = LAST_WORD_ID - FIRST_WORD_ID + 1
    words = concrete_nouns(wordnet())
    step = max(1, len(words) // n_words)
    words = words[::step][:n_words]
    words += [str(i) for i in range(n_words - len(words))]  # numbers fill the rest (never nouns)
    tokens = [SPECIAL.get(i, f"[unused{i - 1}]") for i in range(FIRST_WORD_ID)]
    tokens += words
    tokens += [SPECIAL[30522], SPECIAL[30523]]
    assert len(tokens) == VOCAB_SIZE and len(set(tokens)) == VOCAB_SIZE
    return tokens


@cache
def synthetic_blip_tokenizer():
    """A BertTokenizer over the synthetic vocabulary, configured like BLIP's ([DEC] is bos)."""
    from transformers import BertTokenizer

    folder = vocab_dir()
    vocab_file = folder / VOCAB_FILE
    if not vocab_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{VOCAB_FILE}.{os.getpid()}.tmp"
        tmp.write_text("\n".join(synthetic_vocab()) + "\n")
        os.replace(tmp, vocab_file)
    tokenizer = BertTokenizer(
        str(vocab_file), do_lower_case=True, bos_token="[DEC]", additional_special_tokens=["[ENC]"]
    )
    assert tokenizer.convert_tokens_to_ids("[DEC]") == 30522 and tokenizer.sep_token_id == 102
    return tokenizer


# ---- WordNet's data.noun (wndb(5WN)) -------------------------------------------------------------
def _read_noun_synsets(wordnet_reader) -> dict[int, tuple[int, list[str], set[int], str]]:
    """offset -> (lex_filenum, words as written, usage-domain offsets, gloss), one pass over data.noun:
    `offset lex_filenum n w_cnt(hex) [word lex_id]... p_cnt [symbol offset pos source/target]... | gloss`."""
    out = {}
    with wordnet_reader.root.join("data.noun").open() as stream:  # bytes: 8x faster than NLTK's text reader
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            n_words = int(fields[3], 16)
            words = fields[4 : 4 + 2 * n_words : 2]
            at = 4 + 2 * n_words
            n_pointers = int(fields[at])
            pointers = fields[at + 1 : at + 1 + 4 * n_pointers]
            domains = {int(pointers[i + 1]) for i in range(0, len(pointers), 4) if pointers[i] == ";u"}
            out[int(fields[0])] = (int(fields[1]), words, domains, gloss)
    return out


def _lexnames(wordnet_reader) -> list[str]:
    with wordnet_reader.open("lexnames") as stream:
        return [line.split()[1] for line in stream if line.strip()]
