"""Flaw classification: slice sampling, the 4-of-10 rule, shipped classifier on held-out data."""

from __future__ import annotations

import numpy as np
import pytest

from models.flaw_cnn import load_flaw_cnn, prepare_slice, roc_auc, slice_positions
from models.synthetic.reconstructed import make_reconstructed_cathode
from models.train_flaw_cnn import TEST_SEEDS, particle_slices, scores
from pipelines.particles.flaw import FlawParams, classify_flaws

# measured with the shipped weights on held-out seed TEST_SEEDS[0] (346 slices, 35 particles,
# 20 flawed): slice accuracy 0.980, slice ROC AUC 0.991, particle accuracy (4 of 10) 1.0
MEASURED_SLICE_ACCURACY = 0.980
MEASURED_SLICE_AUC = 0.991
MEASURED_PARTICLE_ACCURACY = 1.0
MARGIN = 0.04


def test_slice_positions_cover_the_central_80_percent() -> None:
    z = slice_positions(10, 59)
    assert len(z) == 10
    assert z[0] == 15 and z[-1] == 54  # 10 % of the 49-slice height in from each end
    assert np.all(np.diff(z) > 0)
    assert list(slice_positions(5, 5)) == [5] * 10
    with pytest.raises(ValueError, match="z_max"):
        slice_positions(4, 3)


def test_prepare_slice_masks_crops_and_resizes() -> None:
    image = np.full((50, 60), 0.7, dtype=np.float32)
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:20, 30:50] = True
    out = prepare_slice(image, mask)
    assert out.shape == (128, 128) and out.dtype == np.float32
    assert out.max() == pytest.approx(0.7)
    assert out[0, 0] == 0.0  # outside the mask
    assert not prepare_slice(image, np.zeros_like(mask)).any()


def test_roc_auc() -> None:
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert np.isnan(roc_auc(np.array([0.5]), np.array([1])))


@pytest.fixture(scope="module")
def flaw_model():  # noqa: ANN201
    import torch

    return load_flaw_cnn(device=torch.device("cpu"))


def test_shipped_classifier_on_held_out_particles(flaw_model) -> None:  # noqa: ANN001
    data = particle_slices((48, 128, 128), TEST_SEEDS[0], 1.0, None, 0)
    result = scores(flaw_model, data)
    assert result["n_particles"] >= 15 and result["n_flawed_particles"] >= 3
    assert result["slice_accuracy"] >= MEASURED_SLICE_ACCURACY - MARGIN
    assert result["slice_auc"] >= MEASURED_SLICE_AUC - MARGIN
    assert result["particle_accuracy"] >= MEASURED_PARTICLE_ACCURACY - 2 * MARGIN


def test_classify_flaws_applies_the_four_of_ten_rule(flaw_model) -> None:  # noqa: ANN001
    sample = make_reconstructed_cathode((32, 96, 96), seed=880_101, crack_density=1.5)
    labels = sample.truth.particle_ids
    result = classify_flaws(sample.recon, labels, model=flaw_model)
    n = int(labels.max())
    assert result.slice_scores.shape == (n, 10) and result.slice_scores.dtype == np.float32
    assert np.array_equal(result.label, np.arange(1, n + 1))
    assert np.array_equal(result.flawed_slices, (result.slice_scores >= 0.5).sum(axis=1))
    assert np.array_equal(result.flawed, result.flawed_slices >= 4)
    strict = classify_flaws(
        sample.recon, labels, FlawParams(min_flawed_slices=10), model=flaw_model
    )
    assert strict.flawed.sum() <= result.flawed.sum()
    with pytest.raises(ValueError, match="labels shape"):
        classify_flaws(sample.recon, labels[1:], model=flaw_model)
