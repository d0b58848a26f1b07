"""`--authors-code {maskblip,autoseg}`: every difference from the paper is one field with the release's
value, documented in the README table; maskblip's re-segmentation (module, pipeline and bench)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from selfseg_fast.commands.options import add_config_options, config_from_args
from selfseg_fast.config import AUTHORS_CODE, BLIP_BASE_HUB_ID, SegmenterConfig, SelfSegConfig
from selfseg_fast.resegment import names_to_drop, resegment

README = Path(__file__).resolve().parents[1] / "README.md"


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("name", sorted(AUTHORS_CODE))
def test_every_field_takes_the_release_value(name):
    paper = SelfSegConfig.from_preset("cityscapes")
    code = paper.authors_code(name)
    for key, value in AUTHORS_CODE[name].items():
        assert _get(code, key) == value, key
    # everything else stays the paper's
    untouched = {
        k: v for k, v in paper.to_dict()["cluster"].items() if f"cluster.{k}" not in AUTHORS_CODE[name]
    }
    assert all(code.to_dict()["cluster"][k] == v for k, v in untouched.items())


def test_the_releases_differ_from_the_paper_and_from_each_other():
    paper = SelfSegConfig.from_preset("voc")
    maskblip, autoseg = paper.authors_code("maskblip"), paper.authors_code("autoseg")
    # shared LAVIS behaviour
    for code in (maskblip, autoseg):
        assert code.caption.prompt == "a picture of " and code.caption.keep_prompt_text
        assert code.caption.length_includes_prompt and code.caption.top_k == 50
        assert code.caption.repetition_penalty == 1.1 and code.cluster.kmeans_n_init == 8
        assert code.cluster.align_cost == "disagreement" and code.blip_model == BLIP_BASE_HUB_ID
    assert paper.caption.prompt == "" and not paper.caption.keep_prompt_text and paper.caption.top_k == 0
    assert paper.caption.repetition_penalty == 100.0 and paper.cluster.kmeans_n_init == 1
    # where they differ
    assert maskblip.cluster.k_values == (2, 8) and autoseg.cluster.k_values == (2, 3, 4, 5, 6, 7, 8)
    assert (maskblip.caption.min_new_tokens, maskblip.caption.max_new_tokens) == (3, 15)
    assert (autoseg.caption.min_new_tokens, autoseg.caption.max_new_tokens) == (4, 25)
    assert maskblip.caption.top_p == 0.9 and autoseg.caption.top_p == 1.0
    assert maskblip.caption.cycles == 1 and autoseg.caption.cycles == 5
    assert not maskblip.nouns.require_wordnet and autoseg.nouns.require_wordnet
    assert maskblip.nouns.block_list == () and "photograph" in autoseg.nouns.block_list
    assert maskblip.segmenter.checkpoint == "xdecoder_focalt_best_openseg.pt"
    assert (maskblip.segmenter.test_short_side, maskblip.segmenter.resize_interpolation) == (512, "bicubic")
    assert maskblip.segmenter.resegment and not autoseg.segmenter.resegment and not paper.segmenter.resegment
    assert (
        autoseg.segmenter.variant == "focal-l" and autoseg.segmenter.checkpoint == "xdecoder_focall_last.pt"
    )
    assert (autoseg.segmenter.test_short_side, autoseg.segmenter.test_max_size) == (500, 1500)


def test_a_user_chosen_blip_stays():
    cfg = SelfSegConfig().with_overrides({"blip_model": "/my/blip"}).authors_code("maskblip")
    assert cfg.blip_model == "/my/blip"


def test_cli_flag_replaces_maskblip():
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    args = parser.parse_args(["--authors-code", "maskblip", "--set", "caption.cycles=2"])
    cfg = config_from_args(args)
    assert cfg.segmenter.resegment and cfg.caption.cycles == 2  # --set still wins
    with pytest.raises(SystemExit):
        parser.parse_args(["--maskblip"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--authors-code", "lavis"])


def test_readme_table_documents_every_field_with_a_source_line():
    text = README.read_text()
    section = text[text.index("## Where the authors' released code differs") :]
    section = section[: section.index("\n## ", 5)]
    for name, fields in AUTHORS_CODE.items():
        for key in fields:
            assert f"`{key}`" in section, f"{key} ({name}) missing from the README table"
    assert re.search(r"maskblip\.py:\d+", section) and re.search(r"caption_filtering\.py:\d+", section)
    assert re.search(r"xdecoder_semseg\.py:\d+", section) and re.search(r"med\.py:\d+", section)


# ---- re-segmentation -----------------------------------------------------------------------------------
def test_names_to_drop_follows_bincount():
    label = np.zeros((10, 10), dtype=np.int64)  # name 0 everywhere: 100 % > 95 %
    assert names_to_drop(label, 0.95, 0.01) == [0]
    label[0, :] = 2  # name 2: 10 %; name 1: no pixels but below the largest index present -> share 0, dropped
    assert names_to_drop(label, 0.95, 0.01) == [1]
    label[5, 5] = 3  # name 3: 1 pixel = 1 % -> kept (not below); names past 3 are never looked at
    assert names_to_drop(label, 0.95, 0.01) == [1]
    assert names_to_drop(np.full((4, 4), -1), 0.95, 0.01) == []


def test_resegment_segments_again_with_the_kept_names():
    cfg = SegmenterConfig(resegment=True)
    calls = []

    def segment(names):
        calls.append(names)
        return np.full((10, 10), 0)

    first = np.zeros((20, 20), dtype=np.int64)
    first[:, :6] = 1  # 70 % name 0, 30 % name 1, name 2 a "speck" of 0.25 %
    first[0, 0] = 2
    label_map, names = resegment(first, ["sky", "car", "speck"], segment, cfg)
    assert calls == [["sky", "car"]] and names == ["sky", "car"]
    # nothing to drop, switched off, or everything dropped: the first segmentation stands
    ok = np.repeat(np.arange(2), 50).reshape(10, 10)
    assert resegment(ok, ["a", "b"], segment, cfg)[1] == ["a", "b"]
    assert resegment(np.zeros((4, 4), int), ["a"], segment, SegmenterConfig())[1] == ["a"]
    assert resegment(np.zeros((4, 4), int), ["a"], segment, cfg)[1] == ["a"] and len(calls) == 1


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_pipeline_run_resegments_when_configured(engine: str):
    from concurrent.futures import Future

    from selfseg_fast.config import SegmenterConfig
    from selfseg_fast.models.xdecoder.segmenter import Segmented
    from selfseg_fast.pipeline import SelfSegPipeline
    from selfseg_fast.records import ImageResult

    class Engine:
        batch_size = 4

        def describe(self, images):
            return list(self.describe_stream(images))

        def describe_stream(self, images):
            for _ in images:
                yield ImageResult("x", [[0]], {}, {}, ["sky", "car"], {})

    def done(value) -> Future:
        future: Future = Future()
        future.set_result(value)
        return future

    class Segmenter:
        """Both paths' surface: the first name wins everywhere."""

        sc = SegmenterConfig()  # max_names 256: SegmenterConfig.first_names is the pipeline's rule

        def __init__(self):
            self.calls = []

        def check_request(self, height, width, n_names, what="image"):
            pass

        def segment(self, rgb, names):
            self.calls.append(list(names))
            return np.zeros(rgb.shape[:2], dtype=np.int64)

        def image_branch(self, rgbs):
            return list(rgbs)

        def label_map(self, rgb, names):
            return self.segment(rgb, names)

        def start(self, rgbs):
            return [done(rgb) for rgb in rgbs]

        def finish(self, branch, names):
            return done(Segmented(self.segment(branch.result(), names), 0.0))

    image = np.zeros((8, 8, 3), np.uint8)  # any API input
    for resegment_on, expected in ((False, ["sky", "car"]), (True, ["car"])):
        overrides = {"segmenter.resegment": resegment_on, "engine": engine}
        pipe = SelfSegPipeline(SelfSegConfig().with_overrides(overrides))
        pipe._engine, pipe._segmenter = Engine(), Segmenter()  # models stand-ins: nothing loads
        (result,) = pipe.run([image])
        assert result.class_names == expected  # "sky" covered 100 %: dropped, segmented again with "car"
        assert len(pipe._segmenter.calls) == (2 if resegment_on else 1)


