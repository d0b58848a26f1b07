"""Noun stage: known captions, lemmas, WordNet filter, options, and fast == reference."""

from __future__ import annotations

import random

from selfseg_fast.config import NounConfig, SelfSegConfig
from selfseg_fast.stages.nouns import NounExtractor

CAPTIONS = [
    "a man riding a horse on a beach with dogs",
    "two cars parked next to tall buildings and trees",
    "glasses of wine on wooden tables",
    "there is a blurry photo of something in the background",
    "people walking on the sidewalk near a red bus",
    "",
    "a close up of a cat sleeping on a couch",
]


def test_known_captions():
    nouns = NounExtractor(NounConfig())
    per = nouns.extract(CAPTIONS)
    assert per[0] == ["man", "horse", "beach", "dog"]
    assert per[1] == ["car", "building", "tree"]  # plurals lemmatised, adjectives/verbs dropped
    assert per[2] == ["glass", "wine", "table"]
    assert per[5] == []
    assert "cat" in per[6] and "couch" in per[6] and "sleeping" not in per[6]
    union = nouns.nouns_for_reference(CAPTIONS[:2])
    assert union == ["man", "horse", "beach", "dog", "car", "building", "tree"]


def test_autoseg_filters():
    nouns = NounExtractor(SelfSegConfig().authors_code("autoseg").nouns)
    found = nouns.nouns_for_reference(CAPTIONS)
    for dropped in ("background", "photo", "red"):
        assert dropped not in found
    assert all(len(n) > 2 for n in found)


def test_maskblip_keeps_nouns_wordnet_does_not_know():
    paper = NounExtractor(SelfSegConfig().nouns)
    released = NounExtractor(SelfSegConfig().authors_code("maskblip").nouns)
    caption = ["a picture of a blorptang next to a dog"]
    assert "blorptang" not in paper.nouns_for_reference(caption)
    assert {"picture", "blorptang", "dog"} <= set(released.nouns_for_reference(caption))


def test_fast_equals_reference_on_many_captions():
    rng = random.Random(0)
    words = " ".join(CAPTIONS).split() + ["zebras", "the", "mountains", "running", "skis", "of"]
    lists = [
        [" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(0, 4))]
        for _ in range(60)
    ]
    nouns = NounExtractor(NounConfig())
    fast = nouns.nouns_for_many(lists)
    again = nouns.nouns_for_many(lists)  # served from the cache
    assert fast == again == [nouns.nouns_for_reference(caps) for caps in lists]


def test_worker_processes_give_the_same_nouns():
    """Captions split over a spaCy worker process (spawned once per configuration): same nouns as the
    reference, first-seen order kept."""
    rng = random.Random(1)
    words = " ".join(CAPTIONS).split() + ["zebras", "mountains", "skis"]
    lists = [
        [" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(4)] for _ in range(30)
    ]
    nouns = NounExtractor(SelfSegConfig().authors_code("autoseg").nouns, workers=1, min_parallel=1)
    got = nouns.nouns_for_many(lists)
    assert nouns.workers == 1  # the pool really ran (a broken pool would have fallen back in-process)
    assert got == [nouns.nouns_for_reference(caps) for caps in lists]
