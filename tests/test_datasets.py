"""Dataset readers on files written in each official layout; broken pairs are skipped by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from selfseg_fast.evaluation.datasets import DatasetError, open_dataset
from selfseg_fast.evaluation.datasets.ade20k import ADE20KFullDataset
from selfseg_fast.evaluation.datasets.cityscapes import (
    CITYSCAPES_CLASSES,
    LABEL_ID_TO_TRAIN_ID,
    CityscapesDataset,
    label_id_lut,
)
from selfseg_fast.evaluation.datasets.synthetic import write_synthetic_cityscapes
from selfseg_fast.evaluation.datasets.voc import VOCDataset


def test_cityscapes_label_table_entries():
    lut = label_id_lut()
    # Spot checks against the official Cityscapes definition (labels.py: id -> trainId).
    assert lut[7] == 0 and lut[8] == 1 and lut[11] == 2  # road, sidewalk, building
    assert lut[23] == 10 and lut[24] == 11 and lut[26] == 13  # sky, person, car
    assert lut[31] == 16 and lut[33] == 18  # train, bicycle
    for ignored in (0, 1, 3, 6, 9, 10, 14, 15, 16, 18, 29, 30):  # void, parking, rail track, caravan...
        assert lut[ignored] == 255
    assert sorted(LABEL_ID_TO_TRAIN_ID.values()) == list(range(19)) and len(CITYSCAPES_CLASSES) == 19


def test_synthetic_reads_back_with_cityscapes_reader(tmp_path):
    root = write_synthetic_cityscapes(tmp_path, num_images=3, size=(40, 80), seed=1)
    ds = open_dataset("synthetic", root)
    assert ds.name == "synthetic" and len(ds) == 3 and ds.ignore_index == 255
    samples = list(ds)
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    raw = np.asarray(Image.open(ds.entries[0].label_path), dtype=np.int64)
    np.testing.assert_array_equal(samples[0].label, label_id_lut()[raw])
    assert samples[0].label.dtype == np.int64 and samples[0].label.shape == (40, 80)
    assert {0, 2, 10, 13, 255} <= set(np.unique(samples[0].label).tolist())  # road, building, sky, car, void
    # Image regions follow the label: the mean colour of the car differs from the road's.
    image = np.asarray(Image.open(samples[0].image_path), dtype=np.float64)
    car, road = samples[0].label == 13, samples[0].label == 0
    assert np.abs(image[car].mean(0) - image[road].mean(0)).max() > 50


def test_broken_pairs_are_skipped_by_name(tmp_path, capsys):
    root = write_synthetic_cityscapes(tmp_path, num_images=4, size=(32, 64), seed=2)
    ds = CityscapesDataset(root)
    ds.entries[1].label_path.unlink()  # missing label
    ds.entries[2].image_path.write_bytes(b"not a png")  # unreadable image
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(ds.entries[3].label_path)  # size mismatch
    samples = list(ds)
    assert [s.id for s in samples] == [ds.entries[0].id]
    err = capsys.readouterr().err
    for entry in ds.entries[1:]:
        assert f"skipped {entry.id}" in err
    assert "label file is missing" in err and "unreadable image" in err and "10x10" in err
    assert len(ds.skipped) == 3


def test_voc_reader(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2007_000042\n")
    rng = np.random.default_rng(0)
    labels = {}
    for i in ("2007_000033", "2007_000042"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{i}.jpg"
        )
        label = rng.integers(0, 21, (20, 30)).astype(np.uint8)
        label[0] = 255
        palette = Image.fromarray(label, mode="P")
        palette.putpalette(list(rng.integers(0, 255, 768, dtype=np.uint8)))  # colours do not matter
        palette.save(root / "SegmentationClass" / f"{i}.png")
        labels[i] = label
    ds = VOCDataset(tmp_path)  # finds VOCdevkit/VOC2012
    assert len(ds.class_names) == 21 and ds.class_names[0] == "background" and ds.class_names[15] == "person"
    for sample in ds:
        np.testing.assert_array_equal(sample.label, labels[sample.id].astype(np.int64))


def test_ade20k_full_reader(tmp_path):
    ade = tmp_path / "ADE20K_2021_17_01"
    (ade / "images_detectron2" / "validation").mkdir(parents=True)
    (ade / "annotations_detectron2" / "validation").mkdir(parents=True)
    names = [{"name": f"thing{i}, alias{i}", "id": 1000 + i, "trainId": i} for i in range(847)]
    (tmp_path / "ade20k_full_classes.json").write_text(json.dumps(names[::-1]))  # order from trainId
    rng = np.random.default_rng(0)
    label = rng.integers(0, 847, (24, 32)).astype(np.uint16)
    label[:2] = 65535
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
        ade / "images_detectron2" / "validation" / "ADE_val_00000001.jpg"
    )
    Image.fromarray(label).save(ade / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif")
    ds = open_dataset("ade20k", tmp_path)
    assert isinstance(ds, ADE20KFullDataset) and ds.ignore_index == 65535
    assert len(ds.class_names) == 847 and ds.class_names[5] == "thing5"
    assert ds.class_synonyms[5] == ["thing5", "alias5"]
    (sample,) = list(ds)
    np.testing.assert_array_equal(sample.label, label.astype(np.int64))


def test_missing_roots_and_names_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="leftImg8bit"):
        open_dataset("cityscapes", tmp_path)
    with pytest.raises(DatasetError, match="--root is required"):
        open_dataset("voc", None)
    (tmp_path / "ADE20K_2021_17_01" / "images_detectron2" / "validation").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(
        tmp_path / "ADE20K_2021_17_01" / "images_detectron2" / "validation" / "a.jpg"
    )
    with pytest.raises(DatasetError, match="ade20k_full_classes") as info:
        open_dataset("ade20k", tmp_path)
    assert "\n" not in str(info.value)
