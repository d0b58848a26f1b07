"""X-Decoder open-vocabulary semantic segmentation: images and any class names -> label maps.

    rgb [H, W, 3] uint8, names (K)
      -> resize so the short side is `test_short_side` (long side <= `test_max_size`; every side >= 1 px),
         bilinear (detectron2's ResizeShortestEdge) or bicubic (`resize_interpolation`), official pixel
         mean/std on 0-255 RGB, zero-pad to a multiple of 32                 [B, 3, H', W']
      -> FocalNet -> pixel decoder -> decoder: class embeddings [B, Q, P] and mask logits
         [B, Q, H'/4, W'/4]. The text enters only the class logits, so this "image branch" runs once
         for all images of a batch whatever their names
      -> per image: class logits = similarity(class embeddings, text embeddings of names + "background"),
         softmax without the background column, contracted with the sigmoid masks after their resize to
         H x W (bicubic, antialiased, crop, bicubic), argmax           [H, W] int64 in 0..K-1
This is the official `evaluate` + `semantic_inference` with `sem_seg_postprocess_before_inference`.

Two paths (the plan decides): the reference runs one image at a time and computes the official
[K, H, W] float32 scores (`postprocess.semantic_map`); the fast path batches the image branch over the
images of a batch that share a padded size, runs it in the plan's dtype (fp16 + channels_last on
CUDA) on its own CUDA stream, and computes the label map in bounded tiles
(`postprocess.label_map_tiled`), never the [K, H, W] scores. Memory: `estimate_peak_bytes`; a request
over `segmenter.memory_budget_mb` raises ResourceError before anything is allocated. Text embeddings
are cached per class name (`TextEmbedder`); the vocabulary is an argument of every call.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from selfseg_fast.config import SegmenterConfig, SelfSegConfig
from selfseg_fast.errors import ResourceError, SelfSegError
from selfseg_fast.grouping import Grouping
from selfseg_fast.host import to_host
from selfseg_fast.models.xdecoder.config import XDecoderConfig
from selfseg_fast.models.xdecoder.model import XDecoder, build_model
from selfseg_fast.models.xdecoder.postprocess import (
    TILE_BYTES,
    class_probabilities,
    label_map_tiled,
    mask_scores,
    semantic_map,
    upsampling_matrices,
)
from selfseg_fast.models.xdecoder.text_embeddings import TextEmbedder
from selfseg_fast.plan import ExecutionPlan, resolve_plan
from selfseg_fast.timing import timed

__all__ = [
    "XDecoder",
    "XDecoderConfig",
    "XDecoderSegmenter",
    "build_model",
    "build_segmenter",
    "semantic_map",
]

PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)
SIZE_DIVISIBILITY = 32
# Peak bytes of the image branch per pixel of its (padded) input, float32, for a backbone of width 96
# (Focal-T): measured 650-700 on CPU with random weights (peak resident memory, 512 x 512 and
# 512 x 1024 inputs), rounded up; scaled by the backbone width, halved in float16. The model input is
# capped by the test size, so this part of the peak does not grow with the image.
MODEL_BYTES_PER_INPUT_PX = 1000


@dataclass(frozen=True)
class Prepared:
    """One image after the test transform."""

    pixels: torch.Tensor  # [1, 3, H', W'] normalised, zero-padded to multiples of 32
    valid: tuple[int, int]  # (h, w) of the resized image inside the padding
    out: tuple[int, int]  # (H, W) of the input image

    @property
    def padded(self) -> tuple[int, int]:
        return tuple(self.pixels.shape[-2:])


@dataclass(frozen=True)
class BranchOutput:
    """The text-free output for one image: all the class scoring needs besides the names."""

    prepared: Prepared
    class_embed: torch.Tensor | None  # [Q, P]; None when the backend needs the text with the pixels
    masks: torch.Tensor | None  # [Q, H'/4, W'/4] mask logits
    seconds: float = 0.0  # this image's share of its batch's image-branch time


@dataclass(frozen=True)
class Segmented:
    """A finished label map and the segmenter time spent on its image."""

    label_map: np.ndarray  # [H, W] int64 index into the names (with a grouping: its output names)
    seconds: float
    grouping: Grouping | None = None  # consolidation / taxonomy applied (None: the names as given)


class Grouper(Protocol):
    """Decides, once the class probabilities are known, how names group into labels (naming.py)."""

    needs_scores: bool  # plan() needs the per-name score maps at the mask resolution

    def plan(self, names: list[str], mask_scores: torch.Tensor | None = None) -> Grouping: ...


class XDecoderSegmenter:
    """`segment(rgb, names) -> [H, W] int64`: the model, the cached text embedder and the test transform.
    `scores` gives the official [K, H, W] class scores; `image_branch` + `label_map` are the fast path's
    two halves (the first needs only pixels); `start` runs them on the segmenter's own worker thread."""

    def __init__(
        self,
        model: XDecoder,
        sc: SegmenterConfig | None = None,
        plan: ExecutionPlan | None = None,
        *,
        tokenizer=None,
    ) -> None:
        self.sc = sc or SegmenterConfig()
        self.plan = plan or resolve_plan(SelfSegConfig(), next(model.parameters()).device, engine="reference")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = self.plan.segmenter_dtype
        self.fast = self.plan.engine == "fast"
        self.channels_last = self.plan.segmenter_channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # CUDA graphs per padded input shape (reduce-overhead); the class scoring stays eager
        self.forward_image = (
            torch.compile(self.model.forward_image, mode="reduce-overhead", dynamic=False)
            if self.plan.segmenter_compile
            else self.model.forward_image
        )
        self.short_side, self.max_size = self.sc.test_short_side, self.sc.test_max_size
        self.resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[self.sc.resize_interpolation]
        self.text = TextEmbedder(model.language, tokenizer)
        self.mean = torch.tensor(PIXEL_MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(PIXEL_STD, device=self.device).view(3, 1, 1)
        self._worker: _SegmentWorker | None = None

    # ---- the test transform ------------------------------------------------------------------------
    def test_size(self, h: int, w: int) -> tuple[int, int]:
        """detectron2's ResizeShortestEdge at test time: short side -> `short_side`, long side capped
        (every side at least 1 px: a 1 x 100000 image stays one row high)."""
        scale = self.short_side / min(h, w)
        if max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))

    def preprocess(self, rgb: np.ndarray) -> Prepared:
        """[H, W, 3] uint8 -> the padded, normalised model input (PIL resize, official mean/std)."""
        h, w = self.test_size(*rgb.shape[:2])
        resized = np.asarray(Image.fromarray(rgb).resize((w, h), self.resample))
        x = torch.from_numpy(resized.copy()).to(self.device).permute(2, 0, 1).float()
        x = (x - self.mean) / self.std
        ph, pw = (
            -(-h // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
            -(-w // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
        )
        x = F.pad(x, (0, pw - w, 0, ph - h))[None].to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Prepared(x, (h, w), tuple(rgb.shape[:2]))

    def text_embeddings(self, names: list[str]) -> torch.Tensor:
        """[K + 1, P]: the names and the official trailing "background", cached per name."""
        return self.text([*names, "background"]).to(self.dtype)

    # ---- resources ---------------------------------------------------------------------------------
    def estimate_peak_bytes(self, height: int, width: int, n_names: int, mask_scores: bool = False) -> int:
        """Peak memory of one image's segmentation (device and host together), before any allocation:
        the image branch at the (capped) test size, plus what grows with the output (see the README)."""
        h, w = self.test_size(height, width)
        ph, pw = (
            -(-h // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
            -(-w // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
        )
        elem = torch.finfo(self.dtype).bits // 8
        backbone = self.model.cfg.backbone.embed_dim / 96  # relative to Focal-T's width
        model = int(MODEL_BYTES_PER_INPUT_PX * backbone * elem / 4 * ph * pw)
        q, pixels = self.model.cfg.decoder.num_queries, height * width
        if self.fast:  # upsampling matrices (float32), a tile and its column pass, int32 + int64 labels
            out = 4 * (height * ph // 4 + width * pw // 4) + 2 * TILE_BYTES + 12 * pixels
        else:  # resized masks (twice), scores, int64 label map
            out = (4 * (2 * q + n_names) + 8) * pixels
        if mask_scores:  # the overlap rule at the mask resolution: the masks' sigmoid, the [K, h, w]
            # score maps, their grouped and working copies and one containment row's minimum
            out += 4 * (q + 4 * n_names) * (ph // 4) * (pw // 4)
        return model + out

    def check_request(
        self, height: int, width: int, n_names: int, what: str = "image", mask_scores: bool = False
    ) -> None:
        """ResourceError (before any work) when a request is over `memory_budget_mb` or `max_names`."""
        if n_names > self.sc.max_names:
            raise ResourceError(
                f"{what}: {n_names} class names is more than segmenter.max_names={self.sc.max_names}; "
                "pass fewer names or raise the limit"
            )
        budget = self.sc.memory_budget_mb
        need = self.estimate_peak_bytes(height, width, n_names, mask_scores)
        if budget is not None and need > budget * 2**20:
            raise ResourceError(
                f"{what}: segmenting {width}x{height} px with {n_names} names needs about "
                f"{need / 2**20:.0f} MiB, over segmenter.memory_budget_mb={budget:g}; "
                "send a smaller image or raise the budget"
            )

    # ---- fast path: image branch, then class scoring ------------------------------------------------
    def run(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole model: x [B, 3, H', W'], text [K + 1, P] -> (pred_logits [B, Q, K + 1],
        pred_masks [B, Q, H'/4, W'/4]). Other runtimes (ONNX Runtime, TensorRT) override this."""
        out = self.model(x, text)
        return out["pred_logits"], out["pred_masks"]

    needs_text_with_pixels = False  # ONNX Runtime / TensorRT run the whole graph at once

    def image_branch(self, rgbs: list[np.ndarray]) -> list[BranchOutput]:
        """The text-free part for many images: images of the same padded size run as one batch (up to
        `sc.max_batch`); no image is padded beyond its own size, so each output equals its own."""
        with timed("segment"):
            return self._image_branch(rgbs)

    @torch.inference_mode()
    def _image_branch(self, rgbs: list[np.ndarray]) -> list[BranchOutput]:
        for rgb in rgbs:
            _check_rgb(rgb)
        prepared = [self.preprocess(rgb) for rgb in rgbs]
        if self.needs_text_with_pixels:
            return [BranchOutput(p, None, None) for p in prepared]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(p.padded, []).append(i)
        results: list[BranchOutput | None] = [None] * len(rgbs)
        for members in groups.values():
            for start in range(0, len(members), self.sc.max_batch):
                chunk = members[start : start + self.sc.max_batch]
                began = time.perf_counter()
                out = self._forward_bucketed(torch.cat([prepared[i].pixels for i in chunk]))
                share = (time.perf_counter() - began) / len(chunk)
                for j, i in enumerate(chunk):
                    results[i] = BranchOutput(prepared[i], out["class_embed"][j], out["pred_masks"][j], share)
        return results

    def _forward_bucketed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image branch; compiled (CUDA graphs per shape) it runs power-of-two batches only, so a
        padded size has at most log2(max_batch) + 1 captured graphs."""
        n = x.shape[0]
        if self.plan.segmenter_compile and n & (n - 1):
            bucket = 1 << n.bit_length()
            x = torch.cat([x, x[-1:].expand(bucket - n, -1, -1, -1)])
        out = self.forward_image(x)
        return {key: value[:n] for key, value in out.items()}

    def label_map(self, branch: BranchOutput, names: list[str]) -> np.ndarray:
        """[H, W] int64 label map of one image from its branch output and its names."""
        return self.label_map_grouped(branch, names)[0]

    def label_map_grouped(
        self, branch: BranchOutput, names: list[str], grouper: Grouper | None = None
    ) -> tuple[np.ndarray, Grouping]:
        """The fast path with names grouped (`grouper`: consolidation, taxonomy): the class
        probabilities are summed per group, [Q, K] -> [Q, K'], before the tiled label map, which is
        exactly the argmax of the summed score maps. -> ([H, W] int64 over grouping.output_names, grouping)"""
        with timed("label_map"):
            return self._label_map_grouped(branch, names, grouper)

    @torch.inference_mode()
    def _label_map_grouped(
        self, branch: BranchOutput, names: list[str], grouper: Grouper | None
    ) -> tuple[np.ndarray, Grouping]:
        names = _check_names(names)
        needs = grouper is not None and grouper.needs_scores
        self.check_request(*branch.prepared.out, len(names), mask_scores=needs)
        text = self.text_embeddings(names)
        if branch.class_embed is None:
            logits, masks = self.run(branch.prepared.pixels, text)
            logits, masks = logits[0], masks[0]
        else:
            logits = self.model.language.compute_similarity(branch.class_embed[None], text)[0]
            masks = branch.masks
        p = branch.prepared
        probs = class_probabilities(logits)  # [Q, K]
        grouping = self._plan(grouper, names, probs, masks, p)
        ph, pw = upsampling_matrices(tuple(masks.shape[-2:]), p.padded, p.valid, p.out, masks.device)
        labels = label_map_tiled(grouping.sum_columns(probs), masks, ph, pw, self.dtype)  # over [K']
        return grouping.stable(to_host(labels).astype(np.int64)), grouping

    @staticmethod
    def _plan(grouper, names, probs, masks, p: Prepared) -> Grouping:
        """The grouping of the names (identity without a grouper), from the mask-resolution scores."""
        if grouper is None:
            return Grouping.identity(names)
        scores = mask_scores(probs, masks, p.padded, p.valid) if grouper.needs_scores else None
        return grouper.plan(names, scores)

    def start(self, rgbs: list[np.ndarray]) -> list[Future]:
        """Queue the image branch of `rgbs` on the segmenter's worker thread (its own CUDA stream on
        CUDA) and return a Future[BranchOutput] per image; `finish` queues the class scoring."""
        return self._get_worker().submit(self.image_branch, rgbs, len(rgbs))

    def finish(self, branch: Future, names: list[str], grouper: Grouper | None = None) -> Future:
        """Future[Segmented] of `label_map_grouped(branch.result(), names, grouper)`, on the worker
        thread."""

        def run() -> list[Segmented]:
            began, out = time.perf_counter(), branch.result()
            labels, grouping = self.label_map_grouped(out, names, grouper)
            return [Segmented(labels, out.seconds + time.perf_counter() - began, grouping)]

        return self._get_worker().submit(run, 1)[0]

    def _get_worker(self) -> _SegmentWorker:
        if self._worker is None:
            self._worker = _SegmentWorker(self.device if self.plan.segmenter_stream else None)
        return self._worker

    # ---- public API --------------------------------------------------------------------------------
    @torch.inference_mode()
    def scores(self, rgb: np.ndarray, names: list[str]) -> torch.Tensor:
        """[K, H, W] official class scores at the input size (float32)."""
        return self.scores_batch([rgb], names)[0]

    @torch.inference_mode()
    def scores_batch(
        self, rgbs: list[np.ndarray], names: list[str], max_batch: int = 8
    ) -> list[torch.Tensor]:
        """[K, H_i, W_i] official class scores per image (full resolution, float32: (Q + K) x 4 bytes
        per pixel, the reference's cost). Images of the same padded size share a forward pass."""
        names = _check_names(names)
        for rgb in rgbs:
            _check_rgb(rgb)
            self.check_request(*rgb.shape[:2], len(names))
        text = self.text_embeddings(names)
        prepared = [self.preprocess(rgb) for rgb in rgbs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(p.padded, []).append(i)
        results: list[torch.Tensor | None] = [None] * len(rgbs)
        for padded, members in groups.items():
            for start in range(0, len(members), max_batch):
                chunk = members[start : start + max_batch]
                logits, masks = self.run(torch.cat([prepared[i].pixels for i in chunk]), text)
                for j, i in enumerate(chunk):
                    p = prepared[i]
                    results[i] = semantic_map(logits[j].float(), masks[j].float(), padded, p.valid, p.out)
        return results

    @torch.inference_mode()
    def segment_grouped(
        self, rgb: np.ndarray, names: list[str], grouper: Grouper | None = None
    ) -> tuple[np.ndarray, Grouping]:
        """One image with names grouped, on the plan's path: the fast path's `label_map_grouped`, or
        the reference's official [K, H, W] scores summed per group (`grouping.sum_rows`), argmax."""
        names = _check_names(names)
        _check_rgb(rgb)
        if self.fast:
            return self.label_map_grouped(self.image_branch([rgb])[0], names, grouper)
        needs = grouper is not None and grouper.needs_scores
        self.check_request(*rgb.shape[:2], len(names), mask_scores=needs)
        p = self.preprocess(rgb)
        logits, masks = self.run(p.pixels, self.text_embeddings(names))
        logits, masks = logits[0].float(), masks[0].float()
        grouping = self._plan(grouper, names, class_probabilities(logits), masks, p)
        scores = semantic_map(logits, masks, p.padded, p.valid, p.out)  # [K, H, W], official
        labels = to_host(grouping.sum_rows(scores).argmax(0)).astype(np.int64)  # [K', H, W] -> [H, W]
        return grouping.stable(labels), grouping

    def segment(self, rgb: np.ndarray | list[np.ndarray], names: list[str]) -> np.ndarray | list[np.ndarray]:
        """[H, W] int64 label map (index into `names`); a list of images gives a list of maps. The
        fast path batches the image branch and computes the maps in tiles; the reference path takes
        the argmax of the official scores."""
        many = isinstance(rgb, (list, tuple)) or (isinstance(rgb, np.ndarray) and rgb.ndim == 4)
        rgbs = list(rgb) if many else [rgb]
        names = _check_names(names)
        for image in rgbs:
            _check_rgb(image)
            self.check_request(*image.shape[:2], len(names))
        if self.fast:
            maps = [self.label_map(branch, names) for branch in self.image_branch(rgbs)]
        else:
            maps = []
            for image in rgbs:
                with timed("segment"):
                    scores = self.scores(image, names)
                with timed("label_map"):
                    maps.append(to_host(scores.argmax(0)).astype(np.int64))
        return maps if many else maps[0]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()


class _SegmentWorker:
    """One thread that runs the segmenter's queued work in order (on its own CUDA stream on CUDA)."""

    def __init__(self, device: torch.device | None) -> None:
        self.stream = torch.cuda.Stream(device) if device is not None and device.type == "cuda" else None
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="selfseg-segmenter", daemon=True)
        self.thread.start()

    def submit(self, fn, *args) -> list[Future]:
        """Run `fn(*args[:-1])`, which returns a list of `args[-1]` results, one Future per result."""
        *call, n = args
        futures = [Future() for _ in range(n)]
        self.jobs.put((fn, call, futures))
        return futures

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            fn, call, futures = job
            try:
                if self.stream is not None:
                    with torch.cuda.stream(self.stream):
                        results = fn(*call)
                    self.stream.synchronize()
                else:
                    results = fn(*call)
                for future, result in zip(futures, results):
                    future.set_result(result)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)

    def close(self) -> None:
        self.jobs.put(None)


def _check_names(names: list[str]) -> list[str]:
    if isinstance(names, str) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise SelfSegError(
            f"segment: class names must be a non-empty list of non-empty strings, got {names!r}"
        )
    return list(names)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        what = (
            f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        )
        raise SelfSegError(f"segment: expected an RGB image as a [H, W, 3] uint8 array, got a {what}")
    if min(rgb.shape[:2]) < 1:
        raise SelfSegError(f"segment: the image has no pixels (shape {rgb.shape})")


def build_segmenter(
    cfg: SelfSegConfig, device: torch.device | str = "cpu", plan: ExecutionPlan | None = None
) -> XDecoderSegmenter:
    """The segmenter for a SelfSegConfig (`cfg.segmenter`, `cfg.weights`, `cfg.seed`) on `device`,
    implemented as `plan` says (default: the plan of `cfg.engine` on `device`): the fast path runs the
    image branch in the plan's dtype (fp16 on CUDA) with channels_last and, with `compile`, CUDA graphs
    per padded input shape. Text embeddings are always cached per class name."""
    sc = cfg.segmenter
    device = torch.device(device)
    plan = plan or resolve_plan(cfg, device)
    if sc.backend == "tensorrt":
        from selfseg_export.tensorrt_engine import TensorRTSegmenter  # optional runtime; imports this module

        return TensorRTSegmenter.from_config(cfg, device, plan)
    model = build_model(sc.variant, cfg.weights, cfg.seed, sc.checkpoint, sc.official_config).to(device)
    model.language.cfg.impl = plan.text_encoder
    if sc.backend == "onnxruntime":
        from selfseg_export.runtimes import ORTSegmenter  # optional runtime; imports this module

        if not sc.onnx_path:
            raise SelfSegError(
                "--segmenter-backend onnxruntime needs the exported file: "
                "selfseg-fast export xdecoder --onnx FILE, then --set segmenter.onnx_path=FILE"
            )
        return ORTSegmenter(model, sc.onnx_path, sc, plan)
    return XDecoderSegmenter(model.to(plan.segmenter_dtype), sc, plan)
