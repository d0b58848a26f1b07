"""An offline noun -> class mapper on WordNet, the default LOVE back-end when no LLM is configured.

For a noun and a vocabulary (each class with its synonyms), the first rule that fires decides:
  1. synonyms: a noun sense is a sense of a class name (couch -> sofa, aeroplane -> airplane);
  2. hypernym paths: a class sense is an ancestor of a noun sense (sedan -> car, puppy -> dog); the
     nearest ancestor wins, ties go to the more common noun sense (WordNet's sense order);
Senses considered: common-noun senses in the lexicographer file of the word's first sense.
  3. gloss overlap: a class name appears as words in the main clause of the definition of the noun's
     first sense
     ("cyclist: a person who rides a bicycle" -> person); the earliest mention wins.
Nothing fires: `background`. This is a deterministic stand-in for the paper's LLM, not its equal:
results computed with it are labelled with the back-end name `wordnet`.
"""

from __future__ import annotations

import re
from functools import cache

from selfseg_fast.nlp_data import wordnet

BACKGROUND = "background"
MAX_HYPERNYM_DISTANCE = 6  # beyond this an ancestor is too general to name the noun (entity, object...)


def _lemma(word: str) -> str:
    return "_".join(word.strip().lower().split())


@cache
def _noun_synsets(word: str) -> tuple:
    """The senses of `word` that can name what it names most often: common-noun senses (instances,
    i.e. proper names like "Tree" the actor, are dropped) in the same lexicographer file as its first
    sense (grass: noun.plant, so not the informer of noun.person)."""
    wn = wordnet()
    synsets = wn.synsets(_lemma(word), pos="n")
    if not synsets and " " in word.strip():  # "potted plant" is not in WordNet: fall back to the head noun
        synsets = wn.synsets(_lemma(word.split()[-1]), pos="n")
    common = [synset for synset in synsets if not synset.instance_hypernyms()]
    if not common:
        return ()
    return tuple(synset for synset in common if synset.lexname() == common[0].lexname())


def _ancestor_distances(synset) -> dict:
    """{ancestor synset: fewest hypernym steps from `synset`}."""
    distances = {synset: 0}
    frontier = [synset]
    for step in range(1, MAX_HYPERNYM_DISTANCE + 1):
        nxt = []
        for node in frontier:
            for parent in node.hypernyms():
                if parent not in distances:
                    distances[parent] = step
                    nxt.append(parent)
        frontier = nxt
    return distances


# Words that end a definition's genus phrase ("a person WHO rides...", "a seat FOR...").
_CLAUSE_WORDS = frozenset(
    ("who", "whose", "which", "that", "for", "with", "without", "of", "in", "on", "at", "to", "from", "by",
     "used", "as", "where", "when", "usually", "especially", "often", "or", "and")
)  # fmt: skip


def genus_phrase(definition: str) -> list[str]:
    """The words of a WordNet definition up to its first clause word, ';' or '(' (hyphenated words
    kept whole: "horse-drawn" is no horse)."""
    core = re.split(r"[;(]", definition.lower(), maxsplit=1)[0]
    words = []
    for word in re.findall(r"[a-z]+(?:-[a-z]+)*", core):
        if word in _CLAUSE_WORDS:
            break
        words.append(word)
    return words


class WordNetMapper:
    """Maps nouns to class names of a vocabulary with WordNet only (no LLM, no network)."""

    name = "wordnet"

    def map_nouns(self, nouns: list[str], classes: dict[str, list[str]]) -> dict[str, str]:
        """nouns -> class name (a key of `classes`: class name -> synonyms) or 'background'."""
        class_senses = {
            cls: {s for word in [cls, *syns] for s in _noun_synsets(word)} for cls, syns in classes.items()
        }
        return {noun: self._map_one(noun, classes, class_senses) for noun in nouns}

    def _map_one(self, noun: str, classes: dict[str, list[str]], class_senses: dict[str, set]) -> str:
        senses = _noun_synsets(noun)
        # 1. synonyms
        for sense in senses:
            for cls, owned in class_senses.items():
                if sense in owned:
                    return cls
        # 2. nearest class among the ancestors of any sense
        best: tuple[int, int, str] | None = None
        for rank, sense in enumerate(senses):
            for ancestor, distance in _ancestor_distances(sense).items():
                for cls, owned in class_senses.items():
                    if ancestor in owned and (best is None or (distance, rank) < best[:2]):
                        best = (distance, rank, cls)
        if best is not None:
            return best[2]
        # 3. gloss overlap with the first sense's definition
        if senses:
            gloss = " " + " ".join(genus_phrase(senses[0].definition())) + " "
            hits = []
            for cls, syns in classes.items():
                for word in [cls, *syns]:
                    pos = gloss.find(" " + " ".join(word.lower().split()) + " ")
                    if pos >= 0 and cls != BACKGROUND:
                        hits.append((pos, -len(word), cls))
            if hits:
                return min(hits)[2]
        return BACKGROUND
