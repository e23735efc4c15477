"""Confusion matrix and ROC curve on scores whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from models.flaw_cnn import roc_auc
from pipelines.particles.evaluate import confusion_matrix, roc_curve


def test_confusion_matrix_counts() -> None:
    truth = np.array([0, 0, 0, 1, 1, 1, 1])
    predicted = np.array([0, 1, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(confusion_matrix(truth, predicted), [[2, 1], [1, 3]])
    with pytest.raises(ValueError, match="one length"):
        confusion_matrix(truth, predicted[:3])


def test_roc_curve_of_separable_and_tied_scores() -> None:
    fpr, tpr, thr = roc_curve(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.5, 1])
    assert thr[0] == np.inf and thr[1] == 0.9
    # ties: one point per distinct score
    fpr, tpr, _ = roc_curve(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(fpr, [0, 1])
    np.testing.assert_allclose(tpr, [0, 1])
    with pytest.raises(ValueError, match="both classes"):
        roc_curve(np.array([0.1, 0.2]), np.array([1, 1]))


def test_area_under_the_curve_is_the_mann_whitney_auc() -> None:
    rng = np.random.default_rng(7)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounded: many ties
    fpr, tpr, _ = roc_curve(scores, labels)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(scores, labels), abs=1e-12)
