"""The random-weight BLIP vocabulary: clean concrete nouns (no slurs or obscenities), deterministic."""

from __future__ import annotations

import re

import pytest

from selfseg_fast.models import vocab
from selfseg_fast.nlp_data import wordnet

# Written for this test, independently of vocab.BLOCK_LIST: the words the issue saw in captions, and
# more slurs and obscenities that WordNet lists with a harmless sense as well.
MUST_NOT_APPEAR = str.split("""
darkey darky darkie coon dyke nigger nigga negro negress spic chink gook kike wop dago jap paki injun
redskin squaw wetback honky cracker faggot fag fagot queer tranny shemale retard spastic midget cunt
twat prick cock dick pussy tit tits boob ass arse asshole bitch bastard whore slut hooker shit crap
turd piss fart fuck motherfucker wank dildo porn rape rapist nazi swastika
""")
OFFENSIVE_GLOSS = re.compile(r"\b(offensive|obscene|slur|vulgar|derogatory|disparaging)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def tokens() -> list[str]:
    return vocab.synthetic_vocab()


@pytest.fixture(scope="module")
def words(tokens) -> set[str]:
    return set(tokens[vocab.FIRST_WORD_ID : vocab.LAST_WORD_ID + 1])


def test_no_blocked_or_known_offensive_word(words) -> None:
    assert not words & vocab.BLOCK_LIST
    assert not words & set(MUST_NOT_APPEAR)
    assert not [w for w in words if any(root in w for root in vocab.BLOCKED_ROOTS)]


def test_no_word_wordnet_files_under_slurs_or_obscenities(words) -> None:
    """Checked through NLTK's own pointer resolution, not our data.noun reader."""
    wn = wordnet()
    members = set()
    for domain in ("ethnic_slur.n.01", "obscenity.n.01", "obscenity.n.02", "disparagement.n.01"):
        for synset in wn.synset(domain).in_usage_domains():
            members.update(name.lower() for name in synset.lemma_names())
    assert len(members) > 30  # the domains were found
    assert not words & members


def test_no_word_has_a_sense_glossed_as_offensive(words) -> None:
    wn = wordnet()
    sample = sorted(w for w in words if w.isalpha())[::15]  # ~1,100 words, every part of the alphabet
    offending = [
        (w, s.name())
        for w in sample
        for s in wn.synsets(w, pos="n")
        if OFFENSIVE_GLOSS.search(s.definition())
    ]
    assert offending == []


def test_layout_words_and_determinism(tokens, words) -> None:
    assert len(tokens) == vocab.VOCAB_SIZE == len(set(tokens))
    assert tokens[0] == "[PAD]" and tokens[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokens[-2:] == ["[DEC]", "[ENC]"]
    nouns = [w for w in tokens[vocab.FIRST_WORD_ID : vocab.LAST_WORD_ID + 1] if not w.isdigit()]
    assert len(nouns) > 15_000 and nouns == sorted(nouns)
    assert {"dog", "car", "tree", "road", "hammer", "cat"} <= words
    wn = wordnet()
    assert all(wn.synsets(w, pos="n") for w in nouns[::500])  # real WordNet nouns
    assert vocab.synthetic_vocab() == tokens  # the same list every time (sorted, no sampling)


def test_tokenizer_uses_the_clean_vocabulary(tokens) -> None:
    tokenizer = vocab.synthetic_blip_tokenizer()
    written = (vocab.vocab_dir() / vocab.VOCAB_FILE).read_text().split("\n")[:-1]
    assert written == tokens  # the cached file (maybe built by an earlier process) is this build
    ids = tokenizer.convert_tokens_to_ids(["hammer", "road"])
    assert tokenizer.decode(ids) == "hammer road"
