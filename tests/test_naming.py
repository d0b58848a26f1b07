"""Consolidation and taxonomy wired end to end (issue 15 items 1 and 3): the grouping of class
probabilities in both segmenter paths (exact: the sum of score maps), the WordNet guards at the name
level, the audit record, taxonomy ids and bench's mapping table, and the CLI, API, HTTP and bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selfseg_fast.config import ConsolidateConfig, SelfSegConfig, TaxonomyConfig
from selfseg_fast.errors import SelfSegError
from selfseg_fast.evaluation.llm import build_mapper
from selfseg_fast.evaluation.love import LOVE, LoveCache
from selfseg_fast.grouping import Grouping
from selfseg_fast.models.xdecoder.postprocess import (
    label_map_tiled,
    mask_scores,
    semantic_map,
    upsampling_matrices,
)
from selfseg_fast.naming import NamePlanner
from selfseg_fast.taxonomy import OTHER, load_vocabulary


@pytest.fixture(autouse=True)
def _love_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSEG_LOVE_CACHE", str(tmp_path / "love.json"))


def _grouper(mode="off", overlap=None, labels=None, merge="sum", cluster_nouns=None, **kw):
    planner = NamePlanner(
        ConsolidateConfig(mode=mode, overlap_threshold=overlap, **kw),
        TaxonomyConfig(labels=labels, merge=merge),
    )
    return planner.for_image(cluster_nouns)


# ---- synthetic X-Decoder outputs: 'dog' and 'puppy' split one blob ---------------------------------------
NAMES = ["dog", "puppy", "grass", "sky"]


def _blob_outputs(seed: int = 0):
    """(class logits [Q, K + 1], mask logits [Q, 16, 16]): the blob (rows 6-13, cols 8-15) is covered
    by a dog-leaning query on its left and a puppy-leaning one on its right, so the plain label map
    splits it; grass below, sky on top."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.full((4, 16, 16), -6.0)
    masks[0, 6:14, 8:13] = 4.0  # blob, left part (dog-leaning query)
    masks[0, 6:14, 13:16] = 1.0
    masks[1, 6:14, 8:13] = 1.0  # blob, right part (puppy-leaning query)
    masks[1, 6:14, 13:16] = 4.0
    masks[2, 14:, :] = 4.0  # grass
    masks[2, 6:14, :8] = 4.0
    masks[3, :6, :] = 4.0  # sky
    masks += 0.1 * torch.randn(masks.shape, generator=gen)
    logits = torch.full((4, 5), -4.0)
    logits[0, 0], logits[0, 1] = 3.3, 2.4  # dog > puppy
    logits[1, 0], logits[1, 1] = 2.0, 2.8  # puppy > dog
    logits[2, 2] = 4.0
    logits[3, 3] = 4.0
    return logits, masks


def _both_paths(logits, masks, grouping: Grouping, out=(64, 64)):
    """(reference: official scores summed per group, argmax; fast: probabilities summed, tiled)."""
    padded = valid = (64, 64)
    scores = semantic_map(logits, masks, padded, valid, out)  # [K, H, W]
    reference = grouping.stable(grouping.sum_rows(scores).argmax(0).numpy())
    probs = torch.softmax(logits, -1)[:, :-1]
    ph, pw = upsampling_matrices((16, 16), padded, valid, out, "cpu")
    fast = grouping.stable(
        label_map_tiled(grouping.sum_columns(probs), masks, ph, pw, tile_bytes=2**12).long().numpy()
    )
    return reference, fast, scores


@pytest.mark.parametrize("rule", ["wordnet-general", "overlap"])
def test_dog_and_puppy_become_one_dog_region_equal_to_their_union(rule):
    logits, masks = _blob_outputs()
    probs = torch.softmax(logits, -1)[:, :-1]
    plain = semantic_map(logits, masks, (64, 64), (64, 64), (64, 64)).argmax(0).numpy()
    assert (plain == 0).sum() > 100 and (plain == 1).sum() > 100  # the blob is split in two
    grouper = _grouper("general") if rule == "wordnet-general" else _grouper(overlap=0.5)
    low = mask_scores(probs, masks, (64, 64), (64, 64)) if grouper.needs_scores else None
    grouping = grouper.plan(NAMES, low)
    assert grouping.output_names == ["dog", "grass", "sky"]
    audit = grouping.audit()["merges"]
    assert [(m["kept"], m["merged"], m["rule"]) for m in audit] == [
        ("dog", "puppy", "hypernym" if rule == "wordnet-general" else "overlap")
    ]
    assert 0 < audit[0]["score"] <= 1
    reference, fast, _ = _both_paths(logits, masks, grouping)
    union = (plain == 0) | (plain == 1)
    np.testing.assert_array_equal(reference == 0, union)  # one 'dog' region: the union
    np.testing.assert_array_equal(reference[~union], plain[~union] - 1)  # other classes unchanged
    np.testing.assert_array_equal(fast, reference)  # both paths


