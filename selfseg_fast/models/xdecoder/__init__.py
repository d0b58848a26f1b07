"""X-Decoder (Focal-T/L) open-vocabulary segmenter in plain PyTorch."""
