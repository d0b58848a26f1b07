"""Folder labelling without models (a fake pipeline): per-image failures isolated, output names never
collide, an output folder inside the input is never relabelled, failures are retried, and every image is
written as soon as it is finished."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_pipeline import FakePipeline
from PIL import Image

import selfseg_fast.pipeline as pipeline_module
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.images import iter_image_paths
from selfseg_fast.label_maps import read_label_png
from selfseg_fast.labelling import output_files, output_key, run_labelling
from selfseg_fast.per_image import segment_paths


@pytest.fixture
def fake_pipeline(monkeypatch):
    monkeypatch.setattr(pipeline_module, "SelfSegPipeline", FakePipeline)
    FakePipeline.hook = None
    yield FakePipeline
    FakePipeline.hook = None


def _image(path: Path, value: int = 50, size=(12, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((*size, 3), value, np.uint8)
    Image.fromarray(rgb).save(path)


def _cfg(batch_size: int = 16) -> SelfSegConfig:
    return SelfSegConfig().with_overrides({"batch_size": batch_size})


def test_one_failing_image_never_takes_its_batch_down():
    paths = []
    for i, value in enumerate([50, 13, 60, 14, 70]):
        paths.append(Path(f"/tmp/selfseg-test-{i}.png"))
        _image(paths[-1], value)
    fake = FakePipeline(_cfg(16))
    outcomes = list(segment_paths(fake, paths))
    assert [o.ok for o in outcomes] == [True, False, True, False, True]
    assert "describe exploded" in outcomes[1].error and str(paths[1]) in outcomes[1].error
    assert "segmenter exploded" in outcomes[3].error and "\n" not in outcomes[3].error
    assert fake.describe_batches[0] == 5 and len(fake.describe_batches) <= 7  # bisected, not one by one
    names_given = list(segment_paths(fake, paths, names=["road"]))
    assert [o.ok for o in names_given] == [True, True, True, False, True]  # describe is not needed


def test_output_names_never_collide(tmp_path, fake_pipeline):
    root = tmp_path / "in"
    for rel in ("x.png", "x.jpg", "a__b.png", "a/b.png"):
        _image(root / rel)
    paths = iter_image_paths([root])
    keys = [output_key(p, root) for p in paths]
    assert len(set(keys)) == 4
    summary = run_labelling(paths, root, _cfg(), tmp_path / "out")
    assert (summary.done, summary.failed) == (4, 0)
    for key in keys:
        files = output_files(tmp_path / "out", key)
        assert json.loads(files["json"].read_text())["names"] == ["cat", "dog"]
        assert read_label_png(files["labels"]).shape == (12, 16)


def test_out_inside_the_input_folder_is_never_relabelled(tmp_path, fake_pipeline):
    root = tmp_path / "photos"
    _image(root / "one.png")
    _image(root / "two.jpg")
    out = root / "labels"
    from selfseg_fast.cli import main

    args = ["label", str(root), "--out", str(out), "--weights", "random-tiny"]
    for _ in range(3):
        assert main(args) == 0
    jsons = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert jsons == ["one.png.json", "two.jpg.json"]


def test_a_failed_image_is_not_marked_done_and_is_retried_after_the_fix(tmp_path, fake_pipeline):
    root = tmp_path / "in"
    _image(root / "good.png")
    (root / "broken.png").write_bytes(b"\x89PNG but truncated")
    out = tmp_path / "out"
    first = run_labelling(iter_image_paths([root]), root, _cfg(), out)
    assert (first.done, first.failed) == (1, 1)
    assert not output_files(out, "broken.png")["json"].exists()
    assert "broken.png" in json.loads((out / "failed.json").read_text())["failed"]
    _image(root / "broken.png")  # the user fixes the file
    second = run_labelling(iter_image_paths([root]), root, _cfg(), out)
    assert (second.done, second.failed, second.skipped) == (1, 0, 1)
    assert output_files(out, "broken.png")["json"].exists() and not (out / "failed.json").exists()


def test_each_image_is_written_as_soon_as_it_is_finished(tmp_path, fake_pipeline):
    root, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        _image(root / f"im{i}.png", 40 + i)
    written_before: list[int] = []

    def hook(event, image):
        written_before.append(len(list(out.glob("*.json"))))

    FakePipeline.hook = hook
    run_labelling(iter_image_paths([root]), root, _cfg(16), out)
    assert written_before == [0, 1, 2, 3]  # not all at the end of the batch of 16


def test_pictures_are_written_on_request(tmp_path, fake_pipeline):
    root, out = tmp_path / "in", tmp_path / "out"
    _image(root / "p.png", size=(40, 60))
    run_labelling(iter_image_paths([root]), root, _cfg(), out, pictures=True)
    files = output_files(out, "p.png")
    assert Image.open(files["overlay"]).height == 40 and Image.open(files["clusters"]).height == 40


KILL_RUNNER = """
import sys, time
sys.path.insert(0, sys.argv[3])
import selfseg_fast.pipeline as pipeline_module
from fake_pipeline import FakePipeline

class Slow(FakePipeline):
    def segment(self, images, names):
        time.sleep(0.15)
        return super().segment(images, names)

pipeline_module.SelfSegPipeline = Slow
from pathlib import Path
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.images import iter_image_paths
from selfseg_fast.labelling import run_labelling

root, out = Path(sys.argv[1]), Path(sys.argv[2])
run_labelling(iter_image_paths([root]), root, SelfSegConfig().with_overrides({"batch_size": 4}), out)
"""


def test_kill_9_loses_nothing_that_was_written_and_the_rerun_completes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root, out = tmp_path / "in", tmp_path / "out"
    for i in range(12):
        _image(root / f"im{i:02d}.png", 30 + i, size=(40, 50))
    tests_dir = str(Path(__file__).parent)
    command = [sys.executable, "-c", KILL_RUNNER, str(root), str(out), tests_dir]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.json"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {p.name for p in out.glob("*.json")}
    assert 4 <= len(done_before) < 12
    for record in out.glob("*.json"):  # every file on disk is whole
        json.loads(record.read_text())
        assert read_label_png(out / record.name.replace(".json", ".labels.png")).shape == (40, 50)
    assert subprocess.run(command).returncode == 0
    assert len(list(out.glob("*.json"))) == 12
    reference = tmp_path / "reference"
    command[-2] = str(reference)
    assert subprocess.run(command).returncode == 0  # an uninterrupted run

    def content(path: Path) -> dict:
        record = json.loads(path.read_text())
        record.pop("stage_seconds")  # timings differ from run to run
        return record

    for record in sorted(reference.glob("*.json")):
        assert content(out / record.name) == content(record)
        labels = record.name.replace(".json", ".labels.png")
        assert (out / labels).read_bytes() == (reference / labels).read_bytes()


def test_self_guided_files_keep_the_first_max_names_nouns_as_the_pipeline_does(tmp_path):
    """More nouns than segmenter.max_names (random weights at 20 cycles find ~300) is not an error:
    the first max_names are the class names, as SelfSegPipeline.run keeps them."""
    _image(tmp_path / "a.png")
    fake = FakePipeline(_cfg().with_overrides({"segmenter.max_names": 1}))
    (outcome,) = segment_paths(fake, [tmp_path / "a.png"])
    assert outcome.ok and outcome.names == ["cat"] and outcome.description.nouns == ["cat", "dog"]
