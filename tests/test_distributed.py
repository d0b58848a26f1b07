"""Data-parallel runs on Ray (local mode, CPU) give exactly the single-process results."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray")

from selfseg_fast.cli import main  # noqa: E402


@pytest.mark.slow
def test_bench_on_ray_equals_single_process(tmp_path):
    common = [
        "bench", "--dataset", "synthetic", "--root", str(tmp_path / "data"), "--limit", "3",
        "--mode", "bcc-only", "--weights", "random-tiny", "--set", "caption.cycles=1", "--quiet",
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--ray", "local"]) == 0
    single = json.loads((tmp_path / "single" / "results.json").read_text())["summary"]
    on_ray = json.loads((tmp_path / "ray" / "results.json").read_text())["summary"]
    for key in ("images_scored", "cmiou", "cmiou_matched", "nouns_per_image"):
        assert single[key] == on_ray[key], key
    for record in sorted((tmp_path / "single" / "images").glob("*.json")):
        a = json.loads(record.read_text())
        b = json.loads((tmp_path / "ray" / "images" / record.name).read_text())
        assert (
            a["cluster_grid"] == b["cluster_grid"]
            and a["nouns"] == b["nouns"]
            and a["captions"] == b["captions"]
        )
