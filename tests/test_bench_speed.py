"""`selfseg-fast bench --speed` on CPU, random-tiny weights, a tiny Cityscapes-layout dataset: the
output's schema, every dataset file timed once (SHA-256), numbers that agree with each other; bad
values are one-line errors before any model loads."""

from __future__ import annotations

import hashlib
import json

import pytest

from selfseg_fast.cli import main
from selfseg_fast.errors import EXIT_USAGE
from selfseg_fast.evaluation.datasets.synthetic import write_synthetic_cityscapes
from selfseg_fast.evaluation.speed import STAGES

TINY = ["--weights", "random-tiny", "--set", "segmenter.test_short_side=64", "--set", "caption.cycles=2",
        "--set", "caption.max_new_tokens=6"]  # fmt: skip
RUN = ["--batch-size", "2", "--batches", "2", "--warmup", "1", "--latency", "2"]  # 2 + 4 + 2 + 2 counted


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """Ten 48 x 64 Cityscapes-layout images: exactly what RUN takes."""
    return write_synthetic_cityscapes(tmp_path_factory.mktemp("city"), num_images=10, size=(48, 64), seed=3)


def test_speed_times_each_dataset_file_once(city, tmp_path, capsys):
    out = tmp_path / "speed"
    argv = ["bench", "--speed", "--dataset", "cityscapes", "--root", str(city), *RUN, *TINY]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "e2e.json").read_text())
    assert data["meta"]["torch"] and data["meta"]["transformers"] and data["meta"]["weights"] == "random-tiny"
    (row,) = data["rows"]
    assert row["dataset"] == row["preset"] == "cityscapes" and row["engine"] == "fast"
    assert row["device"].startswith("CPU")
    assert row["image_size"] == [48, 64] and row["images_from"].endswith(str(city))
    assert row["images"] == 4 and row["images_per_s"] == pytest.approx(4 / row["wall_s"])
    assert set(STAGES) <= set(row["stages"])
    for stage in row["stages"].values():  # a CPU: no device time, no peak share (n/a, not faked)
        assert stage["host_ms"] >= 0 and stage["device_ms"] is None and stage["pct_of_peak"] is None
    for stage in ("encode", "caption", "segment"):
        assert row["stages"][stage]["tflop_per_image"] > 0 and row["stages"][stage]["achieved_tflops"] > 0
    lat = row["latency"]
    assert lat["calls"] == 2 and lat["p99_ms"] == lat["max_ms"] and lat["p50_ms"] in lat["values_ms"]
    assert row["peak_gpu_mem_gib"] is None and row["counters_per_batch"]["segment"]["launches"] > 0
    # Unseen: the ten files, each exactly once, none of the warm-up's measured again.
    unseen = row["unseen"]
    assert unseen["by_purpose"] == {"warmup": 2, "timed": 4, "latency": 2, "counters": 2}
    assert unseen["images"] == unseen["distinct"] == 10 and unseen["warmup_images_measured_again"] == 0
    files = sorted((city / "leftImg8bit" / "val").rglob("*.png"))
    used = [h for hashes in unseen["sha256_by_purpose"].values() for h in hashes]
    assert sorted(used) == sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    assert "| cityscapes | fast | 64x48 | 2 x 2 |" in printed and "| cityscapes | fast | segment |" in printed
    assert "unseen: 10 images, 10 distinct, 0 warm-up images measured again" in printed
    assert (out / "e2e.md").read_text() in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--speed", "--batches", "0"], "--batches 0: expected a positive whole number"),
        (["--speed", "--latency", "-1"], "--latency -1: expected a whole number >= 0"),
        (["--speed", "--batch-size", "0"], "--batch-size 0: expected a positive whole number"),
        (["--speed", "--size", "64"], "--size '64': expected HEIGHTxWIDTH"),
        (["--speed", "--cycles-sweep", "1,5"], "--cycles-sweep is for the quality benchmark"),
        (["--speed", "--mode", "bcc-only"], "--mode is for the quality benchmark"),
        (["--speed", "--love-synonyms"], "--love-synonyms is for the quality benchmark"),
        (["--speed", "--allow-missing"], "--allow-missing is for the quality benchmark"),
        (["--batches", "3"], "--batches belongs to the speed benchmark: add --speed"),
        (["--speed", "--root", "CITY", "--size", "8x8"], "--size is for synthetic images"),
        (["--speed", "--root", "CITY", *RUN, "--batches", "5"], "10 images, this run uses 16 (each once)"),
    ],
)
def test_bad_values_are_one_line_errors_before_any_model_loads(city, argv, message, monkeypatch, capsys):
    import selfseg_fast.pipeline as pipeline

    def no_model(*_, **__):
        raise AssertionError("a model would load")

    monkeypatch.setattr(pipeline.SelfSegPipeline, "__init__", no_model)
    argv = [str(city) if a == "CITY" else a for a in argv]
    assert main(["bench", "--dataset", "cityscapes", *argv, "--weights", "random-tiny"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
