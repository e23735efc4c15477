"""Scores of a crack map and of a particle labelling against labelled truth.

Used by the benchmarks and the acceptance tests on three kinds of sets: held-out seeds of the
training generator, the never-trained generator family (:mod:`synthetic.holdout`) and
the real labelled crops. Every score is NaN when what it divides by is empty (the code does not
know), never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipelines.particles.evaluate import instance_scores


def _share(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


@dataclass
class CrackScores:
    """Crack map against labelled cracks.

    Attributes
    ----------
    iou : float
        IoU of predicted and true crack pixels (NaN when both are empty).
    found : float
        Share of the true crack / void pixels that are predicted (recall).
    inside_particles : float
        Share of the predicted crack pixels that lie inside a true particle envelope.
    false_crack_fraction : float
        Predicted crack pixels outside the true cracks / true particle pixels.
    predicted_share : float
        Predicted crack pixels / true particle pixels.
    """

    iou: float
    found: float
    inside_particles: float
    false_crack_fraction: float
    predicted_share: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for JSON)."""
        return asdict(self)


def crack_scores(
    predicted: np.ndarray,
    true_cracks: np.ndarray,
    true_particles: np.ndarray,
    valid: np.ndarray | None = None,
) -> CrackScores:
    """Score a crack mask.

    Parameters
    ----------
    predicted : numpy.ndarray
        bool / 0-1 predicted crack mask.
    true_cracks : numpy.ndarray
        bool / 0-1 labelled cracks and core voids.
    true_particles : numpy.ndarray
        Labelled particle envelope (bool, or instance labels > 0), cracks included.
    valid : numpy.ndarray, optional
        Pixels to score (e.g. inside the reconstruction circle, outside an ignore region).

    Returns
    -------
    CrackScores
    """
    pred = np.asarray(predicted).astype(bool)
    true = np.asarray(true_cracks).astype(bool)
    envelope = np.asarray(true_particles) > 0
    if not pred.shape == true.shape == envelope.shape:
        raise ValueError(
            f"shapes differ: predicted {pred.shape}, true_cracks {true.shape}, "
            f"true_particles {envelope.shape}"
        )
    if valid is not None:
        keep = np.asarray(valid).astype(bool)
        if keep.shape != pred.shape:
            raise ValueError(f"valid shape {keep.shape} != predicted shape {pred.shape}")
        pred, true, envelope = pred & keep, true & keep, envelope & keep
    n_pred, n_true, n_env = int(pred.sum()), int(true.sum()), int(envelope.sum())
    inter = int((pred & true).sum())
    return CrackScores(
        iou=_share(inter, int((pred | true).sum())),
        found=_share(inter, n_true),
        inside_particles=_share(int((pred & envelope).sum()), n_pred),
        false_crack_fraction=_share(n_pred - inter, n_env),
        predicted_share=_share(n_pred, n_env),
    )


@dataclass
class ParticleScores:
    """A particle labelling against labelled instances.

    Attributes
    ----------
    f1, precision, recall, split_rate : float
        Detection at IoU 0.5 and split rate (:func:`pipelines.particles.evaluate.instance_scores`).
    n_true, n_pred : int
        Instances counted (at least ``min_size`` pixels).
    binder_share : float
        Share of the predicted particle pixels that lie in labelled carbon/binder (NaN when
        no binder is labelled).
    labels_in_binder : int
        Predicted labels of which more than half lies in labelled carbon/binder.
    envelope_iou : float
        IoU of the predicted and the true particle masks.
    """

    f1: float
    precision: float
    recall: float
    split_rate: float
    n_true: int
    n_pred: int
    binder_share: float
    labels_in_binder: int
    envelope_iou: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for JSON)."""
        return asdict(self)


def drop_ignored(labels: np.ndarray, ignore: np.ndarray, share: float = 0.5) -> np.ndarray:
    """Labels without the objects lying mostly (> ``share``) in ``ignore`` (those unlabelled
    regions are not scored)."""
    lab = np.asarray(labels)
    ign = np.asarray(ignore).astype(bool)
    total = np.bincount(lab.ravel())
    inside = np.bincount(lab[ign].ravel(), minlength=total.size)
    drop = inside > share * np.maximum(total, 1)
    drop[0] = False
    return np.where(drop[lab], 0, lab)


def particle_scores(
    predicted: np.ndarray,
    truth: np.ndarray,
    *,
    binder: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    min_size: int = 60,
) -> ParticleScores:
    """Score predicted particle instances.

    Parameters
    ----------
    predicted, truth : numpy.ndarray
        int instance labels (0 = background), same shape.
    binder : numpy.ndarray, optional
        Labelled carbon/binder mask.
    ignore : numpy.ndarray, optional
        Unlabelled region: predicted objects lying mostly there are dropped first.
    min_size : int, optional
        Smaller instances are not counted (both sides).

    Returns
    -------
    ParticleScores
    """
    pred = np.asarray(predicted).astype(np.int64)
    true = np.asarray(truth).astype(np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"predicted shape {pred.shape} != truth shape {true.shape}")
    if ignore is not None:
        pred = drop_ignored(pred, ignore)
    s = instance_scores(pred, true, min_size=min_size)
    binder_share, in_binder = float("nan"), 0
    if binder is not None:
        b = np.asarray(binder).astype(bool)
        n_pred_px = int((pred > 0).sum())
        binder_share = _share(int((b & (pred > 0)).sum()), n_pred_px)
        sizes = np.bincount(pred.ravel())
        in_b = np.bincount(pred[b].ravel(), minlength=sizes.size)
        mostly = (in_b > 0.5 * sizes) & (sizes >= min_size)
        mostly[0] = False
        in_binder = int(mostly.sum())
    p_mask, t_mask = pred > 0, true > 0
    return ParticleScores(
        f1=s.f1,
        precision=s.precision,
        recall=s.recall,
        split_rate=s.split_rate,
        n_true=s.n_true,
        n_pred=s.n_pred,
        binder_share=binder_share,
        labels_in_binder=in_binder,
        envelope_iou=_share(int((p_mask & t_mask).sum()), int((p_mask | t_mask).sum())),
    )
