"""The flaw classifier's model card (docs/model_card) belongs to the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CARD = ROOT / "docs" / "model_card"


def test_model_card_numbers_match_the_shipped_weights() -> None:
    card = json.loads((CARD / "flaw_cnn_validation.json").read_text())
    shipped = json.loads((ROOT / "models" / "weights" / "flaw_cnn.json").read_text())
    held_out = shipped["held_out"]
    same = card["sets"]["training family, held-out seeds"]
    # the training script scored the same held-out seeds when the weights were made
    assert same["seeds"] == held_out["seeds"]
    assert same["slices"]["accuracy"] == pytest.approx(held_out["slice_accuracy"], abs=1e-9)
    assert same["slices"]["auc"] == pytest.approx(held_out["slice_auc"], abs=1e-9)
    assert same["particles"]["accuracy"] == pytest.approx(held_out["particle_accuracy"])
    for name, result in card["sets"].items():
        for level in ("slices", "particles"):
            r = result[level]
            matrix = np.asarray(r["confusion"])
            assert matrix.shape == (2, 2) and matrix.sum() == r["n"], (name, level)
            (tn, fp), (fn, tp) = matrix
            assert r["accuracy"] == pytest.approx((tn + tp) / matrix.sum())
            assert r["recall"] == pytest.approx(tp / (tp + fn))
            fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
            area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
            assert area == pytest.approx(r["auc"], abs=1e-9)
    for png in ("flaw_cnn_confusion.png", "flaw_cnn_roc.png"):
        assert (CARD / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "flaw_cnn_confusion.png" in (CARD / "flaw_cnn.md").read_text()
