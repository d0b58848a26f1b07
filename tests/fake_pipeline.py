"""A model-free stand-in for SelfSegPipeline (tests of the batch commands): describe gives two nouns per
image, segment splits each image into a left and a right half."""

from __future__ import annotations

import numpy as np

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.records import ImageResult

NOUNS = ["cat", "dog"]


class FakePipeline:
    """describe: two nouns per image; segment: left half name 0, right half name 1. Images whose top-left
    pixel is 13 make describe raise; 14 make segment raise. `hook(event, image)` sees every call."""

    hook = None

    def __init__(self, cfg: SelfSegConfig | None = None) -> None:
        self.cfg = cfg or SelfSegConfig()
        self.describe_batches: list[int] = []

    def describe(self, images, deadline_ms=None):
        """`deadline_ms` (as SelfSegPipeline.describe): images whose top-left pixel is 15 come back
        degraded with one noun, as if the deadline stopped their captions."""
        self.describe_batches.append(len(images))
        self.deadline_ms = deadline_ms
        if any(int(im.rgb[0, 0, 0]) == 13 for im in images):
            raise RuntimeError("describe exploded")
        out = []
        for im in images:
            cut = deadline_ms is not None and int(im.rgb[0, 0, 0]) == 15
            nouns = ["cat"] if cut else ["cat", "dog"]
            caption = {0: ["a cat"]} if cut else {0: ["a cat and a dog"]}
            out.append(ImageResult(im.path, [[0] * 32] * 32, caption, {0: nouns}, nouns, degraded=cut))
        return out

    def segment(self, images, names):
        out = []
        for im, image_names in zip(images, names):
            if FakePipeline.hook:
                FakePipeline.hook("segment", im)
            if int(im.rgb[0, 0, 0]) == 14:
                raise ValueError("segmenter exploded")
            h, w = im.rgb.shape[:2]
            label_map = np.zeros((h, w), np.int64)
            label_map[:, w // 2 :] = min(1, len(image_names) - 1)
            out.append(label_map)
        return out
