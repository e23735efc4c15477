"""Flaw classification: slice sampling, the 4-of-10 rule, shipped classifier on held-out data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import resize

from models.checkpoint import read_checkpoint
from models.flaw_cnn import (
    DEFAULT_WEIGHTS,
    FlawCNN,
    load_flaw_cnn,
    prepare_slice,
    resize_crops,
    roc_auc,
    slice_positions,
    square_crop,
)
from pipelines.particles.flaw import FlawParams, classify_flaws
from synthetic.reconstructed import make_reconstructed_cathode
from training.flaw_cnn import TEST_SEEDS, particle_slices, scores

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


@pytest.mark.parametrize("side", [5, 23, 64, 127, 128, 129, 300])
def test_resize_crops_samples_like_skimage_resize(side: int) -> None:
    # the classifier was trained on skimage.transform.resize(order=1) crops; the batched torch
    # resize must give the same images (up- and down-scaling)
    rng = np.random.default_rng(side)
    image = rng.random((400, 400)).astype(np.float32)
    yy, xx = np.mgrid[:400, :400]
    mask = (yy - 190) ** 2 + ((xx - 210) / 1.3) ** 2 < (side / 2) ** 2
    crop = square_crop(image, mask)
    expected = resize(crop, (128, 128), order=1, anti_aliasing=False, preserve_range=True)
    other = square_crop(image, (yy - 200) ** 2 + (xx - 200) ** 2 < 100)
    batch = resize_crops([crop, other, crop])
    assert batch.shape == (3, 128, 128) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], expected, atol=1e-5)
    np.testing.assert_array_equal(batch[0], batch[2])
    with pytest.raises(ValueError, match="square"):
        resize_crops([np.zeros((4, 5), dtype=np.float32)])


def test_loaded_classifier_matches_the_trained_network() -> None:
    # load_flaw_cnn folds batch norm and stores the weights channels-last (twice as fast on a
    # CPU); the logits must stay those of the network as trained
    checkpoint, _ = read_checkpoint(None, DEFAULT_WEIGHTS, "flaw CNN", map_to_cpu=True)
    plain = FlawCNN(widths=tuple(int(w) for w in checkpoint["widths"]))
    plain.load_state_dict(checkpoint["state_dict"])
    plain.eval()
    fast = load_flaw_cnn(device=torch.device("cpu"))
    x = torch.from_numpy(np.random.default_rng(1).random((6, 1, 128, 128), dtype=np.float32))
    with torch.inference_mode():
        np.testing.assert_allclose(fast(x).numpy(), plain(x).numpy(), atol=1e-4)


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
