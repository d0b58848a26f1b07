"""TensorRT for X-Decoder's image branch: build an fp16 engine from the exported ONNX file and run it.

NOT EXERCISED on this project's machines: TensorRT's libraries exceed what a lent GPU can carry, so
this path has never run here. It is kept small and standard (TensorRT 10 Python API: explicit-batch
network, ONNX parser, an optimisation profile over batch / height / width / classes, FP16 flag with
fp32 layer norms left to TensorRT's defaults; execution through `execute_async_v3` on torch-allocated
CUDA buffers). The tested GPU path is PyTorch fp16 (`--segmenter-backend torch`), and the ONNX graph it
consumes is tested with ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfseg_fast.errors import SelfSegError
from selfseg_fast.models.xdecoder.segmenter import XDecoderSegmenter, build_model


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise SelfSegError(
            "TensorRT is not installed (pip install tensorrt on a CUDA machine); "
            "use --segmenter-backend torch"
        ) from exc
    return trt


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    fp16: bool = True,
    max_batch: int = 8,
    max_side: int = 1344,
    max_classes: int = 256,
    proj_dim: int = 512,
    workspace_gib: int = 8,
) -> Path:
    """Parse the ONNX file, build a (fp16) engine for the dynamic ranges given, serialise it."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SelfSegError(f"TensorRT could not parse the ONNX file: {errors}", path=str(onnx_path))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, 64, 64), (1, 3, 640, 640), (max_batch, 3, max_side, max_side))
    profile.set_shape("text", (1, proj_dim), (32, proj_dim), (max_classes, proj_dim))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SelfSegError("TensorRT engine build failed (see the TensorRT log above)", path=str(onnx_path))
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


class TensorRTSegmenter(XDecoderSegmenter):
    """XDecoderSegmenter whose image branch runs in a TensorRT engine (text encoder stays in torch)."""

    needs_text_with_pixels = True

    def __init__(self, model, engine_path: str | Path, *args, **kwargs) -> None:
        trt = _tensorrt()
        super().__init__(model, *args, **kwargs)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise SelfSegError("not a TensorRT engine for this TensorRT version", path=str(engine_path))
        self.context = self.engine.create_execution_context()

    @classmethod
    def from_config(cls, cfg, device: torch.device, plan=None) -> TensorRTSegmenter:
        sc = cfg.segmenter
        if not sc.engine_path:
            raise SelfSegError(
                "--segmenter-backend tensorrt needs an engine: "
                "selfseg-fast export xdecoder --onnx F --tensorrt E, then --set segmenter.engine_path=E"
            )
        model = build_model(sc.variant, cfg.weights, cfg.seed, sc.checkpoint, sc.official_config).to(
            device
        )  # text encoder
        return cls(model, sc.engine_path, sc, plan)

    def run(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, H', W'], text [K + 1, P] -> (pred_logits, pred_masks) from the engine (CUDA fp32 I/O)."""
        x, text = x.float().contiguous().cuda(), text.float().contiguous().cuda()
        self.context.set_input_shape("images", tuple(x.shape))
        self.context.set_input_shape("text", tuple(text.shape))
        outputs = {}
        for name in ("pred_logits", "pred_masks"):
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
        for name, tensor in (("images", x), ("text", text), *outputs.items()):
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise SelfSegError("TensorRT execution failed")
        stream.synchronize()
        return outputs["pred_logits"], outputs["pred_masks"]
