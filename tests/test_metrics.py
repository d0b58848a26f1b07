"""Metrics: confusion-matrix parity (numpy vs torch), IoU against an independent per-class count,
mIoU against cityscapesscripts' own evaluator (also reading our official-format files itself), VOC's
20- and 21-class mIoU, cmIoU pooled (paper) and per image (authors) by hand, matching by brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from selfseg_fast.evaluation.datasets.cityscapes import CityscapesDataset, train_id_to_label_id
from selfseg_fast.evaluation.datasets.synthetic import write_synthetic_cityscapes
from selfseg_fast.evaluation.metrics import (
    ClusterScore,
    ConfusionMatrix,
    best_iou_per_segment,
    best_iou_per_segment_reference,
    confusion_matrix,
    confusion_matrix_reference,
    iou_per_class,
    match_clusters_to_classes,
    mean_iou,
    mean_iou_objects,
    upsample_grid,
)

IGNORE = 255


def random_maps(rng: np.random.Generator, shape=(37, 53), num_classes=7):
    gt = rng.integers(0, num_classes, size=shape)
    gt[rng.random(shape) < 0.1] = IGNORE
    pred = rng.integers(-1, num_classes + 2, size=shape)  # includes -1 and out-of-range ids
    pred[rng.random(shape) < 0.05] = IGNORE
    return gt, pred


def independent_iou(gt, pred, num_classes):
    """Per-class IoU counted with boolean masks, as cityscapesscripts defines TP/FP/FN."""
    valid = gt != IGNORE
    out = []
    for c in range(num_classes):
        tp = np.sum((gt == c) & (pred == c))
        fn = np.sum((gt == c) & (pred != c))
        fp = np.sum(valid & (gt != c) & (pred == c))
        out.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_torch_matches_numpy_exactly(seed):
    gt, pred = random_maps(np.random.default_rng(seed))
    ref = confusion_matrix_reference(gt, pred, 7, IGNORE)
    fast = confusion_matrix(torch.from_numpy(gt), torch.from_numpy(pred), 7, IGNORE)
    np.testing.assert_array_equal(fast.numpy(), ref)  # exact: integer counts
    assert ref.sum() == np.sum(gt != IGNORE)


@pytest.mark.parametrize("seed", [3, 4])
def test_iou_matches_independent_count(seed):
    rng = np.random.default_rng(seed)
    gt, pred = random_maps(rng, num_classes=9)
    gt[gt == 4] = IGNORE  # class 4 absent from the ground truth ...
    pred[pred == 4] = 0  # ... and from the prediction -> NaN, left out of the mean
    iou = iou_per_class(confusion_matrix_reference(gt, pred, 9, IGNORE))
    expected = independent_iou(gt, pred, 9)
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(iou[4])
    assert mean_iou(confusion_matrix_reference(gt, pred, 9, IGNORE)) == pytest.approx(
        np.nanmean(expected), abs=1e-12
    )


def test_accumulated_matrix_equals_one_shot():
    rng = np.random.default_rng(5)
    acc = ConfusionMatrix(7, IGNORE)
    gts, preds = zip(*(random_maps(rng) for _ in range(3)))
    for gt, pred in zip(gts, preds):
        acc.update(gt, pred)
    one = confusion_matrix_reference(np.stack(gts), np.stack(preds), 7, IGNORE)
    np.testing.assert_array_equal(acc.counts, one)


def test_miou_matches_cityscapesscripts(tmp_path):
    """Runs cityscapesscripts' evaluator on label-id PNGs and ours on the same predictions (train ids)."""
    cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    root = write_synthetic_cityscapes(tmp_path / "cs", num_images=3, size=(48, 96), seed=11)
    dataset = CityscapesDataset(root)
    rng = np.random.default_rng(12)
    to_label_id = train_id_to_label_id()
    ours = ConfusionMatrix(19, IGNORE)
    pred_files, gt_files = [], []
    for index, entry in enumerate(dataset.entries):
        sample = dataset.load(index)
        pred = sample.label.copy()
        pred[pred == IGNORE] = 0
        noise = rng.random(pred.shape) < 0.3
        pred[noise] = rng.integers(-1, 19, size=int(noise.sum()))  # -1: "no class"
        ours.update(sample.label, pred)
        label_ids = np.where(pred >= 0, to_label_id[np.clip(pred, 0, 18)], 0).astype(np.uint8)
        path = tmp_path / f"{sample.id}_pred.png"
        Image.fromarray(label_ids).save(path)
        pred_files.append(str(path))
        gt_files.append(str(entry.label_path))
    args = cs_eval.args
    args.evalInstLevelScore = False
    args.quiet = True
    args.JSONOutput = False
    result = cs_eval.evaluateImgLists(pred_files, gt_files, args)
    assert ours.miou() == pytest.approx(result["averageScoreClasses"], abs=1e-9)


