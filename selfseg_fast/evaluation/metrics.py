"""Segmentation metrics: confusion matrix with an ignore index, per-class IoU, mIoU, and cmIoU.

Conventions (those of cityscapesscripts' pixel-level evaluation, `evalPixelLevelSemanticLabeling.py`):
- ground-truth pixels equal to `ignore_index` are not counted at all;
- a prediction outside 0..C-1 (e.g. -1 "no name", 255, or LOVE's unmapped nouns) is a miss: it adds
  to the false negatives of the ground-truth class and to no class's false positives. The confusion
  matrix therefore has C rows (ground truth) and C+1 columns (the last one: "no class");
- IoU_c = TP / (TP + FP + FN); a class with TP + FP + FN = 0 (absent from ground truth and prediction)
  is NaN and left out of the mean (mIoU = nanmean).

cmIoU (class-agnostic mIoU, paper Sect. 4.1): every ground-truth segment g_i of the dataset takes the
best IoU any predicted segment p_j of its image reaches with it, and cmIoU = (1/N) sum_i IoU_max_i over
all N ground-truth segments of the dataset (`ClusterScore.pooled`, the default). The authors' released
evaluation (maskblip `evaluate_xdecoder.py:74-110`, `compute_best_mean_IoU`) averages per image first
and then over images (`ClusterScore.per_image`); both are reported. A ground-truth segment is a class
present in an image (semantic labels carry no instances); the background class, where the dataset has
one (VOC), and void pixels are not segments, and void pixels are removed from the predicted segments
too (the authors' code skips label 0 only, so VOC's void border label 255 counts as a segment there). A
predicted segment is a cluster of the 32x32 BCC grid (Table 1 "BCC") or the region of one name in the
segmenter's output (Table 1 "Self-Seg", "X-Decoder + BLIP"). A predicted segment may serve several
ground-truth segments (no one-to-one matching); `match_clusters_to_classes` gives the stricter one-to-one
(Hungarian) variant, reported as `cmiou_matched`.

VOC: `mean_iou` over the 21 classes (background a class) and `mean_iou_objects` over the 20 object
classes with background pixels ignored (the PAS-20 protocol of the given-names methods in Table 2).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


# ---- confusion matrix: reference (numpy) and fast (torch, on the inputs' device) ----------------------
def confusion_matrix_reference(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int
) -> np.ndarray:
    """gt, pred: [H, W] integer maps -> [C, C+1] int64 counts (row: ground truth, column: prediction)."""
    gt = np.asarray(gt, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.size} pixels but the prediction {pred.size}")
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    gt, pred = gt[keep], pred[keep]
    pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    counts = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def confusion_matrix(
    gt: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """Same as the reference, computed with torch on the inputs' device (batched [B, H, W] allowed)."""
    gt = torch.as_tensor(gt).long().reshape(-1)
    pred = torch.as_tensor(pred, device=gt.device).long().reshape(-1)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.numel()} pixels but the prediction {pred.numel()}")
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    valid_pred = (pred >= 0) & (pred < num_classes)
    pred = torch.where(valid_pred, pred, torch.full_like(pred, num_classes))
    index = (gt * (num_classes + 1) + pred)[keep]
    counts = torch.bincount(index, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def iou_per_class(conf: np.ndarray | torch.Tensor) -> np.ndarray:
    """[C, C+1] counts -> [C] float64 IoU, NaN where TP + FP + FN = 0."""
    conf = np.asarray(conf.cpu() if isinstance(conf, torch.Tensor) else conf, dtype=np.float64)
    num_classes = conf.shape[0]
    tp = np.diag(conf[:, :num_classes])
    fn = conf.sum(axis=1) - tp  # includes the "no class" column
    fp = conf[:, :num_classes].sum(axis=0) - tp  # only rows with a valid ground truth exist
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def mean_iou(conf: np.ndarray | torch.Tensor) -> float:
    """mIoU over the classes present in ground truth or prediction (NaN if none)."""
    iou = iou_per_class(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


class ConfusionMatrix:
    """Accumulates a dataset's confusion matrix image by image (numpy; small C x C+1 state)."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.counts += confusion_matrix_reference(gt, pred, self.num_classes, self.ignore_index)

    def iou(self) -> np.ndarray:
        return iou_per_class(self.counts)

    def miou(self) -> float:
        return mean_iou(self.counts)


# ---- cmIoU -----------------------------------------------------------------------------------------------
def upsample_grid(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] cluster grid -> [H, W] by nearest neighbour (source index floor(i * h / H), as
    torch.nn.functional.interpolate(mode="nearest"))."""
    grid = np.asarray(grid)
    height, width = size
    rows = (np.arange(height) * grid.shape[0]) // height
    cols = (np.arange(width) * grid.shape[1]) // width
    return grid[rows[:, None], cols[None, :]]


def best_iou_per_segment_reference(
    gt: np.ndarray, clusters: np.ndarray, ignore_index: int, skip_classes: tuple[int, ...] = ()
) -> dict[int, float]:
    """{class present in gt: max IoU over clusters} with boolean masks, one pair at a time."""
    valid = gt != ignore_index
    out = {}
    for c in np.unique(gt[valid]).tolist():
        if c in skip_classes:
            continue
        segment = gt == c
        best = 0.0
        for k in np.unique(clusters[valid]).tolist():
            cluster = (clusters == k) & valid
            best = max(best, float((segment & cluster).sum() / (segment | cluster).sum()))
        out[int(c)] = best
    return out


def best_iou_per_segment(
    gt: np.ndarray, clusters: np.ndarray, ignore_index: int, skip_classes: tuple[int, ...] = ()
) -> dict[int, float]:
    """Same as the reference from one joint histogram (all segment x cluster intersections at once)."""
    gt = np.asarray(gt, dtype=np.int64)
    clusters = np.asarray(clusters, dtype=np.int64)
    if gt.shape != clusters.shape:
        raise ValueError(f"ground truth {gt.shape} and cluster map {clusters.shape} differ in size")
    valid = gt != ignore_index
    class_ids, class_index = np.unique(gt[valid], return_inverse=True)
    cluster_ids, cluster_index = np.unique(clusters[valid], return_inverse=True)
    n_c, n_k = class_ids.size, cluster_ids.size
    if n_c == 0:
        return {}
    inter = np.bincount(class_index * n_k + cluster_index, minlength=n_c * n_k).reshape(n_c, n_k)
    union = inter.sum(1, keepdims=True) + inter.sum(0, keepdims=True) - inter
    best = (inter / np.maximum(union, 1)).max(axis=1)
    return {int(c): float(v) for c, v in zip(class_ids, best) if int(c) not in skip_classes}


class ClusterScore:
    """cmIoU accumulator: each image's best IoU per ground-truth segment, kept per image, so both the
    paper's pooled mean (over all segments of the dataset) and the authors' per-image mean come out."""

    def __init__(self, ignore_index: int, skip_classes: tuple[int, ...] = ()) -> None:
        self.ignore_index = ignore_index
        self.skip_classes = skip_classes
        self.best: list[np.ndarray] = []  # per scored image: [S_i] best IoU of each of its S_i segments

    def update(self, gt: np.ndarray, segments: np.ndarray) -> None:
        """gt: [H, W] class ids; segments: [H, W] predicted segment ids (any integers; -1 is a segment
        too: the pixels no segment claims)."""
        best = best_iou_per_segment(gt, segments, self.ignore_index, self.skip_classes)
        if best:  # an image with no scored segment adds nothing to either mean
            self.best.append(np.fromiter(best.values(), dtype=np.float64))

    @property
    def num_segments(self) -> int:
        return int(sum(b.size for b in self.best))

    def pooled(self) -> float:
        """The paper's cmIoU: mean best IoU over all N ground-truth segments of the dataset."""
        return float(np.concatenate(self.best).mean()) if self.best else float("nan")

    def per_image(self) -> float:
        """The authors' code: mean over images of each image's mean best IoU."""
        return float(np.mean([b.mean() for b in self.best])) if self.best else float("nan")

    def value(self) -> float:
        return self.pooled()


def mean_iou_objects(conf: np.ndarray | torch.Tensor, background: int = 0) -> float:
    """mIoU over the object classes with background pixels ignored (VOC's PAS-20 protocol): the
    background row is dropped (those pixels are not scored) and a prediction of background on an object
    pixel is a miss (a false negative of the object, a false positive of nothing)."""
    conf = np.asarray(conf.cpu() if isinstance(conf, torch.Tensor) else conf, dtype=np.int64)
    n = conf.shape[0]
    objects = [c for c in range(n) if c != background]
    rows = conf[objects]
    misses = rows[:, background] + rows[:, n]
    return mean_iou(np.concatenate([rows[:, objects], misses[:, None]], axis=1))  # [C-1, C]: last "no class"


def match_clusters_to_classes(
    gt: np.ndarray, clusters: np.ndarray, num_classes: int, ignore_index: int
) -> np.ndarray:
    """gt, clusters: [H, W] -> [H, W] int64 class map: each cluster relabelled with the ground-truth class
    it is Hungarian-matched to (max total IoU over the image's classes), -1 where unmatched."""
    gt = np.asarray(gt, dtype=np.int64)
    clusters = np.asarray(clusters, dtype=np.int64)
    if gt.shape != clusters.shape:
        raise ValueError(f"ground truth {gt.shape} and cluster map {clusters.shape} differ in size")
    valid = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
    cluster_index = cluster_index.reshape(clusters.shape)
    class_ids = np.unique(gt[valid])
    out = np.full(gt.shape, -1, dtype=np.int64)
    if class_ids.size == 0:
        return out
    class_index = np.searchsorted(class_ids, gt[valid])
    n_k, n_c = cluster_ids.size, class_ids.size
    inter = np.bincount(cluster_index[valid] * n_c + class_index, minlength=n_k * n_c).reshape(n_k, n_c)
    # Cluster area counts only pixels with a valid ground truth (void pixels are not scored).
    cluster_area = inter.sum(axis=1)
    class_area = np.bincount(class_index, minlength=n_c)
    union = cluster_area[:, None] + class_area[None, :] - inter
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    lut = np.full(n_k, -1, dtype=np.int64)
    hit = iou[rows, cols] > 0  # a zero-overlap assignment is no match
    lut[rows[hit]] = class_ids[cols[hit]]
    out[:] = lut[cluster_index]
    return out