def test_grouping_of_probabilities_is_the_sum_of_score_maps():
    """Linearity, on fresh random outputs: semantic map of the grouped probabilities == grouped maps."""
    gen = torch.Generator().manual_seed(7)
    logits, masks = torch.randn(6, 6, generator=gen) * 3, torch.randn(6, 16, 16, generator=gen) * 3
    grouping = Grouping(tuple("abcde"), (0, 1, 0, 2, 1), ("a", "b", "d"))
    scores = semantic_map(logits, masks, (64, 64), (64, 64), (40, 56))
    reference, fast, _ = _both_paths(logits, masks, grouping, out=(40, 56))
    torch.testing.assert_close(grouping.sum_rows(scores)[0], scores[0] + scores[2])
    assert (reference == fast).mean() > 0.999  # float rounding may flip an exact tie, nothing else


@pytest.mark.parametrize("mode", ["specific", "general"])
def test_name_level_guards(mode):
    assert _grouper(mode).plan(["sofa", "lamp", "couch"]).output_names == ["sofa", "lamp"]
    for pair in (["dog", "cat"], ["wheel", "car"], ["mouse", "keyboard"], ["dog", "entity"]):
        grouping = _grouper(mode).plan(pair)
        assert grouping.output_names == pair and grouping.merges == (), pair
    assert _grouper(mode).plan(["dog", "entity"]).audit() == {"merges": []}


def test_same_cluster_only_uses_the_images_clusters():
    apart = _grouper("specific", same_cluster_only=True, cluster_nouns={0: ["bird"], 1: ["hawk"]})
    together = _grouper("specific", same_cluster_only=True, cluster_nouns={0: ["bird", "hawk"]})
    assert apart.plan(["bird", "hawk"]).merges == ()
    assert together.plan(["bird", "hawk"]).output_names == ["hawk"]


def test_incremental_overlap_plan_equals_full_recomputation():
    from selfseg_fast.consolidate import Merge, merge_score_maps, plan_overlap_merges, soft_containment

    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(7, 12, 12, generator=gen) ** 4
    scores[1] = scores[0] * 0.8 + 0.01
    scores[4] = scores[2] * 0.5 + scores[3] * 0.5
    names = [f"n{i}" for i in range(7)]
    merges = plan_overlap_merges(scores, names, 0.55)
    assert merges
    current, maps, expected = list(names), scores.clone(), []  # the slow way: all pairs after each merge
    while len(current) > 1:
        c = soft_containment(maps).fill_diagonal_(-1)
        value, idx = c.flatten().max(0)
        if float(value) <= 0.55:
            break
        a, b = divmod(int(idx), len(current))
        mass = maps.flatten(1).sum(1)
        keep, drop = (a, b) if (float(mass[a]), -a) >= (float(mass[b]), -b) else (b, a)
        expected.append(Merge(current[keep], current[drop], "overlap", float(value)))
        maps, current = merge_score_maps(maps, current, [expected[-1]])
    assert [(m.kept, m.merged) for m in merges] == [(m.kept, m.merged) for m in expected]
    assert [m.score for m in merges] == pytest.approx([m.score for m in expected], abs=1e-5)


# ---- taxonomy ------------------------------------------------------------------------------------------
FREE = ["puppy", "sedan", "couch", "zebra", "sofa"]


def _free_outputs(seed=11):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, len(FREE) + 1, generator=gen) * 3, torch.randn(8, 16, 16, generator=gen) * 3


