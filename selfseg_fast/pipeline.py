"""The load-once Python API: `SelfSegPipeline(cfg)` holds the models; `describe` names what is in
images, `segment` segments images with given names, `run` does both (the self-guided pipeline).

    pipe = SelfSegPipeline(SelfSegConfig.from_preset("voc"))
    result = pipe.run([load_image("photo.jpg")])[0]     # result.nouns, result.label_map
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.engines.base import Engine, build_engine, resolve_device
from selfseg_fast.images import LoadedImage
from selfseg_fast.records import ImageResult
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
        """The X-Decoder segmenter, built on first use (a `caption`-only user never pays for it), with
        the engine's plan (fp16, channels_last and its own CUDA stream for the fast engine on CUDA)."""
        if self._segmenter is None:
            from selfseg_fast.models.xdecoder.segmenter import build_segmenter  # X-Decoder: only when used

            self._segmenter = build_segmenter(self.cfg, self.device, self.engine.plan)
        return self._segmenter

    def describe(self, images: list[LoadedImage]) -> list[ImageResult]:
        """BLIP-Cluster-Caption + nouns for each image."""
        return self.engine.describe(images)

    def describe_stream(self, images: Iterable[LoadedImage]) -> Iterator[ImageResult]:
        """Like `describe`, for an iterable of any length: results come in input order as they finish."""
        return self.engine.describe_stream(images)

    def segment(self, images: list[LoadedImage], class_names: list[list[str]]) -> list[np.ndarray]:
        """Open-vocabulary segmentation with the given names per image -> [H, W] int64 label maps.
        Every request is checked against the segmenter's limits before any work (ResourceError)."""
        if len(images) != len(class_names):
            raise ValueError(f"{len(images)} images but {len(class_names)} name lists")
        maps: list[np.ndarray | None] = [None] * len(images)
        todo = [i for i, names in enumerate(class_names) if names]
        for i, image in enumerate(images):
            if not class_names[i]:  # nothing was named: every pixel is unlabelled
                maps[i] = np.full(image.rgb.shape[:2], -1, dtype=np.int64)
        if todo:
            seg = self.segmenter
            for i in todo:
                seg.check_request(*images[i].rgb.shape[:2], len(class_names[i]), what=images[i].path)
            if self.engine.plan.engine == "fast":  # one image-branch pass per padded size, then names
                for i, branch in zip(todo, seg.image_branch([images[i].rgb for i in todo])):
                    maps[i] = seg.label_map(branch, class_names[i])
            else:
                for i in todo:
                    maps[i] = seg.segment(images[i].rgb, class_names[i])
        return maps

    def run(self, images: list[LoadedImage]) -> list[Segmentation]:
        """The self-guided pipeline: describe, then segment each image with its own nouns (at most
        `segmenter.max_names`, first-seen order). Fast engine: the segmenter's image branch (which
        needs no names) runs on its own worker and stream while the engine describes, batch by batch."""
        images = list(images)
        seg = self.segmenter
        for image in images:  # refuse what cannot fit before any work (the names are not known yet)
            seg.check_request(*image.rgb.shape[:2], 1, what=image.path)
        if self.engine.plan.engine != "fast":
            described = self.describe(images)
            return [self._segment_described(image, result) for image, result in zip(images, described)]
        branches: dict[int, Future] = {}
        pending = []
        for i, result in enumerate(self.describe_stream(self._feed_branches(images, branches))):
            names = list(result.nouns)[: seg.sc.max_names]
            branch = branches.pop(i)
            pending.append((result, names, seg.finish(branch, names) if names else None))
        out = []
        for image, (result, names, segmented) in zip(images, pending):
            if segmented is None:  # nothing was named: every pixel is unlabelled
                label_map, seconds = np.full(image.rgb.shape[:2], -1, dtype=np.int64), 0.0
            else:
                done = segmented.result()
                label_map, seconds = done.label_map, done.seconds
            result.stage_seconds["segment"] = round(seconds, 6)
            out.append(Segmentation(result, names, label_map))
        return out

    def _feed_branches(self, images: list[LoadedImage], branches: dict[int, Future]) -> Iterator[LoadedImage]:
        """Yield the images to the engine; each group of an engine batch's size has its image branch
        queued on the segmenter's worker as the engine starts preparing the group that follows it."""
        group: list[int] = []
        for i, image in enumerate(images):
            if len(group) >= getattr(self.engine, "batch_size", 1):
                self._queue_branches(images, group, branches)
                group = []
            group.append(i)
            yield image
        if group:
            self._queue_branches(images, group, branches)

    def _queue_branches(self, images, group: list[int], branches: dict[int, Future]) -> None:
        for i, future in zip(group, self.segmenter.start([images[i].rgb for i in group])):
            branches[i] = future

    def _segment_described(self, image: LoadedImage, result: ImageResult) -> Segmentation:
        """Reference engine: the official per-image segmentation after the image is described."""
        names = list(result.nouns)[: self.segmenter.sc.max_names]
        timer = StageTimer(sync=True)
        with timer("segment"):
            (label_map,) = self.segment([image], [names])
        result.stage_seconds.update(timer.as_dict())
        return Segmentation(result, names, label_map)
