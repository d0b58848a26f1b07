"""Export of the segmenter to ONNX and TensorRT, importable as selfseg_export."""
