"""The load-once Python API: `SelfSegPipeline(cfg)` holds the models; `describe` names what is in
images, `segment` segments images with given names, `run` does both (the self-guided pipeline).

    pipe = SelfSegPipeline(SelfSegConfig.from_preset("voc"))
    result = pipe.run([load_image("photo.jpg")])[0]     # result.nouns, result.label_map
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.engines.base import Engine, build_engine, resolve_device
from selfseg_fast.images import LoadedImage
from selfseg_fast.records import ImageResult
from selfseg_fast.resegment import resegment
from selfseg_fast.timing import StageTimer


@dataclass
class Segmentation:
    """Self-guided segmentation of one image: the BCC record plus a label map over its nouns."""

    description: ImageResult
    class_names: list[str]
    label_map: np.ndarray  # [H, W] int64, index into class_names (-1: no names were found)


class SelfSegPipeline:
    """Models loaded once (BLIP now, the segmenter on first use); thread-compatible, not re-entrant:
    serve concurrent callers through `selfseg_fast.serving.MicroBatcher`."""

    def __init__(self, cfg: SelfSegConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg)
        self.engine: Engine = build_engine(cfg)
        self._segmenter = None

    @property
    def segmenter(self):
        """The X-Decoder segmenter, built on first use (a `caption`-only user never pays for it)."""
        if self._segmenter is None:
            from selfseg_fast.models.xdecoder.segmenter import build_segmenter

            self._segmenter = build_segmenter(self.cfg, self.device)
        return self._segmenter

    def describe(self, images: list[LoadedImage]) -> list[ImageResult]:
        """BLIP-Cluster-Caption + nouns for each image."""
        return self.engine.describe(images)

    def describe_stream(self, images: Iterable[LoadedImage]) -> Iterator[ImageResult]:
        """Like `describe`, for an iterable of any length: results come in input order as they finish."""
        return self.engine.describe_stream(images)

    def segment(self, images: list[LoadedImage], class_names: list[list[str]]) -> list[np.ndarray]:
        """Open-vocabulary segmentation with the given names per image -> [H, W] int64 label maps."""
        if len(images) != len(class_names):
            raise ValueError(f"{len(images)} images but {len(class_names)} name lists")
        maps = []
        for image, names in zip(images, class_names):
            if not names:  # nothing was named: every pixel is unlabelled
                maps.append(np.full(image.rgb.shape[:2], -1, dtype=np.int64))
            else:
                maps.append(self.segmenter.segment(image.rgb, names))
        return maps

    def run(self, images: list[LoadedImage]) -> list[Segmentation]:
        """The self-guided pipeline: describe, then segment each image with its own nouns."""
        described = self.describe(images)
        out = []
        for image, result in zip(images, described):
            timer = StageTimer(sync=True)
            with timer("segment"):
                (label_map,) = self.segment([image], [result.nouns])
                label_map, names = resegment(  # maskblip's second pass; a no-op unless configured
                    label_map,
                    result.nouns,
                    lambda kept, im=image: self.segment([im], [kept])[0],
                    self.cfg.segmenter,
                )
            result.stage_seconds.update(timer.as_dict())
            out.append(Segmentation(result, names, label_map))
        return out