def test_bench_resegments_when_configured(tmp_path):
    from selfseg_fast.evaluation.datasets.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
    from selfseg_fast.evaluation.datasets.synthetic import write_synthetic_cityscapes
    from selfseg_fast.evaluation.love import LOVE, Vocabulary
    from selfseg_fast.evaluation.results import ResultsStore
    from selfseg_fast.evaluation.runner import run_bench

    dataset = CityscapesDataset(
        write_synthetic_cityscapes(tmp_path / "d", num_images=2, size=(48, 96), seed=1)
    )
    labels = {dataset.load(i).image_path: dataset.load(i).label for i in range(len(dataset))}
    nouns = {0: "road", 2: "building", 10: "sky", 13: "car"}
    segmented = []

    class Pipeline:
        def describe(self, images):
            from selfseg_fast.records import ImageResult

            return [ImageResult(i.path, [[0] * 32] * 32, {}, {}, list(nouns.values()), {}) for i in images]

        def segment(self, images, class_names):
            out = []
            for image, names in zip(images, class_names):
                segmented.append(list(names))
                label, found = labels[image.path], np.full(labels[image.path].shape, -1)
                for train_id, noun in nouns.items():
                    if noun in names:
                        found[label == train_id] = names.index(noun)
                out.append(found)
            return out

    class Mapper:
        name, is_llm = "same", True

        def describe(self):
            return {}

        def map_nouns(self, todo, vocabulary):
            return {n: n for n in todo}

    love = LOVE(Mapper(), Vocabulary("cityscapes", list(CITYSCAPES_CLASSES)))
    cfg = SegmenterConfig(resegment=True, resegment_min_share=0.2)  # drops every noun under 20 %
    summary = run_bench(
        dataset, Pipeline(), ResultsStore(tmp_path / "o"), love=love, segmenter_cfg=cfg, progress_bar=False
    )
    assert len(segmented) == 4 and summary.images_scored == 2  # each image segmented twice
    assert set(segmented[1]) < set(segmented[0]) and "sky" in segmented[1] and "car" not in segmented[1]
