"""Export X-Decoder's image branch to ONNX and check it against PyTorch with ONNX Runtime.

The exported graph is a tensors-only wrapper (`ImageBranch`): backbone, pixel decoder and decoder,
with the class text embeddings as an INPUT, so one engine serves any vocabulary:

    inputs   images [B, 3, H, W] float32 (normalised, H and W multiples of 32), text [K, P] float32
    outputs  pred_logits [B, Q, K], pred_masks [B, Q, H/4, W/4]
    dynamic  B, H, W, K (named axes: batch, height, width, classes; H, W multiples of 32, >= 64)

The text encoder stays in PyTorch (its embeddings are cached per class name anyway), as does the
semantic post-processing (`segmenter.semantic_map`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfseg_fast.errors import SelfSegError

INPUT_NAMES = ["images", "text"]
OUTPUT_NAMES = ["pred_logits", "pred_masks"]
MAX_SIDE, MAX_BATCH, MAX_CLASSES = 4096, 64, 4096  # the exported graph's declared ranges
AXIS_NAMES = {
    "images": ["batch", None, "height", "width"],
    "text": ["classes", None],
    "pred_logits": ["batch", None, "classes"],
    "pred_masks": ["batch", None, "mask_height", "mask_width"],
}


def dynamic_shapes() -> dict[str, dict[int, object]]:
    """Dynamic input axes: batch, classes, and height / width as multiples of 32 from 64 px (the
    backbone's stride; the segmenter pads to it), so torch.export's shape guards hold everywhere."""
    from torch.export import Dim

    side = MAX_SIDE // 32
    return {
        "images": {
            0: Dim("batch", min=1, max=MAX_BATCH),
            2: 32 * Dim("height_div32", min=2, max=side),
            3: 32 * Dim("width_div32", min=2, max=side),
        },
        "text": {0: Dim("classes", min=1, max=MAX_CLASSES)},
    }


def _name_axes(path: Path) -> None:
    """Name the graph's symbolic axes (`AXIS_NAMES`); the exporter writes expressions like '32*s39'."""
    import onnx

    proto = onnx.load(str(path))
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, AXIS_NAMES.get(value.name, [])):
            if name is not None and not dim.HasField("dim_value"):
                dim.dim_param = name
    onnx.save(proto, str(path))


class ImageBranch(nn.Module):
    """(images, text) -> (pred_logits, pred_masks): the part of X-Decoder that sees pixels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images, text)
        return out["pred_logits"], out["pred_masks"]


def example_inputs(model: nn.Module, batch: int = 1, height: int = 96, width: int = 128, classes: int = 4):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=gen)
    text = torch.nn.functional.normalize(
        torch.randn(classes, model.cfg.decoder.proj_dim, generator=gen), dim=-1
    )
    return images, text


def export_onnx(
    model: nn.Module, path: str | Path, *, opset: int = 18, height: int = 96, width: int = 128
) -> Path:
    """Write the ONNX file (torch.export-based exporter, named dynamic axes); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    branch = ImageBranch(model.eval().float().cpu()).eval()
    images, text = example_inputs(model, batch=2, height=height, width=width)  # batch 1 would be specialised
    with torch.no_grad():
        torch.onnx.export(
            branch,
            (images, text),
            str(path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes=dynamic_shapes(),
            opset_version=opset,
            dynamo=True,
        )
    _name_axes(path)
    return path


def check_onnx(
    model: nn.Module, path: str | Path, shapes=((1, 96, 128, 4), (2, 64, 96, 7), (3, 160, 64, 1))
) -> float:
    """Max abs difference between ONNX Runtime and PyTorch outputs over a few (B, H, W, K) shapes."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SelfSegError("checking the export needs onnxruntime: pip install onnxruntime") from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    branch = ImageBranch(model.eval().float().cpu())
    worst = 0.0
    for b, h, w, k in shapes:
        images, text = example_inputs(model, b, h, w, k)
        with torch.no_grad():
            want = branch(images, text)
        got = session.run(OUTPUT_NAMES, {"images": images.numpy(), "text": text.numpy()})
        for g, t in zip(got, want):
            if g.shape != tuple(t.shape):
                raise SelfSegError(
                    f"ONNX output shape {g.shape} differs from PyTorch's {tuple(t.shape)}", path=str(path)
                )
            worst = max(worst, float(np.abs(g - t.numpy()).max()))
    return worst
