"""X-Decoder's semantic post-processing: class probabilities x mask logits -> a label map.

Official (`semantic_map`, the reference): mask logits [Q, h, w] (h, w = padded input / 4) are resized
(bicubic, antialiased) to the padded input size, cropped to the resized image, resized (same) to the
output size H x W, and contracted with the class probabilities: scores [K, H, W] float32, argmax.
That is (Q + K) x 4 bytes per output pixel: 6 GB for a 12-megapixel image with 100 names.

Tiled (`label_map_tiled`, the fast path): both resizes are linear and separable, so the whole chain
is masks -> Ph @ masks @ Pw^T with two small matrices Ph [H, h] and Pw [W, w] (`upsampling_matrices`,
made by pushing identity matrices through the very same `F.interpolate` calls). The label map is then
computed tile by tile, each tile's scores argmax-ed and dropped, so memory is bounded by the tile
size whatever H, W and K are; with float32 the scores equal the official ones up to rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TILE_BYTES = 64 * 2**20  # working memory of one output tile of the tiled post-processing


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def semantic_map(
    pred_logits: torch.Tensor,  # [Q, K + 1] (the last column: "background")
    pred_masks: torch.Tensor,  # [Q, h, w] mask logits at the padded input size / 4
    padded: tuple[int, int],
    valid: tuple[int, int],
    out: tuple[int, int],
) -> torch.Tensor:  # [K, out_h, out_w] class scores
    """The official semantic inference for one image (masks post-processed before the contraction)."""
    masks = _resize(pred_masks[None], padded)[:, :, : valid[0], : valid[1]]
    masks = _resize(masks, out)[0]
    probs = F.softmax(pred_logits, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs.to(masks.dtype), masks.sigmoid())


def class_probabilities(pred_logits: torch.Tensor) -> torch.Tensor:
    """[Q, K + 1] logits -> [Q, K] softmax probabilities without the "background" column (float32)."""
    return F.softmax(pred_logits.float(), dim=-1)[..., :-1]


def mask_scores(
    probs: torch.Tensor,  # [Q, K] class probabilities
    masks: torch.Tensor,  # [Q, h, w] mask logits at the padded input size / 4
    padded: tuple[int, int],
    valid: tuple[int, int],
) -> torch.Tensor:  # [K, hv, wv] float32
    """Per-name score maps at the mask resolution, cropped to the image (the padding dropped): what the
    mask-overlap consolidation compares. Both paths compute it from the same logits and masks, so
    their merge decisions are the same; (Q + K) x 4 bytes per mask pixel (1/16 of the input's)."""
    h, w = masks.shape[-2:]
    hv = max(1, min(h, -(-valid[0] * h // padded[0])))
    wv = max(1, min(w, -(-valid[1] * w // padded[1])))
    return torch.einsum("qk,qhw->khw", probs.float(), masks[:, :hv, :wv].float().sigmoid())


def upsampling_matrices(
    mask_size: tuple[int, int], padded: tuple[int, int], valid: tuple[int, int], out: tuple[int, int], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ph [H, h], Pw [W, w] (float32, made in float64): resize(crop(resize(m))) == Ph @ m @ Pw^T.

    Made by resizing identity matrices with the same calls: n one-hot rows of 1 x n pixels resized
    along their width. One torch quirk is reproduced on purpose: when a 2-D antialiased bicubic resize
    outputs a single column, torch weights the rows differently (the official code runs into it for
    images one pixel wide), so in that case the row weights come from a resize of the same shape."""

    def along_width(n: int, pad: int, keep: int) -> torch.Tensor:  # [1, n, 1, keep]
        eye = torch.eye(n, device=device, dtype=torch.float64)
        return _resize(eye[None, :, None, :], (1, pad))[..., :keep]

    first_h = along_width(mask_size[0], padded[0], valid[0])
    if out[1] == 1:  # the single-column case: resize [n, keep, 1] -> [n, H, 1] as the 2-D call does
        ph = _resize(first_h.transpose(2, 3), (out[0], 1))[0, :, :, 0].T
    else:
        ph = _resize(first_h, (1, out[0]))[0, :, 0, :].T
    pw = _resize(along_width(mask_size[1], padded[1], valid[1]), (1, out[1]))[0, :, 0, :].T
    return ph.float(), pw.float()


def label_map_tiled(
    probs: torch.Tensor,  # [Q, K] class probabilities
    masks: torch.Tensor,  # [Q, h, w] mask logits
    ph: torch.Tensor,  # [H, h]
    pw: torch.Tensor,  # [W, w]
    dtype: torch.dtype = torch.float32,
    tile_bytes: int = TILE_BYTES,
) -> torch.Tensor:  # [H, W] int32 on the masks' device
    """argmax_k sum_q probs[q, k] * sigmoid(Ph @ masks[q] @ Pw^T), one bounded tile at a time."""
    q, k = probs.shape
    h, w = masks.shape[1:]
    out_h, out_w = ph.shape[0], pw.shape[0]
    elem = torch.finfo(dtype).bits // 8
    tile_px = max(1, tile_bytes // (elem * (2 * q + k)))  # masks, their sigmoid, the scores
    tile_w = max(1, min(out_w, tile_bytes // (elem * q * h), tile_px))  # the column pass [Q, h, tile_w]
    tile_h = max(1, min(out_h, tile_px // tile_w))
    probs_t = probs.to(dtype).T.contiguous()  # [K, Q]
    masks, ph, pw = masks.to(dtype), ph.to(dtype), pw.to(dtype)
    labels = torch.empty(out_h, out_w, dtype=torch.int32, device=masks.device)
    for x0 in range(0, out_w, tile_w):
        cols = masks @ pw[x0 : x0 + tile_w].T  # [Q, h, tw]
        for y0 in range(0, out_h, tile_h):
            tile = (ph[y0 : y0 + tile_h] @ cols).sigmoid_()  # [Q, th, tw]
            scores = probs_t @ tile.flatten(1)  # [K, th * tw]
            labels[y0 : y0 + tile_h, x0 : x0 + tile_w] = scores.argmax(0).view(tile.shape[1:])
    return labels
