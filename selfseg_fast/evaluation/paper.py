"""The Self-Seg paper's figures (Tables 1-3), so every bench table shows the paper's number for the same
dataset, mode and number of captioning cycles beside ours.

Which of our numbers compares with which cell:
- Table 1 (cmIoU, class-agnostic, pooled over all ground-truth segments): mode `bcc-only` -> "BLIP-
  CLUSTER-CAPTION", `single-caption` -> "X-DECODER + BLIP", `full` -> "SELF-SEG" (at the paper's cycles:
  VOC 1, ADE20K 10, Cityscapes 20).
- Table 2 (mIoU): `full` -> "SELF-SEG (Ours)", `names-given` -> "X-DECODER" (ground-truth names given).
- Table 3 (mIoU, `full`, by captioning cycles 1/5/10/15/20/25); at the paper's cycles it equals Table 2.
- VOC: the paper evaluates 20 classes (Sect. 4.1) and its Table 2 neighbours are PAS-20 figures
  (background pixels ignored), so its VOC mIoU figures compare with our `miou_objects`, not the
  21-class `miou_all`. Cityscapes: the paper says 20 classes; the official evaluation has 19, which we use.
"""

from __future__ import annotations

PAPER_CYCLES = {"voc": 1, "ade20k": 10, "cityscapes": 20}
TABLE1_CMIOU = {
    "single-caption": {"voc": 38.0, "ade20k": 26.7, "cityscapes": 29.2},
    "bcc-only": {"voc": 16.3, "ade20k": 11.3, "cityscapes": 0.85},
    "full": {"voc": 41.9, "ade20k": 29.2, "cityscapes": 35.8},
}
TABLE2_MIOU = {
    "full": {"voc": 41.6, "ade20k": 6.4, "cityscapes": 41.1},
    "names-given": {"voc": 96.2, "ade20k": 6.4, "cityscapes": 50.8},
}
TABLE3_CYCLES = (1, 5, 10, 15, 20, 25)
TABLE3_MIOU = {
    "voc": dict(zip(TABLE3_CYCLES, (41.6, 37.9, 37.4, 35.6, 35.1, 35.6))),
    "ade20k": dict(zip(TABLE3_CYCLES, (5.1, 5.9, 6.4, 5.9, 6.1, 6.0))),
    "cityscapes": dict(zip(TABLE3_CYCLES, (27.4, 35.9, 39.7, 40.2, 41.1, 41.0))),
}
# Table 3's dataset statistics: mean instances per image, mean classes per image, classes.
TABLE3_STATS = {"voc": (3.5, 3.5, 20), "ade20k": (19.5, 10.5, 847), "cityscapes": (34.3, 17, 20)}


def paper_miou(dataset: str, mode: str, cycles: int | None) -> tuple[float, str] | None:
    """(figure, table cell) of the paper's mIoU for this run, or None where the paper has none."""
    if mode == "names-given":
        value = TABLE2_MIOU["names-given"].get(dataset)
        return None if value is None else (value, "Tab. 2 X-Decoder")
    if mode != "full" or dataset not in TABLE3_MIOU:
        return None
    if cycles == PAPER_CYCLES[dataset]:
        return TABLE2_MIOU["full"][dataset], f"Tab. 2/3 ({cycles} cycles)"
    value = TABLE3_MIOU[dataset].get(cycles)
    return None if value is None else (value, f"Tab. 3 ({cycles} cycles)")


def paper_cmiou(dataset: str, mode: str, cycles: int | None) -> tuple[float, str] | None:
    """(figure, table cell) of the paper's cmIoU (Table 1) for this run, or None."""
    value = TABLE1_CMIOU.get(mode, {}).get(dataset)
    if value is None:
        return None
    if mode == "full" and cycles != PAPER_CYCLES[dataset]:
        return None  # Table 1 is at the paper's cycles only
    row = {"single-caption": "X-Decoder + BLIP", "bcc-only": "BCC", "full": "Self-Seg"}[mode]
    return value, f"Tab. 1 {row}"
