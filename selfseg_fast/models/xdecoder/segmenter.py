"""X-Decoder open-vocabulary semantic segmentation: an image and any class names -> a label map.

    rgb [H, W, 3] uint8, names (K)
      -> resize so the short side is `test_short_side` (long side <= `test_max_size`), official pixel
         mean/std on 0-255 RGB, zero-pad to a multiple of 32                 [1, 3, H', W']
      -> FocalNet -> pixel decoder -> decoder (text embeddings of names + "background")
      -> masks upsampled (bicubic, antialiased) to the padded size, cropped, resized (same) to H x W
      -> semantic map = softmax(class logits)[..., :K] contracted with sigmoid(mask logits)  [K, H, W]
      -> argmax                                                              [H, W] int64 in 0..K-1
This is the official `evaluate` + `semantic_inference` with `sem_seg_postprocess_before_inference`.
Text embeddings are cached per class name (`TextEmbedder`): a new noun costs one text-encoder pass.
The vocabulary is an argument of every call; nothing global is patched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfseg_fast.errors import SelfSegError, WeightsError
from selfseg_fast.models.xdecoder.backbone import FocalNet
from selfseg_fast.models.xdecoder.config import XDecoderConfig
from selfseg_fast.models.xdecoder.decoder import XDecoderHead
from selfseg_fast.models.xdecoder.pixel_decoder import PixelDecoder

PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)
SIZE_DIVISIBILITY = 32


class _SemSegHead(nn.Module):
    def __init__(self, cfg: XDecoderConfig) -> None:
        super().__init__()
        self.pixel_decoder = PixelDecoder(cfg.pixel)
        self.predictor = XDecoderHead(cfg.decoder, cfg.language)


class XDecoder(nn.Module):
    """Backbone + pixel decoder + decoder, named as the official model (`backbone.*`, `sem_seg_head.*`)."""

    def __init__(self, cfg: XDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = FocalNet(cfg.backbone)
        self.sem_seg_head = _SemSegHead(cfg)

    @property
    def language(self):
        return self.sem_seg_head.predictor.lang_encoder

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W] normalised (H, W multiples of 32), text [K, P] -> pred_logits [B, Q, K],
        pred_masks [B, Q, H/4, W/4]."""
        features = self.backbone(images)
        mask_features, _, multi_scale = self.sem_seg_head.pixel_decoder(features)
        return self.sem_seg_head.predictor(multi_scale, mask_features, text)


def semantic_map(
    pred_logits: torch.Tensor,  # [Q, K + 1] (the last column: "background")
    pred_masks: torch.Tensor,  # [Q, h, w] mask logits at the padded input size / 4
    padded: tuple[int, int],
    valid: tuple[int, int],
    out: tuple[int, int],
) -> torch.Tensor:  # [K, out_h, out_w] class scores
    """The official semantic inference for one image (masks post-processed before the contraction)."""
    masks = F.interpolate(pred_masks[None], size=padded, mode="bicubic", align_corners=False, antialias=True)
    masks = masks[:, :, : valid[0], : valid[1]]
    masks = F.interpolate(masks, size=out, mode="bicubic", align_corners=False, antialias=True)[0]
    probs = F.softmax(pred_logits, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs.to(masks.dtype), masks.sigmoid())


