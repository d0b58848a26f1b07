"""selfseg-fast: self-guided open-vocabulary semantic segmentation (Self-Seg), fast and faithful.

from selfseg_fast import SelfSegPipeline
pipe = SelfSegPipeline.from_pretrained("voc")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfseg_fast.config import PRESETS, SelfSegConfig
from selfseg_fast.errors import SelfSegError

if TYPE_CHECKING:
    from selfseg_fast.pipeline import NamedMap, Segmentation, SelfSegPipeline

__all__ = [
    "PRESETS",
    "NamedMap",
    "SelfSegConfig",
    "SelfSegError",
    "SelfSegPipeline",
    "Segmentation",
    "__version__",
]
__version__ = "0.1.0"

_LAZY = {"SelfSegPipeline", "Segmentation", "NamedMap"}  # import torch and the models only when asked for


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from selfseg_fast import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'selfseg_fast' has no attribute {name!r}")
