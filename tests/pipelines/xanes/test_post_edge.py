"""The still-background test and the re-anchoring of the post-edge pass (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.xanes.post_edge import background_stays_still, reanchored_shifts


def _rings(shape: tuple[int, int]) -> np.ndarray:
    """A chirped ring system centred outside the frame (a zone-plate pattern)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    radius = np.hypot(rows + 150.0, cols - 40.0)
    return 0.05 * np.sin(radius**2 / 900.0)


def _particles(shape: tuple[int, int], shift: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for r, c, radius in ((60, 60, 22), (150, 90, 30), (90, 170, 25)):
        inside = np.hypot(rows - r - shift[0], cols - c - shift[1]) < radius
        image += 0.3 * ndimage.gaussian_filter(inside.astype(np.float64), 1.5)
    return image


@pytest.fixture(scope="module")
def scene():
    shape = (224, 224)
    drift = np.array([3.0, -2.0])
    rng = np.random.default_rng(5)
    noise = [rng.normal(0.0, 0.005, shape) for _ in range(2)]
    mask = _particles(shape, np.zeros(2)) > 0.05
    return shape, drift, noise, mask


def test_rings_that_stay_in_the_detector_frame_are_seen_still(scene):
    shape, drift, noise, mask = scene
    rings = _rings(shape)
    first = rings + _particles(shape, np.zeros(2)) + noise[0]
    second = rings + _particles(shape, drift) + noise[1]
    motion = background_stays_still(first, second, mask, drift)
    assert motion.n_pixels > 5000
    assert motion.still_corr > 0.8
    assert motion.moving_corr < 0.3


def test_a_background_that_moves_with_the_sample_is_not_still(scene):
    shape, drift, noise, mask = scene
    first = _rings(shape) + _particles(shape, np.zeros(2))
    # the whole field of view shifted (the sample and its background drift together)
    second = ndimage.shift(first, drift, order=3, mode="nearest") + noise[1]
    motion = background_stays_still(first + noise[0], second, mask, drift)
    assert motion.moving_corr > 0.8
    assert motion.still_corr < motion.moving_corr - 0.3


def test_background_stays_still_checks_its_inputs(scene):
    shape, drift, _, mask = scene
    image = np.zeros(shape)
    with pytest.raises(ValueError, match="drift"):
        background_stays_still(image, image, mask, np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        background_stays_still(image, image[:-1], mask, drift)
    with pytest.raises(ValueError, match="margin_px"):
        background_stays_still(image, image, mask, drift, margin_px=-1)


def test_too_little_background_is_unknown_not_a_verdict(scene):
    shape, drift, _, _ = scene
    image = _rings(shape)
    motion = background_stays_still(image, image, np.ones(shape, dtype=bool), drift)
    assert motion.n_pixels == 0
    assert np.isnan(motion.still_corr) and np.isnan(motion.moving_corr)


def test_reanchored_shifts_put_frame_zero_at_zero():
    registered = np.array([[1.5, -0.5], [2.0, 0.0], [np.nan, np.nan], [4.5, 1.5]])
    anchored = reanchored_shifts(registered)
    assert anchored is not None
    np.testing.assert_allclose(anchored[[0, 1, 3]], [[0.0, 0.0], [0.5, 0.5], [3.0, 2.0]])
    assert np.all(np.isnan(anchored[2]))
    assert reanchored_shifts(registered[2:]) is None
    with pytest.raises(ValueError, match="registered"):
        reanchored_shifts(np.zeros((3, 3)))
