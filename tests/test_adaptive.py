"""Adaptive caption cycles and deadlines (stages/adaptive.py): the stopping rule on a stub sampler, the
deadline bookkeeping on a fake clock, and both engines on random-tiny weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import selfseg_fast.pipeline as pipeline_module
from selfseg_fast.cli import main
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.engines.fast import FastEngine
from selfseg_fast.engines.reference import ReferenceEngine
from selfseg_fast.errors import SelfSegError
from selfseg_fast.models.blip import load_blip
from selfseg_fast.pipeline import SelfSegPipeline, with_deadline
from selfseg_fast.stages.adaptive import CycleTracker, deadline_clock, run_rounds
from selfseg_fast.stages.caption import caption_reference, row_uniforms, sample_captions
from tests.test_engines import structured_images

MAX_CYCLES = 20


def pool_caption(row: int, cycle: int) -> str:
    """A fixed noun pool per row: row r meets a new noun at cycles 0, 1, ..., r + 1 (then repeats)."""
    return " ".join(f"n{row}x{min(cycle, row + 1)}" for _ in range(2)) + f" n{row}x0"


def stub_sampler(calls: list):
    def sample_round(active: list[int], first: int, cycles: int) -> list[list[str]]:
        calls.append((list(active), first, cycles))
        return [[pool_caption(r, first + c) for c in range(cycles)] for r in active]

    return sample_round


def split_nouns(captions: list[str]) -> list[list[str]]:
    return [caption.split() for caption in captions]


@pytest.mark.parametrize("patience", [1, 2, 3])
@pytest.mark.parametrize("round_size", [1, 3])
def test_adaptive_finds_the_fixed_noun_set_and_stops_in_time(patience: int, round_size: int) -> None:
    rows = 5
    fixed = CycleTracker(rows, MAX_CYCLES, patience=0)
    run_rounds(fixed, MAX_CYCLES, stub_sampler([]), split_nouns)
    assert all(fixed.cycles_run(r) == MAX_CYCLES for r in range(rows))
    calls: list = []
    adaptive = run_rounds(
        CycleTracker(rows, MAX_CYCLES, patience), round_size, stub_sampler(calls), split_nouns
    )
    for r in range(rows):
        assert set(adaptive.nouns[r]) == set(fixed.nouns[r])  # the same names as 20 fixed cycles
        last_new = r + 1  # 0-based cycle of the row's last new noun
        assert adaptive.cycles_run(r) <= last_new + 1 + patience  # (1-based last new cycle) + patience
        assert adaptive.captions[r] == fixed.captions[r][: adaptive.cycles_run(r)]  # a prefix
    if round_size == 1:  # exact: every row stops right at its patience
        assert [adaptive.cycles_run(r) for r in range(rows)] == [r + 2 + patience for r in range(rows)]
    decoded = [sum(cycles for active, _, cycles in calls if r in active) for r in range(rows)]
    for r in range(rows):  # what the sampler decoded for the row: its cycles, rounded up to a round
        limit = r + 2 + patience
        assert decoded[r] <= -(-limit // round_size) * round_size
    sampled = sum(len(active) * cycles for active, _, cycles in calls)
    assert sampled < rows * MAX_CYCLES / 2  # the point: far fewer caption cycles decoded
    assert [first for _, first, _ in calls] == list(range(0, round_size * len(calls), round_size))


def test_deadline_keeps_the_names_found_so_far() -> None:
    now = [0.0]
    row_image = [0, 0, 1]  # rows 0, 1 belong to image 0; row 2 to image 1
    should_stop, expire = deadline_clock(row_image, [2.5, None], clock=lambda: now[0])
    calls: list = []

    def sample_round(active, first, cycles):  # each decoder "step" costs 0.4 s; a round has 3 steps
        calls.append(list(active))
        for _ in range(3):
            if should_stop():
                return None
            now[0] += 0.4
        return [[pool_caption(r + 3, first)] for r in active]

    tracker = run_rounds(CycleTracker(3, 6, patience=0), 1, sample_round, split_nouns, expire)
    assert tracker.expired == [True, True, False]
    assert tracker.cycles_run(0) == tracker.cycles_run(1) == 2  # rounds ended at 1.2 s and 2.4 s
    assert tracker.nouns[0]  # names found before the deadline are kept
    assert tracker.cycles_run(2) == 6  # the image without a deadline runs every cycle
    assert calls[2] == [0, 1, 2] and calls[3] == [2]  # the third round stopped, re-ran without image 0


def test_row_uniforms_skip_earlier_cycles() -> None:
    whole = row_uniforms([7, 9], 5, 4)
    torch.testing.assert_close(
        row_uniforms([7, 9], 2, 4, first_cycle=3).view(2, 2, 4), whole.view(2, 5, 4)[:, 3:]
    )


def stop_after(calls: int):
    """should_stop that says stop at its `calls`-th question; counts every question."""
    asked = [0]

    def should_stop() -> bool:
        asked[0] += 1
        return asked[0] >= calls

    return should_stop, asked


@pytest.mark.parametrize("stop_at", [1, 3, 6])
def test_a_stop_is_obeyed_within_one_decoder_step(stop_at: int) -> None:
    """Both samplers ask before (fast) or after (HF generate) every decoder step; once told to stop
    they run no further step and keep nothing of the cut-short call."""
    cfg = SelfSegConfig(weights="random-tiny", seed=0).with_overrides(
        {"caption.cycles": 3, "caption.min_new_tokens": 10, "caption.max_new_tokens": 12}
    )
    bundle = load_blip(cfg)
    tokens = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(1, 5, dtype=torch.int64)
    steps = []
    should_stop, asked = stop_after(stop_at)
    with pytest.MonkeyPatch.context() as mp:  # count the fast decoder's steps
        from selfseg_fast.models import blip_text_fast

        cls = blip_text_fast.FastBlipTextDecoder
        real = cls.step
        mp.setattr(cls, "step", lambda *a, **k: steps.append(1) or real(*a, **k))
        out = sample_captions(bundle, tokens, labels, [(0, 0)], [1], cfg.caption, should_stop=should_stop)
    assert out is None and asked[0] == stop_at and len(steps) == stop_at - 1  # asked before each step
    full = sample_captions(bundle, tokens, labels, [(0, 0)], [1], cfg.caption, should_stop=lambda: False)
    assert full is not None and full.shape[0] == 3  # never told to stop: every cycle comes back
    should_stop, asked = stop_after(stop_at)
    calls = []
    hook = bundle.model.text_decoder.register_forward_hook(lambda *a: calls.append(1))
    try:  # count HF generate's decoder forward passes
        ref = caption_reference(bundle, tokens[0], cfg, 1, should_stop)
    finally:
        hook.remove()
    # asked once before generate, then after every step: the step during which it became true is
    # the last one run (stop_at = 1: no step at all)
    assert ref is None and asked[0] == stop_at and len(calls) == stop_at - 1
    assert caption_reference(bundle, tokens[0], cfg, 1, lambda: False) == caption_reference(
        bundle, tokens[0], cfg, 1
    )


@pytest.fixture(scope="module")
def tiny_cfg() -> SelfSegConfig:
    return SelfSegConfig.from_preset("ade20k").with_overrides(
        {"weights": "random-tiny", "device": "cpu", "batch_size": 2, "caption.cycles": 4}
    )


def _kept_by_patience(captions: list[str], nouns: list[str], patience: int) -> int:
    """Greedy decoding repeats one caption every cycle: 1 new cycle (if it has nouns) + patience."""
    return min(4, (1 if nouns else 0) + patience)


def test_fast_engine_adaptive_captions_are_a_prefix_of_the_fixed_run(tiny_cfg) -> None:
    images = structured_images(2, seed=4)
    fixed = FastEngine(tiny_cfg).describe(images)
    adaptive_cfg = tiny_cfg.with_overrides({"caption.adaptive_patience": 1, "caption.adaptive_round": 2})
    adaptive = FastEngine(adaptive_cfg).describe(images)
    for f, a in zip(fixed, adaptive):
        assert f.cluster_grid == a.cluster_grid and not a.degraded
        for cid, caps in a.captions.items():
            assert 1 <= len(caps) <= 4 and caps == f.captions[cid][: len(caps)]  # same draws per cycle
            assert set(a.cluster_nouns[cid]) <= set(f.cluster_nouns[cid])
    greedy = tiny_cfg.with_overrides({"caption.do_sample": False, "caption.adaptive_patience": 1})
    for result in FastEngine(greedy).describe(images[:1]):  # every cycle repeats the first
        for cid, caps in result.captions.items():
            assert len(caps) == _kept_by_patience(caps, result.cluster_nouns[cid], 1)


def test_reference_engine_applies_the_same_rule(tiny_cfg) -> None:
    cfg = tiny_cfg.with_overrides(
        {"engine": "reference", "caption.do_sample": False, "caption.adaptive_patience": 2}
    )
    result = ReferenceEngine(cfg).describe(structured_images(1, seed=5))[0]
    for cid, caps in result.captions.items():
        assert len(caps) == _kept_by_patience(caps, result.cluster_nouns[cid], 2) and len(set(caps)) == 1


def test_deadline_through_the_pipeline(tiny_cfg) -> None:
    pipe = SelfSegPipeline(tiny_cfg)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    late = pipe.describe(image, deadline_ms=1e-3)  # already past when captioning starts
    assert late.degraded and late.nouns == [] and all(not caps for caps in late.captions.values())
    in_time = pipe.describe(image, deadline_ms=600_000)
    assert not in_time.degraded and in_time.nouns == pipe.describe(image).nouns
    with pytest.raises(SelfSegError, match="deadline_ms"):
        with_deadline([], 0)


def test_cli_caption_takes_patience_and_deadline(tmp_path, capsys) -> None:
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    out = tmp_path / "r.json"
    argv = ["caption", str(tmp_path / "a.png"), "--weights", "random-tiny", "--json", str(out)]
    assert main([*argv, "--adaptive-patience", "2", "--deadline-ms", "0.001"]) == 0
    assert "[degraded" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["config"]["caption"]["adaptive_patience"] == 2
    assert record["images"][0]["degraded"] is True and record["images"][0]["nouns"] == []
    assert main([*argv, "--deadline-ms", "600000"]) == 0
    assert "[degraded" not in capsys.readouterr().out
    assert json.loads(out.read_text())["images"][0]["degraded"] is False
    with pytest.raises(SystemExit):
        main([*argv, "--deadline-ms", "-5"])
    assert "not a positive number of milliseconds" in capsys.readouterr().err


def test_cli_segment_passes_the_deadline_and_marks_degraded(tmp_path, capsys, monkeypatch) -> None:
    from fake_pipeline import FakePipeline

    seen = []

    class Recording(FakePipeline):
        def describe(self, images, deadline_ms=None):
            seen.append(deadline_ms)
            return super().describe(images, deadline_ms)

    monkeypatch.setattr(pipeline_module, "SelfSegPipeline", Recording)
    for name, value in (("cut.png", 15), ("whole.png", 50)):
        Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "cut.png"), str(tmp_path / "whole.png"), "--out", str(out),
                 "--deadline-ms", "250"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert seen == [250.0]
    assert any("cut.png" in line and "[degraded" in line for line in lines)
    assert any("whole.png" in line and "[degraded" not in line for line in lines)
    assert json.loads((out / "cut.png.json").read_text())["degraded"] is True
    assert json.loads((out / "whole.png.json").read_text())["degraded"] is False
    assert main(["segment", str(tmp_path / "cut.png"), "--classes", "road", "--deadline-ms", "9"]) == 2
    assert "self-guided runs" in capsys.readouterr().err


def test_both_engines_agree_with_adaptive_cycles(tiny_cfg) -> None:
    """Greedy decoding (each cycle repeats the first): the same noun sets and the same number of cycles
    per cluster from both engines (the engines' cluster grids agree >= 99 %, as in test_engines)."""
    cfg = tiny_cfg.with_overrides({"caption.do_sample": False, "caption.adaptive_patience": 1})
    images = structured_images(1, seed=6)
    ref = ReferenceEngine(cfg.with_overrides({"engine": "reference"})).describe(images)
    fast = FastEngine(cfg.with_overrides({"engine": "fast"})).describe(images)
    for r, f in zip(ref, fast):
        assert r.nouns and set(r.nouns) == set(f.nouns)
        assert sorted(map(len, r.captions.values())) == sorted(map(len, f.captions.values()))
        assert not r.degraded and not f.degraded
