"""`--profile DIR`: a torch-profiler trace (Chrome/Perfetto JSON) plus a per-stage time table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch


@contextmanager
def maybe_profile(out_dir: str | None) -> Iterator[None]:
    """Profile the block into OUT_DIR/trace.json when `out_dir` is given; else do nothing."""
    if not out_dir:
        with nullcontext():
            yield
        return
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        yield
    prof.export_chrome_trace(str(path / "trace.json"))
    (path / "kernels.txt").write_text(
        prof.key_averages().table(
            sort_by="self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total", row_limit=40
        )
    )


def write_stage_table(out_dir: str | None, stage_seconds: list[dict[str, float]]) -> str:
    """Sum stage times over images; write OUT_DIR/stages.json and return a printable table."""
    totals: dict[str, float] = {}
    for per_image in stage_seconds:
        for stage, sec in per_image.items():
            totals[stage] = totals.get(stage, 0.0) + sec
    n = max(1, len(stage_seconds))
    lines = [f"{'stage':<10} {'total s':>10} {'ms/image':>10}"]
    lines += [f"{stage:<10} {sec:>10.3f} {1000 * sec / n:>10.1f}" for stage, sec in totals.items()]
    table = "\n".join(lines)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "stages.json").write_text(
            json.dumps({"images": n, "total_seconds": totals}, indent=2)
        )
    return table
