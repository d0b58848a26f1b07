"""Evaluation datasets behind one interface (`Dataset`, `Sample`); `open_dataset(name, root)` picks one."""

from __future__ import annotations

from pathlib import Path

from selfseg_fast.evaluation.datasets.base import Dataset, DatasetError, Sample, SampleError

DATASET_NAMES = ("voc", "ade20k", "cityscapes", "synthetic")


def open_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """The reader for `name` on `root` (synthetic: written to a cache folder when `root` is None)."""
    if name == "synthetic":
        from selfseg_fast.evaluation.datasets.synthetic import SyntheticDataset

        return SyntheticDataset(root)
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    if root is None:
        raise DatasetError(f"--root is required for --dataset {name} (the folder of the official release)")
    if name == "voc":
        from selfseg_fast.evaluation.datasets.voc import VOCDataset

        return VOCDataset(root)
    if name == "cityscapes":
        from selfseg_fast.evaluation.datasets.cityscapes import CityscapesDataset

        return CityscapesDataset(root)
    from selfseg_fast.evaluation.datasets.ade20k import ADE20KFullDataset

    return ADE20KFullDataset(root)


__all__ = ["DATASET_NAMES", "Dataset", "DatasetError", "Sample", "SampleError", "open_dataset"]
