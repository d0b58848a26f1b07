"""What both engines share: the engine protocol and the choice of engine."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.engines.fast import FastEngine
from selfseg_fast.engines.reference import ReferenceEngine
from selfseg_fast.images import LoadedImage
from selfseg_fast.plan import ExecutionPlan, resolve_device
from selfseg_fast.records import ImageResult

__all__ = ["Engine", "build_engine", "resolve_device"]


class Engine(Protocol):
    """Runs BLIP-Cluster-Caption + nouns on images: list[LoadedImage] -> list[ImageResult]."""

    name: str
    plan: ExecutionPlan  # which implementation of each stage runs (resolved once, at construction)

    def describe(self, images: list[LoadedImage]) -> list[ImageResult]: ...

    def describe_stream(self, images: Iterable[LoadedImage]) -> Iterator[ImageResult]: ...


def build_engine(cfg: SelfSegConfig) -> Engine:
    """The engine named by cfg.engine."""
    return FastEngine(cfg) if cfg.engine == "fast" else ReferenceEngine(cfg)
