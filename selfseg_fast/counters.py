"""Op and host-sync counters: the speed guards that run on a CPU.

On a GPU, time goes to kernel launches and to the host waiting for the device. Neither can be timed
in CI, but both can be *counted* on any device, because they are properties of the code, not of the
hardware:

- **ops**: every ATen operator dispatched (a `TorchDispatchMode`); `launches` leaves out views and
  other metadata-only operators, so it approximates the kernels a GPU would launch.
- **syncs**: every call that makes the host wait for the device's values on a GPU: `.item()`,
  `.tolist()`, `.cpu()`, `.numpy()`, `bool()/int()/float()` of a tensor (a `TorchFunctionMode`), and
  operators whose output *shape* depends on values (`nonzero`, `unique`, boolean-mask indexing,
  `masked_select`, `repeat_interleave` without `output_size`, ...). `.to("cpu")` of a CUDA tensor is
  counted on a GPU only (on a CPU it cannot be told apart from a host-to-host no-op): device-to-host
  copies in the fast path use `.cpu()`, which is always counted.

    with OpCounter() as counter:
        with counter.stage("cluster"):
            cluster_grid_batched(...)
    counter.totals["cluster"].syncs, counter.totals["cluster"].launches

Stages nest by name (the innermost one gets the counts). Counting slows Python down several-fold:
use it in tests and in `--count-ops` benchmark runs, never around timed code.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Tensor methods that copy values to the host (a device sync on a GPU).
SYNC_METHODS = frozenset({"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"})

# Operators whose output shape depends on tensor values: the host must wait for them on a GPU.
DATA_DEPENDENT_OPS = frozenset(
    {
        aten.nonzero.default,
        aten.nonzero_static.default,  # static size: no sync, but listed so a reader sees it was considered
        aten._unique2.default,
        aten.unique_dim.default,
        aten.unique_consecutive.default,
        aten.masked_select.default,
        aten.repeat_interleave.Tensor,
        aten.equal.default,
        aten.is_nonzero.default,
        aten._local_scalar_dense.default,
    }
) - {aten.nonzero_static.default}

# Operators that move no data (views, metadata): not counted as launches.
_METADATA_OPS = frozenset(
    {
        aten.detach.default,
        aten.alias.default,
        aten.lift_fresh.default,
        aten.empty.memory_format,
        aten.empty_strided.default,
        aten.empty_like.default,
        aten._to_copy.default,  # counted as a launch only when it changes device or dtype (below)
    }
)


@dataclass
class Counts:
    """What one stage dispatched."""

    ops: int = 0  # every ATen operator
    launches: int = 0  # operators that would launch a kernel (no views / metadata)
    syncs: int = 0  # host syncs (see the module docstring)
    by_op: Counter = field(default_factory=Counter)  # operator name -> count
    sync_sites: Counter = field(default_factory=Counter)  # "file:line (what)" -> count

    def as_dict(self) -> dict[str, int]:
        return {"ops": self.ops, "launches": self.launches, "syncs": self.syncs}


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: OpCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.owner._on_op(func, args, kwargs)
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, owner: OpCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in SYNC_METHODS or (name == "to" and _moves_to_host(args, kwargs)):
            self.owner._on_sync(f"{name}()")
            self.owner._inside_sync_method += 1
            try:
                return func(*args, **kwargs)
            finally:
                self.owner._inside_sync_method -= 1
        return func(*args, **kwargs)


def _moves_to_host(args: tuple, kwargs: dict) -> bool:
    """`tensor.to(...)` from a non-CPU device to the CPU."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].device.type == "cpu":
        return False
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


def _bool_index(args: tuple) -> bool:
    """aten.index.Tensor / index_put with a boolean mask among the indices (shape depends on values)."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class OpCounter:
    """Counts ops, launches and host syncs per stage while active (a context manager)."""

    def __init__(self, *, record_sites: bool = True) -> None:
        self.totals: dict[str, Counts] = {}
        self.record_sites = record_sites
        self._stages: list[str] = ["total"]
        self._inside_sync_method = 0
        self._modes: list[Any] = []

    # ---- use -------------------------------------------------------------------------------------
    def __enter__(self) -> OpCounter:
        self._modes = [_Function(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []

    @contextmanager
    def stage(self, name: str) -> Iterator[Counts]:
        """Attribute everything inside to stage `name` (the innermost stage wins)."""
        self._stages.append(name)
        try:
            yield self._counts(name)
        finally:
            self._stages.pop()

    def get(self, stage: str = "total") -> Counts:
        return self.totals.get(stage, Counts())

    def summary(self) -> dict[str, dict[str, int]]:
        return {name: counts.as_dict() for name, counts in self.totals.items()}

    # ---- hooks -----------------------------------------------------------------------------------
    def _counts(self, name: str) -> Counts:
        return self.totals.setdefault(name, Counts())

    def _on_op(self, func, args: tuple, kwargs: dict) -> None:
        counts = self._counts(self._stages[-1])
        counts.ops += 1
        counts.by_op[str(func)] += 1
        if not (func in _METADATA_OPS or getattr(func, "is_view", False)) or _changes_storage(
            func, args, kwargs
        ):
            counts.launches += 1
        data_dependent = func in DATA_DEPENDENT_OPS or (
            func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and _bool_index(args)
        )
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None:
            data_dependent = False
        if data_dependent and not (func is aten._local_scalar_dense.default and self._inside_sync_method):
            self._on_sync(str(func))

    def _on_sync(self, what: str) -> None:
        counts = self._counts(self._stages[-1])
        counts.syncs += 1
        if self.record_sites:
            counts.sync_sites[f"{_caller()} ({what})"] += 1


def _changes_storage(func, args: tuple, kwargs: dict) -> bool:
    """`_to_copy` that changes device or dtype copies data (a launch); other metadata ops do not."""
    if func is not aten._to_copy.default or not args:
        return False
    src = args[0]
    return kwargs.get("device", src.device) != src.device or kwargs.get("dtype", src.dtype) != src.dtype


def _caller() -> str:
    """The innermost frame outside torch and this module that led here, as "folder/file.py:line"."""
    for frame in reversed(traceback.extract_stack(limit=40)):
        path = frame.filename.replace("\\", "/")
        if "/site-packages/" in path or "/torch/" in path or path.endswith("/selfseg_fast/counters.py"):
            continue
        return "/".join(path.rsplit("/", 2)[-2:]) + f":{frame.lineno}"
    return "?"
