"""FLOPs per stage, so a measured time says how far it is from the hardware's limit.

Counted as `torch.utils.flop_counter.FlopCounterMode` counts (a multiply-add = 2 FLOPs; matmuls,
convolutions and attention only; norms, activations, softmax and resizes are not counted). Each
formula is checked against FlopCounterMode on the real module in tests/test_flops.py.

- encode: BLIP ViT (`FastBlipVision`) at each resolution, analytic (`vit_flops`);
- caption: the fast sampler's work (`FastBlipTextDecoder`), analytic per decoding step for R rows
  (`caption_step_flops`) plus the cross-attention keys/values once per image (`caption_start_flops`);
  `caption_image_flops` sums them for one image's clusters x cycles x tokens;
- segment: X-Decoder's image branch, counted by running FlopCounterMode over the full-size model on
  PyTorch's meta device (shapes only, no memory, no arithmetic: a few seconds on a CPU) at the padded
  input size (`xdecoder_flops`); the test checks the meta count against a run on real tensors.

Figures (this module; `python -m selfseg_fast.flops`): ViT-L at 384 + 512 px 1.11 TFLOP per image;
X-Decoder Focal-T at 1024 x 2048 (cityscapes) 2.30 TFLOP, at 512 x 704 (a 500 x 375 VOC image at the
voc preset's test size, padded to 32) 0.39; captioning 8 clusters x 25 tokens at 1 / 10 / 20 cycles
0.10 / 0.61 / 1.18 TFLOP.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class VitShape:
    """A ViT tower's shape (BLIP ViT-L: 1024, 4096, 24 layers, patch 16)."""

    hidden: int = 1024
    intermediate: int = 4096
    layers: int = 24
    patch: int = 16
    channels: int = 3

    @classmethod
    def of(cls, config) -> VitShape:  # a transformers BlipVisionConfig
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.patch_size)


@dataclass(frozen=True)
class TextShape:
    """BLIP's text decoder's shape (BERT-base with cross-attention to 1024-d image tokens)."""

    hidden: int = 768
    intermediate: int = 3072
    layers: int = 12
    vocab: int = 30524
    encoder_hidden: int = 1024

    @classmethod
    def of(cls, config) -> TextShape:  # a transformers BlipTextConfig
        return cls(
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers,
            config.vocab_size,
            config.encoder_hidden_size,
        )


def vit_flops(shape: VitShape, resolution: int, batch: int = 1) -> int:
    """One ViT pass over `batch` square images of `resolution` px (CLS token included)."""
    patches = (resolution // shape.patch) ** 2
    n, c = patches + 1, shape.hidden
    embed = 2 * patches * c * shape.channels * shape.patch**2
    layer = 2 * n * c * 3 * c + 4 * n * n * c + 2 * n * c * c + 4 * n * c * shape.intermediate
    return batch * (embed + shape.layers * layer)


def encode_flops(shape: VitShape = VitShape(), resolutions: tuple[int, ...] = (384, 512)) -> int:
    """The encode stage per image: one pass per resolution."""
    return sum(vit_flops(shape, r) for r in resolutions)


def caption_start_flops(shape: TextShape, images: int, image_tokens: int) -> int:
    """Cross-attention keys and values of every image's tokens, per layer (once per batch)."""
    return shape.layers * 2 * (2 * images * image_tokens * shape.encoder_hidden * shape.hidden)


def caption_step_flops(shape: TextShape, rows: int, slots: int, cache_len: int, image_tokens: int) -> int:
    """One decoding step of `rows` rows: self-attention over the whole cache (`cache_len`, masked),
    cross-attention of `slots` query slots (images x most rows of one image) over every image token
    (masked to the row's cluster), feed-forward, and the LM head."""
    h = shape.hidden
    per_layer = (
        2 * rows * h * 3 * h  # fused q, k, v
        + 4 * rows * cache_len * h  # self-attention scores and values
        + 2 * rows * h * h  # self-attention output
        + 2 * rows * h * h  # cross-attention query
        + 4 * slots * image_tokens * h  # cross-attention scores and values
        + 2 * rows * h * h  # cross-attention output
        + 4 * rows * h * shape.intermediate  # feed-forward
    )
    head = 2 * rows * h * h + 2 * rows * h * shape.vocab  # transform + vocabulary projection
    return shape.layers * per_layer + head


def caption_image_flops(
    shape: TextShape = TextShape(),
    *,
    clusters: int,
    cycles: int,
    tokens: float,
    prefix: int = 1,
    image_tokens: int = 1024,
    max_new_tokens: int = 25,
) -> float:
    """Captioning one image: clusters x cycles rows, `prefix` prompt tokens ([DEC] + prompt) fed,
    `tokens` generated per row (mean), the cache sized for prefix + max_new_tokens."""
    rows = clusters * cycles
    steps = prefix - 1 + tokens
    cache_len = prefix + max_new_tokens
    return caption_start_flops(shape, 1, image_tokens) + steps * caption_step_flops(
        shape, rows, rows, cache_len, image_tokens
    )


@cache
def xdecoder_flops(height: int, width: int, variant: str = "focal-t") -> int:
    """X-Decoder's image branch (backbone, pixel decoder, decoder) for one padded input of
    height x width, counted on the meta device (cached per size)."""
    import torch

    from selfseg_fast.models.xdecoder.config import XDecoderConfig
    from selfseg_fast.models.xdecoder.model import XDecoder

    with torch.device("meta"):
        model = XDecoder(XDecoderConfig.for_variant(variant)).eval()
    return count_flops(model.forward_image, torch.empty(1, 3, height, width, device="meta"))


def count_flops(fn, *args) -> int:
    """FLOPs of `fn(*args)` as FlopCounterMode counts them, plus attention on a CPU, which its table
    lacks (it counts the CUDA flash / memory-efficient kernels and the math path)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    aten = torch.ops.aten  # the CPU kernel, and the composite op as a dispatch mode sees it on a CPU
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}  # keyed by overload packet
    mapping[aten.scaled_dot_product_attention] = cpu_sdpa
    with (
        FlopCounterMode(display=False, custom_mapping=mapping) as counter,
        torch.inference_mode(),
    ):
        fn(*args)
    return counter.get_total_flops()


def main() -> None:
    """Print the per-image figures quoted in the module docstring."""
    print(f"encode, ViT-L 384 + 512 px: {encode_flops() / 1e12:.3f} TFLOP/img")
    for h, w in ((1024, 2048), (512, 683), (640, 853)):
        padded = (-(-h // 32) * 32, -(-w // 32) * 32)
        print(f"segment, X-Decoder Focal-T {h}x{w} (padded {padded}): {xdecoder_flops(*padded) / 1e12:.3f}")
    for cycles in (1, 10, 20):
        f = caption_image_flops(clusters=8, cycles=cycles, tokens=25)
        print(f"caption, 8 clusters x {cycles} cycles x 25 tokens: {f / 1e12:.3f} TFLOP/img")


if __name__ == "__main__":
    main()