@pytest.mark.parametrize("merge", ["relabel", "sum"])
def test_taxonomy_names_and_bench_mapping_table(tmp_path, merge):
    logits, masks = _free_outputs()
    grouping = _grouper(labels="voc", merge=merge).plan(FREE)
    labels = [*load_vocabulary("voc").names, OTHER]
    assert grouping.output_names == labels  # stable ids: the taxonomy's order, `other` last
    assert grouping.mapping == {
        "puppy": "dog",
        "sedan": "car",
        "couch": "sofa",
        "zebra": OTHER,
        "sofa": "sofa",
    }
    reference, fast, scores = _both_paths(logits, masks, grouping)
    assert set(np.unique(reference)) <= set(range(len(labels)))
    assert {labels[i] for i in np.unique(reference)} <= set(labels)
    # bench's table for the same nouns: LOVE over the same label set, background -> other
    love = LOVE(build_mapper(None, None), load_vocabulary("voc"), LoveCache(tmp_path / "bench.json"))
    free_map = scores.argmax(0).numpy()
    bench = love.apply(free_map, FREE)
    relabelled = np.where(bench >= 0, bench, len(labels) - 1)
    if merge == "relabel":
        np.testing.assert_array_equal(reference, relabelled)
    else:  # summed: equal wherever one noun holds most of a pixel's score, and exactly the merged argmax
        dominant = (scores.max(0).values / scores.sum(0) > 0.5).numpy()
        assert dominant.mean() > 0.3
        np.testing.assert_array_equal(reference[dominant], relabelled[dominant])
    assert (reference == fast).mean() > 0.999


def test_consolidation_then_taxonomy_maps_each_noun_through_its_kept_name():
    grouping = _grouper("specific", labels="voc").plan(["sofa", "couch", "zebra"])
    assert [m.to_json()["merged"] for m in grouping.merges] == ["couch"]
    assert grouping.mapping == {"sofa": "sofa", "couch": "sofa", "zebra": OTHER}


# ---- config --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"consolidate.mode": "most"}, "consolidate.mode"),
        ({"consolidate.overlap_threshold": 0}, "consolidate.overlap_threshold"),
        ({"consolidate.overlap_threshold": 1.5}, "consolidate.overlap_threshold"),
        ({"consolidate.max_distance": 0}, "consolidate.max_distance"),
        ({"taxonomy.merge": "max"}, "taxonomy.merge"),
    ],
)
def test_bad_config_values_are_one_line_errors(overrides, words):
    with pytest.raises(SelfSegError, match=words) as info:
        SelfSegConfig().with_overrides(overrides)
    assert "\n" not in str(info.value)


def test_pipeline_refuses_bad_taxonomy_before_any_model_loads(tmp_path, monkeypatch):
    from selfseg_fast import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "build_engine", lambda cfg: pytest.fail("loaded a model"))
    for overrides, words in [
        ({"taxonomy.labels": str(tmp_path / "none.json")}, "no such file"),
        ({"taxonomy.labels": "voc", "taxonomy.llm": "gpt"}, "taxonomy.llm"),
    ]:
        with pytest.raises(SelfSegError, match=words):
            pipeline_module.SelfSegPipeline(SelfSegConfig().with_overrides(overrides))
    bad = tmp_path / "bad.json"
    bad.write_text('["a", "a"]')
    with pytest.raises(SelfSegError, match="distinct"):
        pipeline_module.SelfSegPipeline(SelfSegConfig().with_overrides({"taxonomy.labels": str(bad)}))
    off = pipeline_module.SelfSegPipeline(SelfSegConfig())
    assert not off.naming_active and SelfSegConfig().consolidate.mode == "off"  # off by default
    with pytest.raises(SelfSegError, match="consolidate.mode"):
        off.planner((("consolidate.mode", "loose"),))


# ---- API, CLI, HTTP, bench -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pipe():
    from selfseg_fast.pipeline import SelfSegPipeline

    return SelfSegPipeline.from_pretrained(
        "voc", weights="random-tiny", device="cpu", segmenter__test_short_side=64
    )


