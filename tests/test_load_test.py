"""The load test's own measurements (benchmarks/load_test.py): percentiles never extrapolate, memory is
read from the server's process, the bomb it sends is refused before decoding."""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
from pathlib import Path

import pytest

from selfseg_fast.errors import ResourceError
from selfseg_fast.images import load_image_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def load_test():
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "benchmarks" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module
    spec.loader.exec_module(module)
    return module


def test_p99_is_a_measured_value_never_beyond_the_slowest(load_test):
    latencies = [1.0, 2.0, 3.0, 10.0]
    assert statistics.quantiles(latencies, n=100)[98] > max(latencies)  # what the old report printed
    assert load_test.nearest_rank(latencies, 0.99) == 10.0
    assert load_test.nearest_rank(latencies, 0.50) == 2.0
    assert load_test.nearest_rank(list(range(1, 201)), 0.99) == 198


def test_memory_is_sampled_from_a_process(load_test):
    assert load_test.rss_bytes(os.getpid()) > 10 * 2**20
    assert load_test.rss_bytes(2**22 + 12345) is None  # no such process


def test_the_bomb_is_refused_from_its_header(load_test):
    with pytest.raises(ResourceError, match="decompression bomb"):
        load_image_bytes(load_test.png_bomb(), "bomb.png")


def test_a_degraded_answer_must_name_nouns_of_the_full_run(load_test):
    expected = {"names": ["car"], "nouns": {"car", "road", "tree"}}
    assert load_test.consistent({"degraded": True, "names": ["road", "tree"]}, expected)
    assert load_test.consistent({"degraded": True, "names": []}, expected)
    assert not load_test.consistent({"degraded": True, "names": ["road", "sky"]}, expected)
