"""X-Decoder's image branch on other runtimes, behind the same `segment(rgb, names)` API.

`ORTSegmenter` runs the exported ONNX graph with ONNX Runtime (CUDA provider where available, else
CPU); the text encoder (cached per class name), preprocessing and semantic post-processing stay the
PyTorch ones of `XDecoderSegmenter`, so both backends compute the same function (tested).
"""

from __future__ import annotations

import torch

from selfseg_fast.errors import SelfSegError
from selfseg_fast.models.xdecoder.segmenter import XDecoderSegmenter


class ORTSegmenter(XDecoderSegmenter):
    """XDecoderSegmenter whose backbone/pixel decoder/decoder run in an ONNX Runtime session (the
    exported graph takes the text with the pixels, so the image branch runs when the names are known)."""

    needs_text_with_pixels = True

    def __init__(self, model, onnx_path: str, *args, **kwargs) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise SelfSegError(
                "--segmenter-backend onnxruntime needs onnxruntime: pip install onnxruntime"
            ) from exc
        super().__init__(model, *args, **kwargs)
        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
        ]
        try:
            self.session = ort.InferenceSession(str(onnx_path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - any load failure is a bad file
            raise SelfSegError(
                f"cannot load the ONNX file ({exc}); "
                "write it with `selfseg-fast export xdecoder --onnx FILE`",
                path=str(onnx_path),
            ) from None

    def run(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, H', W'], text [K + 1, P] -> (pred_logits, pred_masks) from the ONNX Runtime session."""
        logits, masks = self.session.run(
            ["pred_logits", "pred_masks"],
            {"images": x.float().cpu().numpy(), "text": text.float().cpu().numpy()},
        )
        return torch.from_numpy(logits).to(self.device), torch.from_numpy(masks).to(self.device)
