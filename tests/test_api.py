"""The Python API: from_pretrained with overrides, any image input, lazy model loading."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import selfseg_fast.pipeline as pipeline_module
from selfseg_fast.errors import SelfSegError
from selfseg_fast.pipeline import Segmentation, SelfSegPipeline


@pytest.fixture(scope="module")
def pipe() -> SelfSegPipeline:
    return SelfSegPipeline.from_pretrained("voc", weights="random-tiny", device="cpu")


@pytest.fixture()
def photo(tmp_path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(3)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 8, 0), 8, 1)  # 48x64 blocks
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return str(path), rgb


def test_from_pretrained_takes_overrides_and_loads_nothing(tmp_path) -> None:
    pipe = SelfSegPipeline.from_pretrained(
        "cityscapes",
        weights="random-tiny",
        device="cpu",
        engine="reference",
        seed=4,
        caption__cycles=2,
        cluster={"k_values": [2, 4]},
        checkpoint="x.pt",
    )
    cfg = pipe.cfg
    assert (cfg.preset, cfg.weights, cfg.device, cfg.engine, cfg.seed) == (
        "cityscapes", "random-tiny", "cpu", "reference", 4,
    )  # fmt: skip
    assert cfg.caption.cycles == 2 and cfg.cluster.k_values == (2, 4) and cfg.segmenter.checkpoint == "x.pt"
    assert cfg.segmenter.test_short_side == 1024  # the preset's other settings stay
    assert pipe._engine is None and pipe._segmenter is None  # models load on first use
    config_file = tmp_path / "run.json"
    config_file.write_text('{"preset": "ade20k", "seed": 9}')
    assert SelfSegPipeline.from_pretrained(config_file, batch_size=2).cfg.seed == 9
    assert SelfSegPipeline.from_pretrained(cfg, seed=5).cfg.seed == 5 and cfg.seed == 4  # copied


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"caption__cycles": 0}, "caption.cycles = 0: must be >= 1"),
        ({"weights": "huge"}, "weights = 'huge': choose one of"),
        ({"cylces": 3}, "unknown config key 'cylces'"),
        ({"preset_or_config": "coco"}, "unknown preset 'coco'"),
    ],
)
def test_from_pretrained_rejects_bad_values_in_one_line(kwargs, message) -> None:
    with pytest.raises(SelfSegError, match=message):
        SelfSegPipeline.from_pretrained(**kwargs)


def test_every_input_kind_gives_the_same_description(pipe, photo) -> None:
    path, rgb = photo
    inputs = [path, Image.open(path), rgb, torch.from_numpy(rgb).permute(2, 0, 1)]
    results = pipe.describe(inputs)
    assert isinstance(results, list) and len(results) == 4
    for result in results[1:]:
        assert result.cluster_grid == results[0].cluster_grid and result.nouns == results[0].nouns
    single = pipe.describe(rgb)  # one image in, one result out
    assert not isinstance(single, list) and single.nouns == results[0].nouns
    (streamed,) = list(pipe.describe_stream(iter([Image.open(path)])))
    assert streamed.nouns == results[0].nouns


def test_segment_with_names_never_loads_blip(monkeypatch, photo) -> None:
    def no_blip(cfg):
        raise AssertionError("segment with given names loaded the BLIP engine")

    monkeypatch.setattr(pipeline_module, "build_engine", no_blip)
    pipe = SelfSegPipeline.from_pretrained("voc", weights="random-tiny", device="cpu")
    path, rgb = photo
    maps = pipe.segment([Image.open(path), rgb], ["car", "road"])  # the failing call
    assert len(maps) == 2 and maps[0].shape == rgb.shape[:2] and maps[0].dtype == np.int64
    np.testing.assert_array_equal(maps[0], maps[1])
    assert set(np.unique(maps[0])) <= {0, 1}
    one = pipe.segment(path, ["car", "road"])
    np.testing.assert_array_equal(one, maps[0])
    per_image = pipe.segment([rgb, rgb], [["car"], []])
    assert (per_image[0] == 0).all() and (per_image[1] == -1).all()
    with pytest.raises(SelfSegError, match="2 images but 3 name lists"):
        pipe.segment([rgb, rgb], [["a"], ["b"], ["c"]])


def test_run_returns_a_segmentation_per_image(pipe, photo) -> None:
    path, rgb = photo
    result = pipe.run(path)
    assert isinstance(result, Segmentation) and result.description.path == path
    assert result.label_map.shape == rgb.shape[:2] and result.class_names == result.description.nouns
    assert result.label_map.max() < len(result.class_names)
    (again,) = pipe.run([Image.open(path)])
    np.testing.assert_array_equal(again.label_map, result.label_map)


def test_reference_engine_without_crfseg_is_one_line_before_loading(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "crfseg", None)  # as if it were not installed
    monkeypatch.setattr(pipeline_module, "build_engine", lambda cfg: pytest.fail("loaded a model"))
    with pytest.raises(SelfSegError, match=r"pip install --no-deps crfseg==1.0.0"):
        SelfSegPipeline.from_pretrained("voc", weights="random-tiny", engine="reference")
    from selfseg_fast.stages.denoise import crf_reference

    with pytest.raises(SelfSegError, match=r"reference engine's CRF .* fix: pip install --no-deps crfseg"):
        crf_reference(torch.rand(2, 4, 4))