def test_api_segment_with_consolidation_and_taxonomy_on_both_engines(tiny_pipe):
    from selfseg_fast.pipeline import NamedMap, SelfSegPipeline

    rgb = np.random.default_rng(4).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    names = ["dog", "puppy", "sofa", "couch", "grass"]
    plain = tiny_pipe.segment(rgb, names)
    assert isinstance(plain, np.ndarray)  # off: the paper's output, unchanged
    merged = tiny_pipe.segment(rgb, names, consolidate="general")
    assert isinstance(merged, NamedMap) and merged.class_names == ["dog", "sofa", "grass"]
    assert [m["merged"] for m in merged.audit()["merges"]] == ["couch", "puppy"]
    options = {"consolidate": {"mode": "general", "overlap_threshold": 0.3}, "taxonomy": "voc"}
    fast = tiny_pipe.segment(rgb, names, **options)
    reference = SelfSegPipeline(tiny_pipe.cfg.with_overrides({"engine": "reference"}))
    reference._segmenter = tiny_pipe.segmenter.__class__(
        tiny_pipe.segmenter.model, tiny_pipe.segmenter.sc, reference.plan
    )
    ref = reference.segment(rgb, names, **options)
    np.testing.assert_array_equal(fast.label_map, ref.label_map)  # both paths, same merges and map
    assert fast.audit() == ref.audit() and fast.class_names[-1] == OTHER
    assert set(np.unique(fast.label_map)) <= set(range(len(fast.class_names)))
    # exact: the merged map is the argmax of the official score maps summed per kept name
    scores = tiny_pipe.segmenter.scores(rgb, names)  # [K, H, W]
    expected = merged.grouping.sum_rows(scores).argmax(0).numpy()
    assert (expected == merged.label_map).mean() > 0.999
    np.testing.assert_array_equal(merged.grouping.target, [0, 0, 1, 1, 2])


