"""The execution plan: every implementation choice resolved once, from the config, two debugging
switches and library probes, and nowhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import SelfSegError
from selfseg_fast.plan import resolve_plan
from selfseg_kernels.kmeans_assign import triton_importable

ROOT = Path(__file__).resolve().parents[1]


def test_reference_and_fast_plans_on_cpu():
    cfg = SelfSegConfig(engine="reference")
    ref = resolve_plan(cfg, "cpu")
    assert (ref.engine, ref.kmeans, ref.hungarian, ref.sampler, ref.noun_workers) == (
        "reference", "scikit-learn", "scipy", "hf-generate", 0
    )  # fmt: skip
    assert ref.segmenter_dtype == torch.float32 and not ref.segmenter_stream
    fast = resolve_plan(cfg, "cpu", engine="fast")
    assert (fast.kmeans, fast.kmeans_assign, fast.hungarian, fast.denoise) == (
        "torch",
        "torch",
        "scipy",
        "conv",
    )
    assert fast.dtype == torch.float32 and not fast.pinned_memory and fast.noun_workers >= 1
    assert (
        resolve_plan(cfg.with_overrides({"cluster.hungarian_solver": "batched"}), "cpu", "fast").hungarian
        == "batched"
    )
    assert resolve_plan(cfg.with_overrides({"nouns.workers": 0}), "cpu", "fast").noun_workers == 0
    note = fast.note()
    for part in (
        "k-means batched torch",
        "Hungarian scipy",
        "nouns",
        "image prep",
        "X-Decoder torch float32",
    ):
        assert part in note


def test_cuda_plan_and_switches_without_a_gpu(monkeypatch):
    """The plan for a CUDA device is a pure function of config, switches and probes (a GPU is not
    needed to resolve it)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = SelfSegConfig(engine="fast", compile=True)
    plan = resolve_plan(cfg, "cuda")
    assert plan.dtype == plan.segmenter_dtype == torch.float16
    assert (
        plan.pinned_memory
        and plan.segmenter_channels_last
        and plan.segmenter_stream
        and plan.segmenter_compile
    )
    assert plan.kmeans_assign == ("triton" if triton_importable() else "torch")
    monkeypatch.setenv("SELFSEG_DISABLE_TRITON", "1")
    assert resolve_plan(cfg, "cuda").kmeans_assign == "torch"
    assert resolve_plan(cfg.with_overrides({"dtype": "bfloat16"}), "cuda").dtype == torch.bfloat16
    onnx = resolve_plan(cfg.with_overrides({"segmenter.backend": "onnxruntime"}), "cuda")
    assert onnx.segmenter_dtype == torch.float32 and not onnx.segmenter_channels_last


def test_missing_cuml_is_refused_when_the_plan_is_made():
    pytest.importorskip("torch")
    try:
        import cuml  # noqa: F401
    except ImportError:
        cfg = SelfSegConfig(engine="fast").with_overrides({"cluster.kmeans_backend": "cuml"})
        with pytest.raises(SelfSegError) as info:
            resolve_plan(cfg, "cpu")
        assert "\n" not in str(info.value) and "cuml" in str(info.value).lower()


def test_no_stage_reads_the_environment_or_probes_libraries():
    """Implementation choices live in plan.py only: the stage, engine, model and kernel code never
    reads an environment variable (loading code may: checkpoint.py / checkpoint_files.py read the HF
    hub's variables, which choose where weights come from, not which implementation runs)."""
    offenders = []
    for folder in ("selfseg_fast/stages", "selfseg_fast/engines", "selfseg_fast/models/xdecoder", "kernels"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name in ("checkpoint.py", "checkpoint_files.py"):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"os\.environ|getenv\(", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, offenders
