"""Your own label set (selfseg_fast/taxonomy.py): nouns onto a taxonomy with the LOVE mappers, score
maps summed per label, stable ids, and agreement with bench's mapping table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selfseg_fast.errors import SelfSegError
from selfseg_fast.evaluation.llm import build_mapper
from selfseg_fast.evaluation.love import LOVE, LoveCache, Vocabulary
from selfseg_fast.taxonomy import OTHER, Taxonomy, load_vocabulary


class TableMapper:
    """A deterministic stand-in for an LLM mapper: answers from a fixed table, counts its calls."""

    name = "table"
    is_llm = True

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.calls = 0

    def describe(self) -> dict:
        return {"backend": self.name, "table": self.table}

    def map_nouns(self, nouns: list[str], vocabulary: Vocabulary) -> dict[str, str]:
        self.calls += 1
        return {n: self.table.get(n, "background") for n in nouns}


NOUNS = ["sedan", "truck", "lorry", "oak", "zebra", "road"]
TABLE = {"sedan": "car", "truck": "truck", "lorry": "truck", "oak": "vegetation", "road": "road"}


def _scores(k: int, seed: int = 0, size: int = 24) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(k, size, size, generator=gen).pow(3)  # peaked: many pixels have a clear winner


def test_builtin_and_file_taxonomies(tmp_path: Path) -> None:
    assert len(load_vocabulary("cityscapes").names) == 19
    assert "background" not in load_vocabulary("voc").names and len(load_vocabulary("voc").names) == 20
    ade = load_vocabulary("ade20k")
    assert len(ade.names) == len(set(ade.names)) == 847
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps({"name": "shop", "labels": ["shelf", "person"], "aliases": {"person": ["clerk"]}})
    )
    vocab = load_vocabulary(str(path))
    assert vocab.dataset == "shop" and vocab.names == ["shelf", "person"]
    assert vocab.index_of("clerk") == 1
    (tmp_path / "list.json").write_text(json.dumps(["a", "b"]))
    assert load_vocabulary(str(tmp_path / "list.json")).names == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read the taxonomy"),
        (json.dumps({"labels": []}), "a taxonomy is a list"),
        (json.dumps(["a", "a"]), "must be distinct"),
        (json.dumps(["a", OTHER]), "must be distinct"),
        (json.dumps({"labels": ["a"], "aliases": {"b": ["x"]}}), "not in"),
    ],
)
def test_bad_taxonomy_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SelfSegError, match=message) as info:
        load_vocabulary(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(SelfSegError, match="no such file"):
        load_vocabulary(str(tmp_path / "missing.json"))


def test_names_are_taxonomy_labels_plus_other_with_stable_ids(tmp_path: Path) -> None:
    mapper = TableMapper(TABLE)
    taxonomy = Taxonomy(load_vocabulary("cityscapes"), mapper, LoveCache(tmp_path / "c.json"))
    result = taxonomy.apply(NOUNS, scores=_scores(len(NOUNS)))
    assert set(result.present()) <= set(taxonomy.labels)
    assert result.labels == [*load_vocabulary("cityscapes").names, OTHER]  # ids never depend on the image
    assert result.mapping == {"sedan": "car", "truck": "truck", "lorry": "truck", "oak": "vegetation",
                              "zebra": OTHER, "road": "road"}  # fmt: skip
    assert mapper.calls == 1  # own names (truck, road) go straight; the rest in one batch
    second = TableMapper(TABLE)
    again = Taxonomy(load_vocabulary("cityscapes"), second, LoveCache(tmp_path / "c.json"))
    assert again.mapping(NOUNS) == result.mapping and second.calls == 0  # from the cache, not re-asked
    other = TableMapper({})  # another mapper is another cache key: asked again
    assert Taxonomy(load_vocabulary("cityscapes"), other, LoveCache(tmp_path / "c.json")).mapping(NOUNS)
    assert other.calls == 1


def test_relabel_equals_bench_mapping_and_sum_agrees_where_one_noun_dominates(tmp_path: Path) -> None:
    vocab = load_vocabulary("cityscapes")
    scores = _scores(len(NOUNS), seed=3)
    free_map = scores.argmax(0).numpy()  # the free-noun label map
    # bench's table for the same nouns (LOVE over the dataset's vocabulary)
    bench_ids = LOVE(TableMapper(TABLE), vocab, LoveCache(tmp_path / "b.json")).class_ids(NOUNS)
    relabel = Taxonomy(vocab, TableMapper(TABLE), LoveCache(tmp_path / "r.json"), merge="relabel")
    relabelled = relabel.apply(NOUNS, label_map=free_map).label_map
    expected = np.where(bench_ids[free_map] >= 0, bench_ids[free_map], relabel.other_id)  # background->other
    assert np.array_equal(relabelled, expected)
    summed = Taxonomy(vocab, TableMapper(TABLE), LoveCache(tmp_path / "s.json")).apply(NOUNS, scores=scores)
    share = scores.max(0).values / scores.sum(0)
    dominant = (share > 0.5).numpy()
    assert dominant.mean() > 0.3  # the comparison covers many pixels
    assert np.array_equal(summed.label_map[dominant], relabelled[dominant])
    # where two nouns of one label together outweigh the winner, the sum picks that label (exact merge)
    merged = relabel.merge_scores(scores, NOUNS)
    torch.testing.assert_close(merged[vocab.names.index("truck")], scores[1] + scores[2])
    assert np.array_equal(summed.label_map, merged.argmax(0).numpy())


def test_offline_wordnet_mapper_and_no_names(tmp_path: Path) -> None:
    taxonomy = Taxonomy(load_vocabulary("voc"), build_mapper(None, None), LoveCache(tmp_path / "w.json"))
    assert taxonomy.mapping(["sedan", "puppy", "zebra"]) == {"sedan": "car", "puppy": "dog", "zebra": OTHER}
    empty = taxonomy.apply([], scores=torch.zeros(0, 5, 7))
    assert empty.label_map.shape == (5, 7) and (empty.label_map == -1).all() and empty.mapping == {}
    with pytest.raises(SelfSegError, match="merge"):
        Taxonomy(load_vocabulary("voc"), TableMapper({}), merge="max")  # type: ignore[arg-type]
