"""Dataset readers on files written in each official layout; broken pairs are skipped by name; the
synthetic set is written atomically and validated; VOC ids cannot escape --root; ADE's 847 packaged names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
from selfseg_fast.evaluation.datasets.synthetic import (
    MANIFEST,
    SyntheticDataset,
    validate_synthetic,
    write_synthetic_cityscapes,
)
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


def _ade_root(tmp_path, label_max=847):
    ade = tmp_path / "ADE20K_2021_17_01"
    (ade / "images_detectron2" / "validation").mkdir(parents=True)
    (ade / "annotations_detectron2" / "validation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    label = rng.integers(0, label_max, (24, 32)).astype(np.uint16)
    label[:2] = 65535
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
        ade / "images_detectron2" / "validation" / "ADE_val_00000001.jpg"
    )
    Image.fromarray(label).save(ade / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif")
    return label


def test_ade20k_full_reader_with_the_packaged_names(tmp_path):
    label = _ade_root(tmp_path)
    ds = open_dataset("ade20k", tmp_path)  # no names file: the 847 names ship with the package
    assert isinstance(ds, ADE20KFullDataset) and ds.ignore_index == 65535
    assert len(ds.class_names) == len(set(ds.class_names)) == 847  # distinct keys
    assert ds.class_names[:3] == ["wall", "building", "sky"] and ds.class_aliases[1] == [
        "building", "edifice", "building, edifice"
    ]  # fmt: skip
    # classes sharing a first name keep distinct keys: their full official names
    assert ds.class_names[188] == "pot" and ds.class_names[130] == "pot, flowerpot"
    assert ds.class_names[114] == "bag" and ds.class_names[191].startswith("bag, traveling bag")
    (sample,) = list(ds)
    np.testing.assert_array_equal(sample.label, label.astype(np.int64))


def test_ade20k_names_file_in_the_root_replaces_the_packaged_one(tmp_path):
    _ade_root(tmp_path, label_max=3)
    names = [{"name": f"thing{i}, alias{i}", "id": 1000 + i, "trainId": i} for i in range(3)]
    (tmp_path / "ade20k_full_classes.json").write_text(json.dumps(names[::-1]))  # order from trainId
    ds = open_dataset("ade20k", tmp_path)
    assert ds.class_names == ["thing0", "thing1", "thing2"] and ds.class_aliases[2][:2] == [
        "thing2",
        "alias2",
    ]
    (tmp_path / "ade20k_full_classes.json").write_text("[1, ")
    with pytest.raises(DatasetError, match="not valid JSON"):
        open_dataset("ade20k", tmp_path)


def test_voc_ids_cannot_leave_the_root(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for bad in ("/abs/path/evil", "../../etc/passwd", "a/b", ".hidden", "x..y", "a\\b"):
        (root / "ImageSets" / "Segmentation" / "val.txt").write_text(f"2007_000033\n{bad}\n")
        with pytest.raises(DatasetError) as info:
            VOCDataset(root)
        assert "line 2" in str(info.value) and "val.txt" in str(info.value) and "\n" not in str(info.value)


# ---- synthetic: atomic and validated ---------------------------------------------------------------
def test_synthetic_write_is_atomic_and_a_partial_set_is_rewritten(tmp_path, monkeypatch):
    import selfseg_fast.evaluation.datasets.synthetic as synthetic

    root = tmp_path / "synth"
    calls = {"n": 0}
    real_save = Image.Image.save

    def dying_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed in the middle of writing
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_cityscapes(root, num_images=4, size=(32, 64))
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert not root.exists() and not list(tmp_path.glob(".synth.tmp-*"))  # nothing half-written is visible
    # A set an older version left half-written (no manifest) is detected and written again.
    (root / "leftImg8bit" / "val" / synthetic.CITY).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
        root / "leftImg8bit" / "val" / synthetic.CITY / "a_leftImg8bit.png"
    )
    assert validate_synthetic(root) == "no complete manifest"
    ds = SyntheticDataset(root)
    assert len(ds) == 4 and validate_synthetic(root) is None and (root / MANIFEST).is_file()
    # A changed file is noticed on the next open and the set is written again.
    ds.entries[0].label_path.write_bytes(b"broken")
    assert "changed" in validate_synthetic(root)
    assert len(SyntheticDataset(root)) == 4 and validate_synthetic(root) is None
    # A folder holding something else is never overwritten.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.txt").write_text("precious")
    with pytest.raises(DatasetError, match="holds no synthetic dataset"):
        SyntheticDataset(other)
    assert (other / "thesis.txt").read_text() == "precious"


def test_synthetic_write_killed_by_sigkill_never_leaves_a_broken_set(tmp_path):
    root = tmp_path / "synth"
    code = (
        "import sys; from selfseg_fast.evaluation.datasets.synthetic import write_synthetic_cityscapes; "
        "write_synthetic_cityscapes(sys.argv[1], num_images=400, size=(64, 128))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".synth.tmp-*/leftImg8bit/val/*/*.png")) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until it is writing images
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not root.exists() or validate_synthetic(root) is None  # untouched, never half-written
    ds = SyntheticDataset(root)
    assert validate_synthetic(root) is None and len(ds) in (4, 400) and len(list(ds)) == len(ds)


def test_missing_roots_and_names_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="leftImg8bit"):
        open_dataset("cityscapes", tmp_path)
    with pytest.raises(DatasetError, match="--root is required"):
        open_dataset("voc", None)
    (tmp_path / "ADE20K_2021_17_01" / "images_detectron2" / "validation").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no .jpg images") as info:
        open_dataset("ade20k", tmp_path)
    assert "\n" not in str(info.value)