def brute_force_match(gt, clusters, num_classes):
    """Best one-to-one cluster->class assignment by trying every permutation (small cases only)."""
    valid = gt != IGNORE
    ks, cs = np.unique(clusters), np.unique(gt[valid])

    def iou(k, c):
        a, b = (clusters == k) & valid, gt == c
        return (a & b).sum() / max((a | b).sum(), 1)

    best, best_map = -1.0, None
    for perm in itertools.permutations(range(max(len(ks), len(cs))), len(ks)):
        pairs = [(k, cs[j]) for k, j in zip(ks, perm) if j < len(cs)]
        score = sum(iou(k, c) for k, c in pairs)
        if score > best + 1e-12:
            best, best_map = score, dict(pairs)
    return best, best_map


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cluster_matching_is_optimal(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, size=(6, 8)).repeat(3, 0).repeat(3, 1)
    gt[rng.random(gt.shape) < 0.05] = IGNORE
    clusters = rng.integers(0, 5, size=(6, 8)).repeat(3, 0).repeat(3, 1) * 3 + 10  # arbitrary ids
    matched = match_clusters_to_classes(gt, clusters, 4, IGNORE)
    best, _ = brute_force_match(gt, clusters, 4)
    valid = gt != IGNORE
    got = 0.0
    for k in np.unique(clusters):
        c = matched[clusters == k][0]
        if c >= 0:
            a, b = (clusters == k) & valid, gt == c
            got += (a & b).sum() / (a | b).sum()
    assert got == pytest.approx(best, abs=1e-9)


def test_cmiou_is_one_for_a_relabelled_ground_truth():
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 5, size=(20, 30))
    clusters = (gt * 7 + 3) % 11  # a relabelling: same segments, other ids
    acc = ConfusionMatrix(5, IGNORE)
    acc.update(gt, match_clusters_to_classes(gt, clusters, 5, IGNORE))
    assert acc.miou() == pytest.approx(1.0)


@pytest.mark.parametrize("size", [(64, 64), (50, 77), (128, 96)])
def test_upsample_grid_matches_torch_nearest(size):
    grid = torch.randint(0, 8, (32, 32))
    ref = torch.nn.functional.interpolate(grid[None, None].float(), size=size, mode="nearest")[0, 0].long()
    np.testing.assert_array_equal(upsample_grid(grid.numpy(), size), ref.numpy())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_segment_iou_fast_matches_reference(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 6, size=(12, 16)).repeat(2, 0).repeat(2, 1)
    gt[rng.random(gt.shape) < 0.1] = IGNORE
    clusters = rng.integers(0, 4, size=(6, 8)).repeat(4, 0).repeat(4, 1) * 5
    fast = best_iou_per_segment(gt, clusters, IGNORE, skip_classes=(0,))
    ref = best_iou_per_segment_reference(gt, clusters, IGNORE, skip_classes=(0,))
    assert fast.keys() == ref.keys() and 0 not in fast
    for c in ref:
        assert fast[c] == pytest.approx(ref[c], abs=1e-12)