class XDecoderSegmenter:
    """`segment(rgb, names) -> [H, W] int64`: the model, the cached text embedder and the test transform.
    `scores` is the logits variant ([K, H, W] class scores); `*_batch` / a list of images batches them."""

    def __init__(
        self,
        model: XDecoder,
        *,
        test_short_side: int = 640,
        test_max_size: int = 2560,
        dtype: torch.dtype = torch.float32,
        tokenizer=None,
        compile: bool = False,
    ) -> None:
        from selfseg_fast.models.xdecoder.text_embeddings import TextEmbedder

        self.model = model.eval()
        # torch.compile with dynamic shapes: image sizes and class counts vary per call.
        self.forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.device = next(model.parameters()).device
        self.dtype = dtype
        self.short_side, self.max_size = test_short_side, test_max_size
        self.text = TextEmbedder(model.language, tokenizer)
        self.mean = torch.tensor(PIXEL_MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(PIXEL_STD, device=self.device).view(3, 1, 1)

    def test_size(self, h: int, w: int) -> tuple[int, int]:
        """detectron2's ResizeShortestEdge at test time: short side -> `short_side`, long side capped."""
        scale = self.short_side / min(h, w)
        if max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def preprocess(self, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """[H, W, 3] uint8 -> padded normalised [1, 3, H', W'] and the resized (unpadded) size."""
        from PIL import Image

        h, w = self.test_size(*rgb.shape[:2])
        resized = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        x = torch.from_numpy(resized.copy()).to(self.device).permute(2, 0, 1).float()
        x = (x - self.mean) / self.std
        ph, pw = (
            -(-h // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
            -(-w // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY,
        )
        x = F.pad(x, (0, pw - w, 0, ph - h))
        return x[None].to(self.dtype), (h, w)

    def text_embeddings(self, names: list[str]) -> torch.Tensor:
        """[K + 1, P]: the names and the official trailing "background", cached per name."""
        return self.text([*names, "background"]).to(self.dtype)

    def run(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image branch: x [B, 3, H', W'], text [K + 1, P] -> (pred_logits [B, Q, K + 1],
        pred_masks [B, Q, H'/4, W'/4]). Other runtimes (ONNX Runtime, TensorRT) override only this."""
        out = self.forward(x, text)
        return out["pred_logits"], out["pred_masks"]

    @torch.inference_mode()
    def scores(self, rgb: np.ndarray, names: list[str]) -> torch.Tensor:
        """[K, H, W] class scores at the input size."""
        return self.scores_batch([rgb], names)[0]

    @torch.inference_mode()
    def scores_batch(
        self, rgbs: list[np.ndarray], names: list[str], max_batch: int = 8
    ) -> list[torch.Tensor]:
        """[K, H_i, W_i] class scores per image. Images whose padded test size is the same run as one
        batch (up to `max_batch`); no image is padded beyond its own size, so each result equals the
        single-image one."""
        names = _check_names(names)
        for rgb in rgbs:
            _check_rgb(rgb)
        text = self.text_embeddings(names)
        prepared = [self.preprocess(rgb) for rgb in rgbs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (x, _) in enumerate(prepared):
            groups.setdefault(tuple(x.shape[-2:]), []).append(i)
        results: list[torch.Tensor | None] = [None] * len(rgbs)
        for padded, members in groups.items():
            for start in range(0, len(members), max_batch):
                chunk = members[start : start + max_batch]
                logits, masks = self.run(torch.cat([prepared[i][0] for i in chunk]), text)
                for j, i in enumerate(chunk):
                    results[i] = semantic_map(
                        logits[j].float(), masks[j].float(), padded, prepared[i][1], rgbs[i].shape[:2]
                    )
        return results

    def segment(self, rgb: np.ndarray | list[np.ndarray], names: list[str]) -> np.ndarray | list[np.ndarray]:
        """[H, W] int64 label map (index into `names`); a list of images gives a list of maps."""
        if isinstance(rgb, (list, tuple)) or (isinstance(rgb, np.ndarray) and rgb.ndim == 4):
            return [s.argmax(0).cpu().numpy().astype(np.int64) for s in self.scores_batch(list(rgb), names)]
        return self.scores(rgb, names).argmax(0).cpu().numpy().astype(np.int64)


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


def build_model(
    variant: str, weights: str, seed: int, checkpoint: str | None, official_config: str | None = None
) -> XDecoder:
    """The model for --weights pretrained (official checkpoint) | random (full size) | random-tiny.
    `official_config` (an official yaml) sets the sizes instead of `variant`. The checkpoint and config
    are read before the model is built, so a missing file fails at once."""
    from selfseg_fast.models.xdecoder.checkpoint import (
        DEFAULT_CHECKPOINT,
        load_official_weights,
        read_checkpoint,
        resolve_source,
    )

    state = None
    if weights == "pretrained":
        try:
            state = read_checkpoint(checkpoint or DEFAULT_CHECKPOINT[variant])
        except WeightsError as exc:
            official = resolve_source(DEFAULT_CHECKPOINT[variant])
            fix = (
                f"download {official} and pass --checkpoint PATH"
                if checkpoint is None or resolve_source(checkpoint) == official
                else f"pass --checkpoint with an official X-Decoder {variant} file (e.g. {official})"
            )
            raise WeightsError(
                f"X-Decoder {variant} weights unavailable ({exc}); {fix} "
                "(or --set segmenter.checkpoint=PATH), or run with --weights random or --weights random-tiny"
            ) from None
    if weights == "random-tiny":
        cfg = XDecoderConfig.tiny()
    elif official_config:
        cfg = XDecoderConfig.from_official_yaml(official_config)
    else:
        cfg = XDecoderConfig.for_variant(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = XDecoder(cfg)
        if state is None:
            _random_init(model)
    if state is not None:
        load_official_weights(model, state)
    return model.eval()


def _random_init(model: nn.Module) -> None:
    """Seeded weights with unit-scale activations (the official init leaves layerscale at 1e-4 and
    the projections tiny, which makes a random model's output nearly constant)."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, std=(1.0 / p[0].numel()) ** 0.5)
        elif "gamma" in name:
            nn.init.constant_(p, 0.5)
        elif name.endswith("logit_scale"):
            nn.init.constant_(p, 2.0)


def build_segmenter(cfg, device: torch.device | str = "cpu") -> XDecoderSegmenter:
    """The segmenter for a SelfSegConfig (`cfg.segmenter`, `cfg.weights`, `cfg.seed`) on `device`.

    Fast engine on CUDA: the image branch in `cfg.dtype` (fp16 by default) and, with `cfg.compile`,
    torch.compile (dynamic shapes). Text embeddings are always cached per class name."""
    sc = cfg.segmenter
    device = torch.device(device)
    if sc.backend == "tensorrt":
        from selfseg_export.tensorrt_engine import TensorRTSegmenter

        return TensorRTSegmenter.from_config(cfg, device)
    model = build_model(sc.variant, cfg.weights, cfg.seed, sc.checkpoint, sc.official_config).to(device)
    if sc.backend == "onnxruntime":
        from selfseg_export.runtimes import ORTSegmenter

        if not sc.onnx_path:
            raise SelfSegError(
                "--segmenter-backend onnxruntime needs the exported file: "
                "selfseg-fast export xdecoder --onnx FILE, then --set segmenter.onnx_path=FILE"
            )
        return ORTSegmenter(
            model, sc.onnx_path, test_short_side=sc.test_short_side, test_max_size=sc.test_max_size
        )
    half = device.type == "cuda" and cfg.dtype in ("float16", "bfloat16") and cfg.engine == "fast"
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype] if half else torch.float32
    if half:
        model = model.to(dtype)
    return XDecoderSegmenter(
        model,
        test_short_side=sc.test_short_side,
        test_max_size=sc.test_max_size,
        dtype=dtype,
        compile=cfg.compile and cfg.engine == "fast",
    )
