"""SelfSegPipeline.run / segment internals: the fast engine's overlapped run equals describe + segment,
every image a loader accepts segments (1 x W, H x 1, 1 x 1), and the segmenter's limits hold."""

from __future__ import annotations

import numpy as np
import pytest

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import ResourceError
from selfseg_fast.images import LoadedImage
from selfseg_fast.pipeline import SelfSegPipeline


def _image(name: str, shape: tuple[int, int], seed: int) -> LoadedImage:
    rgb = np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
    return LoadedImage(name, rgb, "RGB", (shape[1], shape[0]))


@pytest.fixture(scope="module")
def fast_pipe() -> SelfSegPipeline:
    cfg = SelfSegConfig.from_preset("voc").with_overrides(
        {"weights": "random-tiny", "engine": "fast", "device": "cpu", "batch_size": 2, "nouns.workers": 0}
    )
    return SelfSegPipeline(cfg.with_overrides({"segmenter.test_short_side": 64}))


def test_run_equals_describe_then_segment_on_any_shape(fast_pipe):
    """The image branch runs on the segmenter's worker while the engine describes; the result is the
    same as describing and then segmenting with the nouns, for extreme shapes too."""
    images = [_image(f"i{i}", s, i) for i, s in enumerate([(50, 70), (1, 3000), (3000, 1), (1, 1), (50, 70)])]
    out = fast_pipe.run(images)
    described = fast_pipe.describe(images)
    again = fast_pipe.segment(images, [r.nouns for r in described])
    for image, seg, result, labels in zip(images, out, described, again):
        assert seg.class_names == result.nouns and seg.description.nouns == result.nouns
        assert seg.label_map.shape == image.rgb.shape[:2]
        np.testing.assert_array_equal(seg.label_map, labels)
        assert set(seg.description.stage_seconds) == {"encode", "cluster", "caption", "nouns", "segment"}


def test_names_are_capped_and_budgets_refuse_before_any_work(fast_pipe, monkeypatch):
    image = _image("big", (60, 80), 9)
    monkeypatch.setattr(fast_pipe.segmenter.sc, "max_names", 2)
    (seg,) = fast_pipe.run([image])
    assert len(seg.class_names) <= 2 and seg.label_map.max() < max(1, len(seg.class_names))
    with pytest.raises(ResourceError, match="max_names"):
        fast_pipe.segment([image], [["a", "b", "c"]])
    monkeypatch.setattr(fast_pipe.segmenter.sc, "memory_budget_mb", 1.0)
    monkeypatch.setattr(fast_pipe.engine, "describe_stream", lambda *a: pytest.fail("work started"))
    with pytest.raises(ResourceError, match="big"):
        fast_pipe.run([image])
