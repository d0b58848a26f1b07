"""maskblip's re-segmentation (`segmenter.resegment`, on with `--authors-code maskblip`; not in the paper).

The released Self-Seg code (maxkulicki/maskblip `xdecoder_semseg.py:33-63`, `segment_with_sanity_check`,
called by `evaluate_miou.py:120`) segments once, then drops every name whose share of the image's pixels
is above `resegment_max_share` (0.95: one name swallowed the image) or below `resegment_min_share`
(0.01: a speck), and segments once more with the names left. Reproduced as it behaves:

- shares are those of `torch.bincount` over the label map: a name with no pixels counts (share 0, so
  dropped) only if its index is below the largest index present; names past it are kept;
- both rules apply in the same single pass (no loop);
- if every name would be dropped, the first segmentation is kept (the release would call X-Decoder
  with no names at all: its evaluation skips such an image).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from selfseg_fast.config import SegmenterConfig


def names_to_drop(label_map: np.ndarray, max_share: float, min_share: float) -> list[int]:
    """Indices of the names to drop, from a [H, W] label map of name indices (-1: no name)."""
    values = np.asarray(label_map, dtype=np.int64).ravel()
    counts = np.bincount(values[values >= 0])  # length: largest index present + 1, as torch.bincount
    share = counts / max(values.size, 1)
    return sorted(
        set(np.flatnonzero(share > max_share).tolist()) | set(np.flatnonzero(share < min_share).tolist())
    )


def resegment(
    label_map: np.ndarray,
    names: list[str],
    segment: Callable[[list[str]], np.ndarray],
    cfg: SegmenterConfig,
) -> tuple[np.ndarray, list[str]]:
    """(label map, names it indexes): the first result unless `cfg.resegment` drops some names, then
    `segment(kept_names)` -> [H, W] indices into the kept names."""
    names = list(names)
    if not cfg.resegment or not names:
        return label_map, names
    drop = set(names_to_drop(label_map, cfg.resegment_max_share, cfg.resegment_min_share))
    kept = [name for i, name in enumerate(names) if i not in drop]
    if not drop or not kept:
        return label_map, names
    return segment(kept), kept
