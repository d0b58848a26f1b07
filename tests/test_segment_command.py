"""`selfseg-fast segment`: outputs (palette labels, overlay at the input's size, cluster picture, JSON),
batching on lists, unique output names, progress, per-image failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_pipeline import FakePipeline
from PIL import Image

import selfseg_fast.pipeline as pipeline_module
from selfseg_fast.cli import main
from selfseg_fast.commands.segment import output_keys
from selfseg_fast.label_maps import read_label_png


def test_segment_command_writes_labels_overlay_and_json(tmp_path, capsys):
    pytest.importorskip("selfseg_fast.models.xdecoder.segmenter")
    rgb = np.random.default_rng(2).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pic.png")
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "pic.png"), "--classes", "car, road,tree,car", "--out", str(out)]
    argv += ["--weights", "random-tiny", "--set", "segmenter.test_short_side=64"]
    assert main(argv) == 0
    assert "pic.png:" in capsys.readouterr().out
    record = json.loads((out / "pic.png.json").read_text())
    assert record["names"] == ["car", "road", "tree"]  # de-duplicated, order kept
    assert abs(sum(record["shares"].values()) - 1.0) < 1e-6
    labels = Image.open(out / "pic.png.labels.png")
    assert labels.mode == "P" and labels.size == (80, 48)
    values = np.asarray(labels)
    assert values.max() < 3
    for i, name in enumerate(record["names"]):
        assert abs((values == i).mean() - record["shares"][name]) < 1e-9
    overlay = Image.open(out / "pic.png.overlay.png")
    assert overlay.height == 48 and overlay.width > 80  # the picture keeps its size, legend beside it


@pytest.fixture
def fake(monkeypatch):
    calls: dict[str, list[int]] = {"describe": [], "segment": []}

    class Recording(FakePipeline):
        def describe(self, images):
            calls["describe"].append(len(images))
            return super().describe(images)

        def segment(self, images, names):
            calls["segment"].append(len(images))
            return super().segment(images, names)

    monkeypatch.setattr(pipeline_module, "SelfSegPipeline", Recording)
    return calls


def _images(folder, names, value=50):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(folder / name)


def test_segment_batches_images_and_names_outputs_uniquely(tmp_path, fake, capsys):
    _images(tmp_path / "in", ["x.png", "x.jpg", "y.png"])
    _images(tmp_path / "in" / "sub", ["x.png"])
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "in"), "--classes", "road,sky", "--out", str(out)]) == 0
    assert fake["segment"] == [4]  # one call on the list, not one per image
    assert sorted(p.name for p in out.rglob("*.json")) == [
        "x.jpg.json",
        "x.png.json",
        "x.png.json",
        "y.png.json",
    ]
    fake["segment"].clear()
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "self")]) == 0
    assert fake["describe"] == [4]  # self-guided: BCC batched over the images
    assert read_label_png(tmp_path / "self" / "y.png.labels.png").shape == (20, 30)
    clusters = Image.open(tmp_path / "self" / "y.png.clusters.png")
    assert clusters.width > 30 and clusters.height >= 20  # picture at its size + legend (one row: 30 px)


def test_segment_keeps_going_past_a_failing_image_and_shows_progress(tmp_path, fake, capsys, monkeypatch):
    _images(tmp_path, ["a.png", "c.png"])
    _images(tmp_path, ["b.png"], value=14)  # the fake segmenter raises on this one
    monkeypatch.setenv("SELFSEG_PROGRESS", "1")
    assert main(["segment", str(tmp_path), "--classes", "road"]) == 1
    captured = capsys.readouterr()
    assert "a.png: road 100.0%" in captured.out and "c.png: road" in captured.out
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "b.png" in errors[0] and "segmenter exploded" in errors[0]
    assert "segment" in captured.err and "3/3" in captured.err  # the progress bar


def test_output_keys_are_unique_relative_paths():
    assert output_keys(
        [__import__("pathlib").Path("/d/a/x.png"), __import__("pathlib").Path("/d/b/x.png")]
    ) == [
        "a/x.png",
        "b/x.png",
    ]

    assert output_keys([Path("/d/x.png")]) == ["x.png"]
    assert output_keys([Path("/d/x.png"), Path("/d/x.png")]) == ["x.png", "x.png"]