def test_cmiou_pooled_and_per_image_by_hand():
    """Two images; the background class (0) and void are not scored; a segment may serve two GT segments.
    Pooled (paper): mean over all 3 GT segments; per image (authors): mean of the two image means."""
    gt1 = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, IGNORE, IGNORE]])
    cl1 = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [5, 5, 7, 7]])  # one cluster over classes 1 and 2
    gt2 = np.array([[3, 3, 3, 0]])
    cl2 = np.array([[1, 1, 2, 2]])
    score = ClusterScore(IGNORE, skip_classes=(0,))
    score.update(gt1, cl1)
    score.update(gt2, cl2)
    # image 1: class 1 IoU 4/10 (cluster 5 covers 10 valid pixels), class 2 IoU 4/10
    # image 2: class 3 best IoU 2/3 (cluster 1)
    assert score.num_segments == 3
    assert score.pooled() == pytest.approx((0.4 + 0.4 + 2 / 3) / 3, abs=1e-12)
    assert score.per_image() == pytest.approx((0.4 + 2 / 3) / 2, abs=1e-12)
    assert score.value() == score.pooled()
    empty = ClusterScore(IGNORE, skip_classes=(0,))
    empty.update(np.zeros((2, 2), int), np.zeros((2, 2), int))  # background only: nothing to score
    assert empty.num_segments == 0 and np.isnan(empty.pooled()) and np.isnan(empty.per_image())


def test_voc_20_and_21_class_miou_by_hand():
    """21 classes: background is a class. 20 classes (PAS-20): background pixels are not scored and a
    background prediction on an object pixel is a miss."""
    gt = np.array([[0, 0, 1, 1, 2, 2]])
    pred = np.array([[1, 0, 1, 0, 2, -1]])
    conf = confusion_matrix_reference(gt, pred, 3, IGNORE)
    # 21-style: bg IoU 1/3 (tp 1, fn 1 [pred 1], fp 1), class 1: tp 1, fp 1, fn 1 -> 1/3, class 2: 1/2
    assert mean_iou(conf) == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)
    # 20-style: class 1: tp 1, fn 1 (predicted bg), fp 0 (the bg pixel is not scored) -> 1/2; class 2: 1/2
    assert mean_iou_objects(conf, background=0) == pytest.approx(0.5)


def test_official_cityscapes_files_are_read_back_by_cityscapesscripts(tmp_path):
    """Our official-format writer's files, found by cityscapesscripts' own prediction look-up and scored
    by its evaluator, give our mIoU."""
    cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    from selfseg_fast.evaluation.official import write_official

    root = write_synthetic_cityscapes(tmp_path / "cs", num_images=3, size=(40, 72), seed=5)
    dataset = CityscapesDataset(root)
    rng = np.random.default_rng(6)
    ours = ConfusionMatrix(19, IGNORE)
    gt_files = []
    for index, entry in enumerate(dataset.entries):
        sample = dataset.load(index)
        pred = np.where(
            rng.random(sample.label.shape) < 0.3, rng.integers(-1, 19, sample.label.shape), sample.label
        )
        pred[pred == IGNORE] = 2
        ours.update(sample.label, pred)
        write_official(tmp_path / "out", "cityscapes", sample.id, pred)
        gt_files.append(str(entry.label_path))
    args = cs_eval.args
    args.evalInstLevelScore, args.quiet, args.JSONOutput = False, True, False
    args.predictionPath, args.predictionWalk = str(tmp_path / "out" / "official" / "cityscapes"), None
    pred_files = [cs_eval.getPrediction(args, gt) for gt in gt_files]
    assert all("_pred_labelIds.png" in f for f in pred_files)
    result = cs_eval.evaluateImgLists(pred_files, gt_files, args)
    assert ours.miou() == pytest.approx(result["averageScoreClasses"], abs=1e-9)


def test_official_voc_files_are_devkit_palette_pngs(tmp_path):
    from selfseg_fast.evaluation.datasets.voc import voc_palette
    from selfseg_fast.evaluation.official import write_official

    pred = np.array([[0, 1, 15], [20, -1, 7]])
    path = write_official(tmp_path, "voc", "2007_000033", pred)
    assert path.parts[-5:] == ("results", "VOC2012", "Segmentation", "comp6_val_cls", "2007_000033.png")
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), [[0, 1, 15], [20, 0, 7]])  # no class -> background
        palette = image.getpalette()
    # the devkit colours (also the authors' VOC_mapping.json): aeroplane, person, tv monitor
    assert (
        palette[3:6] == [128, 0, 0] and palette[45:48] == [192, 128, 128] and palette[60:63] == [0, 64, 128]
    )
    assert voc_palette()[:6] == [0, 0, 0, 128, 0, 0]
