"""The end-to-end benchmark (benchmarks/bench_e2e.py) on CPU, random-tiny weights, small images: the
output's schema, numbers that agree with each other, and the unseen-image guarantee."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "benchmarks" / "bench_e2e.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_e2e"] = module
    spec.loader.exec_module(module)
    return module


def test_nearest_rank_is_a_measured_value(bench):
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert bench.nearest_rank(values, 0.5) == 3.0 and bench.nearest_rank(values, 0.99) == 5.0
    assert bench.nearest_rank(list(range(1, 201)), 0.99) == 198  # ceil(0.99 * 200) = 198th smallest
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and bench.peak_tflops("CPU (x86_64)") is None


def test_synthetic_images_have_the_dataset_size_and_differ(bench):
    from selfseg_fast.images import load_image_bytes

    a, b = bench.synthetic_jpeg((375, 500), 1), bench.synthetic_jpeg((375, 500), 2)
    assert a != b and load_image_bytes(a).rgb.shape == (375, 500, 3)
    assert bench.DATASET_SIZES["cityscapes"] == (1024, 2048)


def test_cpu_run_schema_and_consistency(bench, tmp_path):
    out = tmp_path / "e2e"
    argv = ["--weights", "random-tiny", "--presets", "voc", "--engines", "fast", "--batch-size", "2",
            "--batches", "2", "--warmup", "1", "--latency", "3", "--size", "48x64",
            "--set", "segmenter.test_short_side=64", "--set", "caption.max_new_tokens=6",
            "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    data = json.loads((out / "e2e.json").read_text())
    (row,) = data["rows"]
    assert data["meta"]["torch"] and data["meta"]["transformers"] and row["device"].startswith("CPU")
    assert row["images"] == 4 and row["images_per_s"] == pytest.approx(4 / row["wall_s"])
    stages = row["stages"]
    assert {"decode", "encode", "cluster", "caption", "nouns", "segment", "label_map"} <= set(stages)
    # Stages of one thread never add up to more than the wall time (other threads overlap it).
    per_thread: dict[str, float] = {}
    for s in stages.values():
        assert s["device_ms"] is None and s["pct_of_peak"] is None  # a CPU: not available, not faked
        assert len(s["threads"]) == 1
        per_thread[s["threads"][0]] = per_thread.get(s["threads"][0], 0.0) + s["host_ms"]
    assert per_thread["MainThread"] <= row["ms_per_image"] + 1e-6
    assert all(ms <= row["ms_per_image"] + 1e-6 for ms in per_thread.values())
    for stage in ("encode", "caption", "segment"):
        assert stages[stage]["tflop_per_image"] > 0 and stages[stage]["achieved_tflops"] > 0
    assert row["peak_gpu_mem_gib"] is None
    lat = row["latency"]
    assert lat["calls"] == 3 and lat["p99_ms"] == lat["max_ms"] and lat["p50_ms"] in lat["values_ms"]
    assert lat["min_ms"] <= lat["p50_ms"] <= lat["p99_ms"]
    # Every image ran once: the warm-up's images are never measured again.
    unseen = row["unseen"]
    assert unseen["images"] == unseen["distinct"] == 2 + 4 + 3 + 2
    assert unseen["warmup_images_measured_again"] == 0
    counters = row["counters_per_batch"]
    assert counters["encode"]["syncs"] == 0 and counters["segment"]["launches"] > 0
    table = (out / "e2e.md").read_text()
    assert "| voc | fast | 64x48 | 2 x 2 |" in table and "| voc | fast | cluster | MainThread |" in table
