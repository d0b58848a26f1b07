"""--profile output (trace, kernel table, stage table) and the kernels micro-benchmark, on CPU."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from selfseg_fast.cli import main
from selfseg_fast.profiling import write_stage_table


def test_caption_profile_writes_trace_with_stage_ranges(tmp_path, capsys) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    prof = tmp_path / "prof"
    # The reference engine runs every stage on the calling thread (the fast engine's noun worker thread
    # is outside the profiled thread), so all four ranges are in the trace.
    argv = ["caption", str(tmp_path / "a.png"), "--weights", "random-tiny", "--engine", "reference"]
    assert main([*argv, "--profile", str(prof)]) == 0
    trace = json.loads((prof / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"selfseg/encode", "selfseg/cluster", "selfseg/caption", "selfseg/nouns"} <= names
    assert "Self CPU" in (prof / "kernels.txt").read_text()
    stages = json.loads((prof / "stages.json").read_text())
    assert stages["images"] == 1 and set(stages["total_seconds"]) >= {"encode", "cluster", "caption"}
    assert "ms/image" in capsys.readouterr().err


def test_stage_table_sums_over_images(tmp_path) -> None:
    table = write_stage_table(str(tmp_path), [{"encode": 1.0, "caption": 0.5}, {"encode": 3.0}])
    assert json.loads((tmp_path / "stages.json").read_text()) == {
        "images": 2,
        "total_seconds": {"encode": 4.0, "caption": 0.5},
    }
    assert "2000.0" in table and "250.0" in table  # ms/image


def test_kernel_benchmark_has_a_row_per_kernel_and_implementation(tmp_path) -> None:
    from selfseg_kernels.bench_kernels import bench
    from selfseg_kernels.bench_kernels import main as bench_main

    rows = bench(torch.device("cpu"), batch=1, repeat=1)
    got = {(row["kernel"], row["impl"]) for row in rows}
    assert got == {
        ("kmeans_assign", "torch"),
        ("iou_counts", "torch"),
        ("hungarian", "batched"),
        ("hungarian", "scipy loop"),
        ("crf", "batched"),
        ("crf", "crfseg loop"),
        ("majority_filter", "batched"),
        ("majority_filter", "loop"),
    }  # CPU: the Triton and CuPy rows need CUDA
    assert all(row["ms"] > 0 for row in rows)
    csv_path = tmp_path / "k.csv"
    assert bench_main(["--device", "cpu", "--batch", "1", "--repeat", "1", "--csv", str(csv_path)]) == 0
    assert csv_path.read_text().splitlines()[0] == "kernel,impl,device,batch,ms"
