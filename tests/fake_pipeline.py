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

    def describe(self, images):
        self.describe_batches.append(len(images))
        if any(int(im.rgb[0, 0, 0]) == 13 for im in images):
            raise RuntimeError("describe exploded")
        return [
            ImageResult(
                im.path, [[0] * 32] * 32, {0: ["a cat and a dog"]}, {0: ["cat", "dog"]}, ["cat", "dog"]
            )
            for im in images
        ]

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
