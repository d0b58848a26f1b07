"""Competing-noun consolidation (selfseg_fast/consolidate.py): WordNet rules with their guards, the
mask-overlap rule, and that applying a merge sums score maps exactly."""

from __future__ import annotations

import pytest
import torch

from selfseg_fast.consolidate import (
    ConsolidateConfig,
    Merge,
    consolidate_scores,
    merge_score_maps,
    plan_overlap_merges,
    plan_wordnet_merges,
    relabel,
    soft_containment,
)
from selfseg_fast.nlp_data import wordnet


@pytest.fixture(scope="module")
def wn():
    return wordnet()


def _pairs(merges: list[Merge]) -> set[tuple[str, str, str]]:
    return {(m.kept, m.merged, m.rule) for m in merges}


def test_synonyms_merge_into_the_first_seen(wn) -> None:
    merges = plan_wordnet_merges(["sofa", "lamp", "couch"], ConsolidateConfig(mode="specific"), wn)
    assert _pairs(merges) == {("sofa", "couch", "synonym")}
    assert merges[0].score == 1.0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("specific", {("hawk", "bird", "hypernym")}), ("general", {("bird", "hawk", "hypernym")})],
)
def test_hypernym_policy(wn, policy: str, expected: set) -> None:
    merges = plan_wordnet_merges(["bird", "tree", "hawk"], ConsolidateConfig(mode=policy), wn)
    assert _pairs(merges) == expected
    assert 0 < merges[0].score < 1  # path similarity of the two senses


@pytest.mark.parametrize(
    "pair",
    [
        ("dog", "cat"),  # siblings, not the same thing
        ("wheel", "car"),  # a part of the other: both are real segments
        ("mouse", "keyboard"),  # mouse the animal is not a device
        ("dog", "entity"),  # never into a very general ancestor
        ("man", "person"),  # person is in noun.Tops
        ("hawk", "vertebrate"),  # 3 steps apart: beyond max_distance 2
    ],
)
def test_guards_keep_apart(wn, pair: tuple[str, str]) -> None:
    for policy in ("specific", "general"):
        assert plan_wordnet_merges(list(pair), ConsolidateConfig(mode=policy), wn) == []


def test_a_hypernym_of_two_siblings_fuses_nothing_under_specific(wn) -> None:
    cfg = ConsolidateConfig(mode="specific", max_distance=3)
    assert plan_wordnet_merges(["dog", "cat", "carnivore"], cfg, wn) == []
    general_cfg = ConsolidateConfig(mode="general", max_distance=3)
    general = plan_wordnet_merges(["dog", "cat", "carnivore"], general_cfg, wn)
    assert _pairs(general) == {("carnivore", "dog", "hypernym"), ("carnivore", "cat", "hypernym")}


def test_chains_resolve_to_one_kept_name(wn) -> None:
    merges = plan_wordnet_merges(["dog", "puppy", "canine"], ConsolidateConfig(mode="specific"), wn)
    assert {m.merged: m.kept for m in merges} == {"dog": "puppy", "canine": "puppy"}


def test_same_cluster_only(wn) -> None:
    cfg = ConsolidateConfig(mode="specific", same_cluster_only=True)
    assert plan_wordnet_merges(["bird", "hawk"], cfg, wn, {"bird": [0], "hawk": [1]}) == []
    assert len(plan_wordnet_merges(["bird", "hawk"], cfg, wn, {"bird": [0, 1], "hawk": [1]})) == 1


def _blob_scores() -> tuple[torch.Tensor, list[str]]:
    """'dog' and 'puppy' split one blob (dog slightly stronger); 'grass' elsewhere; 'sky' on top."""
    h, w = 16, 16
    scores = torch.zeros(4, h, w)
    scores[3, :4] = 0.9  # sky
    scores[2, 4:, :8] = 0.8  # grass
    blob = torch.zeros(h, w, dtype=torch.bool)
    blob[6:14, 9:15] = True
    gen = torch.Generator().manual_seed(0)
    split = torch.rand(h, w, generator=gen) * 0.2 + 0.35  # dog share of the blob's 0.9 in [0.35, 0.55]
    scores[0] = torch.where(blob, 0.9 * split + 0.05, 0.01)
    scores[1] = torch.where(blob, 0.9 * (1 - split) - 0.05, 0.01)
    return scores, ["dog", "puppy", "grass", "sky"]


def test_overlap_merge_makes_one_region_equal_to_the_union() -> None:
    scores, names = _blob_scores()
    before = scores.argmax(0)
    merges = plan_overlap_merges(scores, names, threshold=0.6)
    assert [(m.kept, m.merged, m.rule) for m in merges] == [("dog", "puppy", "overlap")]
    assert merges[0].score > 0.6
    merged, kept = merge_score_maps(scores, names, merges)
    assert kept == ["dog", "grass", "sky"]
    after = merged.argmax(0)
    union = (before == 0) | (before == 1)
    assert torch.equal(after == 0, union)  # one 'dog' region: exactly the union of dog and puppy
    assert torch.equal(after[~union], before[~union] - 1)  # other classes unchanged (indices shift by one)
    torch.testing.assert_close(merged[0], scores[0] + scores[1])  # the merged class's map is the sum


def test_overlap_rule_leaves_separate_objects_alone() -> None:
    scores, names = _blob_scores()
    assert plan_overlap_merges(scores[[0, 2, 3]], ["dog", "grass", "sky"], threshold=0.6) == []
    contain = soft_containment(scores)
    assert contain.shape == (4, 4) and float(contain[0, 1]) > 0.6 and float(contain[0, 2]) < 0.2


def test_consolidate_scores_records_every_merge(wn) -> None:
    scores, _ = _blob_scores()
    names = ["dog", "puppy", "grass", "sky"]
    cfg = ConsolidateConfig(mode="general", overlap_threshold=0.6)
    merged, kept, merges = consolidate_scores(scores, names, cfg, lambda: wn)
    assert kept == ["dog", "grass", "sky"]
    assert [m.to_json() for m in merges] == [
        {"kept": "dog", "merged": "puppy", "rule": "hypernym", "score": merges[0].to_json()["score"]}
    ]
    off = consolidate_scores(scores, names, ConsolidateConfig(), lambda: pytest.fail("WordNet not needed"))
    assert off[1] == names and off[2] == [] and torch.equal(off[0], scores)


def test_relabel_maps_label_indices() -> None:
    label_map = torch.tensor([[0, 1, 2], [-1, 3, 1]])
    out, kept = relabel(label_map, ["sofa", "couch", "lamp", "rug"], [Merge("sofa", "couch", "synonym", 1.0)])
    assert kept == ["sofa", "lamp", "rug"]
    assert out.tolist() == [[0, 0, 1], [-1, 2, 0]]
    with pytest.raises(ValueError, match="not among the names"):
        relabel(label_map, ["a", "b"], [Merge("a", "zebra", "synonym", 1.0)])