def test_cli_segment_consolidate_and_taxonomy(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from selfseg_fast.cli import main

    rgb = np.random.default_rng(2).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pic.png")
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "pic.png"), "--classes", "sofa,couch,sedan", "--out", str(out)]
    argv += ["--weights", "random-tiny", "--set", "segmenter.test_short_side=64"]
    assert main(argv + ["--consolidate", "specific", "--taxonomy", "voc"]) == 0
    record = json.loads((out / "pic.png.json").read_text())
    assert record["merges"] == [{"kept": "sofa", "merged": "couch", "rule": "synonym", "score": 1.0}]
    assert record["names"] == record["taxonomy"]["labels"] and record["names"][-1] == OTHER
    assert record["taxonomy"]["mapping"] == {"sofa": "sofa", "couch": "sofa", "sedan": "car"}
    assert {n for n, s in record["shares"].items() if s > 0} <= {"sofa", "car"}
    assert "merged: couch->sofa" in capsys.readouterr().out
    import selfseg_fast.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "build_engine", lambda cfg: pytest.fail("loaded a model"))
    assert main(argv + ["--taxonomy", str(tmp_path / "missing.json")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.json" in err[0] and "taxonomy.labels" in err[0]


def test_http_query_parameters(monkeypatch):
    pytest.importorskip("fastapi")
    from test_http import _module

    from selfseg_fast.pipeline import Segmentation, SelfSegPipeline
    from selfseg_fast.records import ImageResult
    from selfseg_fast.serving import SelfSegService, ServiceConfig

    class NamingPipeline:
        """Segments left/right halves as sofa/couch, grouped by the real planner of each request."""

        def __init__(self) -> None:
            self.cfg = SelfSegConfig()
            self._planners = {}

        planner = SelfSegPipeline.planner

        def run(self, images):
            out = []
            for image in images:
                names = ["sofa", "couch"]
                planner = self.planner(image.naming)
                grouping = planner.for_image(None).plan(names) if planner else Grouping.identity(names)
                label_map = np.zeros(image.rgb.shape[:2], np.int64)
                label_map[:, label_map.shape[1] // 2 :] = 1
                from selfseg_fast.consolidate import relabel

                label_map, _ = relabel(torch.from_numpy(label_map), names, list(grouping.merges))
                result = ImageResult(image.path, [[0] * 32] * 32, {0: ["x"]}, {0: names}, names)
                out.append(
                    Segmentation(result, grouping.output_names, label_map.numpy(), planner and grouping)
                )
            return out

    from fastapi.testclient import TestClient

    module = _module()
    service = SelfSegService(
        SelfSegConfig(), ServiceConfig(warmup=False, max_wait_ms=1), pipeline=NamingPipeline()
    )
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(buffer, "PNG")
    with TestClient(module.create_app(service)) as client:
        plain = client.post("/segment", content=buffer.getvalue()).json()
        assert plain["names"] == ["sofa", "couch"] and "merges" not in plain
        merged = client.post("/segment?consolidate=specific", content=buffer.getvalue()).json()
        assert merged["names"] == ["sofa"] and merged["shares"] == {"sofa": 1.0}
        assert merged["merges"] == [{"kept": "sofa", "merged": "couch", "rule": "synonym", "score": 1.0}]
        for query in ("consolidate=most", "consolidate_overlap=x", "taxonomy=/etc/passwd"):
            bad = client.post(f"/segment?{query}", content=buffer.getvalue())
            assert bad.status_code == 400 and "\n" not in bad.json()["detail"], query


def test_bench_reports_names_and_miou_without_and_with_consolidation(tmp_path, monkeypatch, capsys):
    from test_bench import NOUNS, FakePipeline

    from selfseg_fast.cli import main
    from selfseg_fast.commands import bench as bench_module
    from selfseg_fast.evaluation.datasets.cityscapes import CityscapesDataset
    from selfseg_fast.evaluation.datasets.synthetic import write_synthetic_cityscapes
    from selfseg_fast.pipeline import NamedMap

    dataset = CityscapesDataset(write_synthetic_cityscapes(tmp_path / "data", num_images=3, size=(48, 96)))

    class Synonyms(FakePipeline):
        """Also finds 'route' (a synonym of 'road') in every image; it never wins a pixel, so merging it
        into 'road' changes the names, not the scores."""

        def describe(self, images):
            results = super().describe(images)
            for r in results:
                r.nouns.append("route")
            return results

        def segment(self, images, class_names, consolidate=None):
            maps = super().segment(images, class_names)
            if consolidate is None:
                return maps
            planner = NamePlanner(ConsolidateConfig(**consolidate), TaxonomyConfig())
            out = []
            for names, label_map in zip(class_names, maps):
                grouping = planner.for_image(None).plan(list(names))
                lut = np.array([*grouping.target, -1])
                out.append(
                    NamedMap(
                        lut[np.where(label_map >= 0, label_map, len(names))], grouping.output_names, grouping
                    )
                )
            return out

    monkeypatch.setattr(bench_module, "LazyPipeline", lambda cfg: Synonyms(dataset, nouns=NOUNS))
    argv = [
        "bench",
        "--dataset",
        "cityscapes",
        "--root",
        str(dataset.root),
        "--out",
        str(tmp_path / "b"),
        "--quiet",
    ]
    assert main(argv + ["--consolidate", "specific"]) == 0
    table = capsys.readouterr().out
    assert "without vs with" in table
    row = table.splitlines()[
        table.splitlines().index(next(x for x in table.splitlines() if "names/img" in x and "merged" in x))
        + 1
    ].split()
    without, with_, merges, miou, miou_merged = map(float, row[1:6])
    assert merges > 0 and with_ == pytest.approx(without - merges) and miou == miou_merged  # route -> road
    summary = json.loads((tmp_path / "b" / "consolidated" / "results.json").read_text())["summary"]
    assert summary["merges_per_image"] == merges


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_api_run_audits_on_both_engines(tiny_pipe, engine):
    """`run` (describe stubbed, the real random-tiny segmenter): kept nouns / taxonomy labels, audit."""
    from selfseg_fast.pipeline import SelfSegPipeline
    from selfseg_fast.records import ImageResult

    class Engine:
        batch_size = 2

        def describe(self, images):
            return list(self.describe_stream(images))

        def describe_stream(self, images):
            for image in images:
                nouns = {0: ["sofa", "sedan"], 1: ["couch"]}
                yield ImageResult(image.path, [[0]], {}, nouns, ["sofa", "sedan", "couch"], {})

    pipe = SelfSegPipeline(tiny_pipe.cfg.with_overrides({"engine": engine}))
    pipe._engine = Engine()
    pipe._segmenter = tiny_pipe.segmenter.__class__(
        tiny_pipe.segmenter.model, tiny_pipe.segmenter.sc, pipe.plan
    )
    rgb = np.random.default_rng(1).integers(0, 255, (30, 44, 3), dtype=np.uint8)
    plain = pipe.run(rgb)
    assert plain.class_names == ["sofa", "sedan", "couch"] and plain.grouping is None and plain.audit() == {}
    merged = pipe.run([rgb], consolidate="specific")[0]
    assert merged.class_names == ["sofa", "sedan"] and [m.merged for m in merged.merges] == ["couch"]
    apart = pipe.run(rgb, consolidate={"mode": "specific", "same_cluster_only": True})
    assert apart.merges == []  # sofa and couch came from different clusters
    labelled = pipe.run(rgb, consolidate="specific", taxonomy="voc")
    assert labelled.class_names == [*load_vocabulary("voc").names, OTHER]
    assert labelled.audit()["taxonomy"]["mapping"] == {"sofa": "sofa", "sedan": "car", "couch": "sofa"}
    assert {labelled.class_names[i] for i in np.unique(labelled.label_map)} <= {"sofa", "car"}
