"""ONNX export of X-Decoder's image branch: ONNX Runtime equals PyTorch on dynamic shapes, and the
onnxruntime segmenter backend equals the torch one. TensorRT is not installable here (see README)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from selfseg_fast.cli import main  # noqa: E402
from selfseg_fast.config import SelfSegConfig  # noqa: E402
from selfseg_fast.errors import SelfSegError  # noqa: E402
from selfseg_fast.models.xdecoder.segmenter import build_segmenter  # noqa: E402


@pytest.mark.slow
def test_export_command_and_onnxruntime_backend(tmp_path, capsys):
    onnx_file = tmp_path / "xdecoder.onnx"
    assert main(["export", "xdecoder", "--onnx", str(onnx_file), "--variant", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "[torch.onnx]" not in out  # the exporter's step lines are shown only with -v
    diff = float(out.split("max abs difference ")[1].split()[0])
    assert diff < 1e-3  # checked over (B, H, W, K) = (1, 96, 128, 4), (2, 64, 96, 7), (3, 160, 64, 1)
    proto = onnx.load(str(onnx_file))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    axes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.input, *proto.graph.output]
    }
    q, p = 11, 32  # the tiny config's queries and text projection width
    assert axes == {
        "images": ["batch", 3, "height", "width"],
        "text": ["classes", p],
        "pred_logits": ["batch", q, "classes"],
        "pred_masks": ["batch", q, "mask_height", "mask_width"],
    }
    cfg = SelfSegConfig.from_preset("voc").with_overrides(
        {"weights": "random-tiny", "segmenter.test_short_side": 96}
    )
    torch_seg = build_segmenter(cfg, "cpu")
    ort_seg = build_segmenter(
        cfg.with_overrides({"segmenter.backend": "onnxruntime", "segmenter.onnx_path": str(onnx_file)}), "cpu"
    )
    rgb = np.random.default_rng(1).integers(0, 255, (75, 130, 3), dtype=np.uint8)
    names = ["road", "car", "sky", "tree", "person"]
    a, b = torch_seg.scores(rgb, names), ort_seg.scores(rgb, names)
    assert float((a - b).abs().max()) < 1e-4


def test_tensorrt_backend_missing_is_one_line():
    cfg = SelfSegConfig().with_overrides({"weights": "random-tiny", "segmenter.backend": "tensorrt"})
    with pytest.raises(SelfSegError) as info:
        build_segmenter(cfg, "cpu")
    assert "\n" not in str(info.value)
