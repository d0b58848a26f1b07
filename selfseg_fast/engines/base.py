"""What both engines share: the result record, device choice, and the engine protocol."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import torch

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.images import LoadedImage
from selfseg_fast.records import ImageResult


class Engine(Protocol):
    """Runs BLIP-Cluster-Caption + nouns on images: list[LoadedImage] -> list[ImageResult]."""

    name: str

    def describe(self, images: list[LoadedImage]) -> list[ImageResult]: ...

    def describe_stream(self, images: Iterable[LoadedImage]) -> Iterator[ImageResult]: ...


def resolve_device(cfg: SelfSegConfig) -> torch.device:
    """cfg.device, else CUDA when present, else CPU."""
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_result(
    image: LoadedImage,
    grid: torch.Tensor,  # [32, 32] cluster ids
    captions: dict[int, list[str]],
    cluster_nouns: dict[int, list[str]],
    stage_seconds: dict[str, float],
) -> ImageResult:
    """Assemble one image's record; the noun union keeps first-seen order over clusters in id order."""
    union: list[str] = []
    for cid in sorted(cluster_nouns):
        for noun in cluster_nouns[cid]:
            if noun not in union:
                union.append(noun)
    return ImageResult(
        path=image.path,
        cluster_grid=grid.to("cpu", torch.int64).tolist(),
        captions={int(c): list(v) for c, v in captions.items()},
        cluster_nouns={int(c): list(v) for c, v in cluster_nouns.items()},
        nouns=union,
        stage_seconds=stage_seconds,
    )


def build_engine(cfg: SelfSegConfig) -> Engine:
    """The engine named by cfg.engine."""
    if cfg.engine == "fast":
        from selfseg_fast.engines.fast import FastEngine

        return FastEngine(cfg)
    from selfseg_fast.engines.reference import ReferenceEngine

    return ReferenceEngine(cfg)
