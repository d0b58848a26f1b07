"""Stage timing: host seconds on every device, device seconds only where CUDA events exist (None on a
CPU, never the host time in disguise), and the recorder that sees every thread's stages."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from selfseg_fast import timing


def test_recorder_collects_stages_of_every_thread_with_host_time_only_on_cpu():
    with timing.recording() as recorder:
        timer = timing.StageTimer()
        with timer("encode"):
            time.sleep(0.02)

        def worker():
            with timing.timed("segment"):
                time.sleep(0.01)

        thread = threading.Thread(target=worker, name="seg-worker")
        thread.start()
        thread.join()
    with timing.timed("after"):  # outside `recording`: not recorded
        pass
    records = recorder.take()
    assert [(r.stage, r.thread) for r in records] == [("encode", "MainThread"), ("segment", "seg-worker")]
    assert records[0].host_s >= 0.02 and records[1].host_s >= 0.01
    assert timer.as_dict()["encode"] == pytest.approx(records[0].host_s, abs=1e-6)
    if not torch.cuda.is_available():
        assert all(r.device_s is None for r in records) and timer.device_seconds() is None
    assert recorder.take() == []  # taken once


@pytest.mark.gpu
def test_device_time_comes_from_cuda_events_without_a_sync():
    x = torch.randn(2048, 2048, device="cuda")
    timer = timing.StageTimer()
    with timer("matmul"):
        for _ in range(20):
            x = x @ x / 2048
    device = timer.device_seconds()["matmul"]
    assert device > 0 and timer.records[0].device_s == device
