"""Instance segmentation scores: detection F1 at an IoU threshold and the split rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.particles.measure import check_labels


@dataclass
class InstanceScores:
    """Scores of predicted instances against true ones.

    Attributes
    ----------
    f1, precision, recall : float
        Detection scores; a true and a predicted instance match when their IoU exceeds the
        threshold (such a match is unique for thresholds >= 0.5).
    split_rate : float
        Share of true instances covered by more than one predicted label, each covering at
        least ``split_share`` of the true instance's voxels.
    n_true, n_pred, n_matched, n_split : int
        Counts behind the scores (instances of at least ``min_size`` voxels).
    """

    f1: float
    precision: float
    recall: float
    split_rate: float
    n_true: int
    n_pred: int
    n_matched: int
    n_split: int


def instance_scores(
    predicted: np.ndarray,
    truth: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    min_size: int = 60,
    split_share: float = 0.1,
) -> InstanceScores:
    """Detection F1 at ``iou_threshold`` and split rate of a predicted labelling.

    Parameters
    ----------
    predicted, truth : numpy.ndarray
        int (Z, Y, X) instance labels, 0 = background.
    iou_threshold : float, optional
        Minimum IoU of a match (>= 0.5 so matches are one-to-one).
    min_size : int, optional
        Instances smaller than this (voxels) are ignored on both sides.
    split_share : float, optional
        Share of a true instance a predicted label must cover to count towards a split.

    Returns
    -------
    InstanceScores
        F1, precision, recall, split rate and counts.
    """
    pred = check_labels(predicted, "predicted").astype(np.int64)
    true = check_labels(truth, "truth").astype(np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"predicted shape {pred.shape} != truth shape {true.shape}")
    if not 0.5 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0.5, 1), got {iou_threshold}")
    pred_sizes = np.bincount(pred.ravel())
    true_sizes = np.bincount(true.ravel())
    pred_ok = pred_sizes >= min_size
    true_ok = true_sizes >= min_size
    pred_ok[0] = true_ok[0] = False
    both = (pred > 0) & (true > 0)
    base = int(pred_sizes.size)
    pairs, overlap = np.unique(true[both] * base + pred[both], return_counts=True)
    t_ids, p_ids = pairs // base, pairs % base
    keep = true_ok[t_ids] & pred_ok[p_ids]
    t_ids, p_ids, overlap = t_ids[keep], p_ids[keep], overlap[keep]
    iou = overlap / (true_sizes[t_ids] + pred_sizes[p_ids] - overlap)
    n_matched = int((iou > iou_threshold).sum())
    n_true, n_pred = int(true_ok.sum()), int(pred_ok.sum())
    covering = overlap >= split_share * true_sizes[t_ids]
    pieces = np.bincount(t_ids[covering], minlength=true_sizes.size)
    n_split = int((pieces[true_ok] > 1).sum())
    precision = n_matched / n_pred if n_pred else 1.0
    recall = n_matched / n_true if n_true else 1.0
    total = n_true + n_pred
    return InstanceScores(
        f1=2.0 * n_matched / total if total else 1.0,
        precision=precision,
        recall=recall,
        split_rate=n_split / n_true if n_true else 0.0,
        n_true=n_true,
        n_pred=n_pred,
        n_matched=n_matched,
        n_split=n_split,
    )


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Binary confusion matrix.

    Parameters
    ----------
    truth, predicted : numpy.ndarray
        (n,) bool or 0/1 true and predicted classes.

    Returns
    -------
    numpy.ndarray
        int64 (2, 2): rows are the true class (0, 1), columns the predicted one, i.e.
        ``[[tn, fp], [fn, tp]]``.
    """
    t = np.asarray(truth).astype(bool).ravel()
    p = np.asarray(predicted).astype(bool).ravel()
    if t.shape != p.shape:
        raise ValueError(f"truth and predicted must have one length, got {t.size} and {p.size}")
    out = np.zeros((2, 2), dtype=np.int64)
    np.add.at(out, (t.astype(int), p.astype(int)), 1)
    return out


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic of a score.

    Parameters
    ----------
    scores : numpy.ndarray
        (n,) classifier scores (higher = more likely positive).
    labels : numpy.ndarray
        (n,) bool or 0/1 true classes; both classes must be present.

    Returns
    -------
    fpr, tpr, thresholds : numpy.ndarray
        False and true positive rates of the rule ``score >= threshold`` for every distinct
        score, from ``(0, 0)`` (threshold +inf) to ``(1, 1)``; the trapezoid area under it
        equals the Mann-Whitney AUC (ties counted half).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have one length, got {s.size} and {y.size}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must hold both classes")
    thresholds = np.unique(s)[::-1]
    order = np.argsort(-s, kind="mergesort")
    sorted_s, sorted_y = s[order], y[order]
    # positives / negatives scoring >= each distinct threshold
    last = np.searchsorted(-sorted_s, -thresholds, side="right")
    tp = np.cumsum(sorted_y)[last - 1]
    fp = np.cumsum(~sorted_y)[last - 1]
    fpr = np.concatenate([[0.0], fp / n_neg])
    tpr = np.concatenate([[0.0], tp / n_pos])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])
