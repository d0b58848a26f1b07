"""Which implementation of each stage runs: decided ONCE, when an engine is built, into `ExecutionPlan`.

Config fields (`engine`, `dtype`, `compile`, `cluster.kmeans_backend`, `cluster.hungarian_solver`,
`segmenter.backend`, `nouns.workers`), the two debugging switches (`SELFSEG_DISABLE_TRITON=1`,
`SELFSEG_XDECODER_TEXT_IMPL=reference|fast`) and the probes of optional libraries (Triton, CuPy, cuML)
are read here and nowhere else. Stages take the plan's fields as arguments; the engine's start-up
note is `plan.note()`. (The pattern of vLLM's `CustomOp.dispatch_forward`: choose once, then call.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import SelfSegError
from selfseg_kernels.kmeans_assign import triton_importable

TRITON_ENV = "SELFSEG_DISABLE_TRITON"  # "1": the torch k-means assignment even where Triton runs
TEXT_IMPL_ENV = "SELFSEG_XDECODER_TEXT_IMPL"  # "reference": X-Decoder's official text-encoder loop

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class ExecutionPlan:
    """The implementation of every stage for one engine on one device (see the module docstring)."""

    engine: Literal["reference", "fast"]
    device: torch.device
    dtype: torch.dtype  # fast encoder + caption sampler (float32 on CPU and for the reference)
    compile_encoder: bool  # torch.compile of the vision tower (CUDA graphs on CUDA, bucketed batches)
    kmeans: Literal["scikit-learn", "torch", "cuml"]
    kmeans_assign: Literal["triton", "torch"]  # the assignment step of the torch k-means
    kmeans_graphs: bool  # blocks of Lloyd iterations replayed from CUDA graphs (CUDA with compile=true)
    hungarian: Literal["scipy", "batched"]  # scipy: one device-to-host copy per batch; batched: on device
    iou_counter: Literal["numpy", "torch", "cupy"]
    denoise: Literal["crfseg", "conv"]
    sampler: Literal["hf-generate", "batched"]
    sampler_graphs: bool  # the caption decode step replayed from CUDA graphs (CUDA with compile=true)
    nouns: Literal["per-caption", "pipe"]
    noun_workers: int  # spaCy worker processes (0: in a thread of this process)
    prep_workers: int  # threads for the host image work (resize, pixel CRC); 0: inline
    pinned_memory: bool  # host batches in page-locked memory, copied with non_blocking=True
    segmenter_backend: Literal["torch", "onnxruntime", "tensorrt"]
    segmenter_dtype: torch.dtype
    segmenter_channels_last: bool
    segmenter_compile: bool  # torch.compile(mode="reduce-overhead") per padded input shape (CUDA)
    segmenter_stream: bool  # X-Decoder on its own CUDA stream, overlapped with describe
    text_encoder: Literal["fast", "reference"]

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def note(self) -> str:
        """One line naming what runs where (printed when the fast engine starts)."""
        dt = str(self.dtype).removeprefix("torch.")
        if self.engine == "reference":
            return (
                f"reference engine on {self.device}: HF BLIP fp32, scikit-learn, SciPy, crfseg, HF generate"
            )
        kmeans = "cuML" if self.kmeans == "cuml" else "batched torch"
        if self.kmeans == "torch":
            kmeans += " + Triton assignment" if self.kmeans_assign == "triton" else " (torch assignment)"
            kmeans += ", CUDA graphs" * self.kmeans_graphs
        seg = f"{self.segmenter_backend} {str(self.segmenter_dtype).removeprefix('torch.')}"
        seg += " channels_last" * self.segmenter_channels_last + " compiled" * self.segmenter_compile
        seg += " on its own stream" * self.segmenter_stream
        parts = [
            f"fast engine on {self.device}: encoder SDPA {dt}" + " compiled" * self.compile_encoder,
            f"k-means {kmeans}",
            f"IoU {self.iou_counter}",
            f"Hungarian {self.hungarian}",
            "CRF/filter conv",
            f"captions batched sampler {dt}" + " CUDA graphs" * self.sampler_graphs,
            f"nouns {self._workers(self.noun_workers, 'process')}",
            f"image prep {self._workers(self.prep_workers, 'thread')}" + ", pinned" * self.pinned_memory,
            f"X-Decoder {seg}, text encoder {self.text_encoder}",
        ]
        return "; ".join(parts)

    @staticmethod
    def _workers(n: int, kind: str) -> str:
        if n == 0:
            return "inline"
        plural = "" if n == 1 else "es" if kind == "process" else "s"
        return f"{n} {kind}{plural}"


def resolve_device(cfg: SelfSegConfig) -> torch.device:
    """cfg.device, else CUDA when present, else CPU."""
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_plan(
    cfg: SelfSegConfig, device: torch.device | str | None = None, engine: str | None = None
) -> ExecutionPlan:
    """The plan for `cfg` on `device` (default: `resolve_device(cfg)`) for `engine` (default:
    cfg.engine; an engine class passes its own name)."""
    device = torch.device(device) if device is not None else resolve_device(cfg)
    engine = engine or cfg.engine
    fast, on_gpu = engine == "fast", device.type == "cuda"
    dtype = _DTYPES[cfg.dtype] if fast and on_gpu else torch.float32
    seg_torch = cfg.segmenter.backend == "torch"
    return ExecutionPlan(
        engine=engine,
        device=device,
        dtype=dtype,
        compile_encoder=fast and cfg.compile,
        kmeans=_kmeans_backend(cfg) if fast else "scikit-learn",
        kmeans_assign="triton" if fast and _triton_usable(device) else "torch",
        kmeans_graphs=fast and on_gpu and cfg.compile,
        hungarian=_hungarian(cfg) if fast else "scipy",
        iou_counter=("cupy" if on_gpu and _cupy_importable() else "torch") if fast else "numpy",
        denoise="conv" if fast else "crfseg",
        sampler="batched" if fast else "hf-generate",
        sampler_graphs=fast and on_gpu and cfg.compile,
        nouns="pipe" if fast else "per-caption",
        noun_workers=_noun_workers(cfg) if fast else 0,
        prep_workers=min(8, cpu_count()) if fast else 0,
        pinned_memory=fast and on_gpu,
        segmenter_backend=cfg.segmenter.backend,
        segmenter_dtype=dtype if fast and on_gpu and seg_torch else torch.float32,
        segmenter_channels_last=fast and on_gpu and seg_torch,
        segmenter_compile=fast and on_gpu and seg_torch and cfg.compile,
        segmenter_stream=fast and on_gpu,
        text_encoder=_text_encoder(),
    )


def _kmeans_backend(cfg: SelfSegConfig) -> str:
    backend = cfg.cluster.kmeans_backend
    if backend == "cuml":
        try:
            import cuml  # noqa: F401
            import cupy  # noqa: F401
        except ImportError:
            raise SelfSegError(
                "--set cluster.kmeans_backend=cuml needs cuML and CuPy on a CUDA machine "
                "(pip install cuml-cu12); the default 'torch' backend needs neither"
            ) from None
    return backend


def _hungarian(cfg: SelfSegConfig) -> str:
    """ "auto" -> "scipy" on every device: one copy of the small cost matrices to the host per batch
    (a dozen to a few hundred 8x8 problems, microseconds each in SciPy) costs less than the exact
    on-device port, whose fixed R x C step loop is ~3,000 tiny launches per batch (see RESULTS.md)."""
    solver = cfg.cluster.hungarian_solver
    return "scipy" if solver == "auto" else solver


def _noun_workers(cfg: SelfSegConfig) -> int:
    """nouns.workers, else one spaCy process per core left after the main one (at most 8)."""
    if cfg.nouns.workers is not None:
        return max(0, int(cfg.nouns.workers))
    return max(1, min(8, cpu_count() - 1))


def _triton_usable(device: torch.device) -> bool:
    """The fused Triton assignment runs on CUDA tensors (not in Triton's CPU interpreter) unless off."""
    if os.environ.get(TRITON_ENV) == "1" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return device.type == "cuda" and triton_importable()


def _cupy_importable() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def _text_encoder() -> str:
    impl = os.environ.get(TEXT_IMPL_ENV) or "fast"
    if impl not in ("reference", "fast"):
        raise SelfSegError(
            f"{TEXT_IMPL_ENV}: unknown text encoder implementation {impl!r}; use reference|fast"
        )
    return impl
