"""Damage quantification on volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.cracks.quantify import QuantifyParams, density_map, fit_line, quantify_damage


def test_depth_profile_and_areas() -> None:
    particles = np.zeros((4, 40, 40), dtype=bool)
    particles[:, 10:30, 10:30] = True  # 400 px per slice
    cracks = np.zeros_like(particles)
    for z, n_rows in enumerate([4, 2, 1, 0]):
        cracks[z, 10 : 10 + n_rows, 10:30] = True  # 20 px per row
    q = quantify_damage(cracks, particles, QuantifyParams(window=5))
    np.testing.assert_array_equal(q.crack_area, [80, 40, 20, 0])
    np.testing.assert_array_equal(q.particle_area, [400] * 4)
    np.testing.assert_allclose(q.depth_profile, [0.2, 0.1, 0.05, 0.0])
    assert q.depth_profile.dtype == np.float64
    assert q.damage_density.shape == cracks.shape and q.damage_density.dtype == np.float32


def test_density_map_values() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[:, :15] = True
    dens = density_map(mask, 5)
    assert dens[15, 5] == pytest.approx(1.0)
    assert dens[15, 25] == pytest.approx(0.0)
    assert dens[15, 15] == pytest.approx(2 / 5)  # columns 13, 14 of 13..17 are True
    full = density_map(np.ones((1, 12, 12), dtype=bool), 50)
    np.testing.assert_allclose(full, 1.0)


def test_worker_threads_give_the_same_numbers() -> None:
    rng = np.random.default_rng(11)
    particles = rng.random((7, 90, 70)) < 0.6
    cracks = particles & (rng.random(particles.shape) < 0.1)
    params = QuantifyParams(window=9)
    one = quantify_damage(cracks, particles, params)
    three = quantify_damage(cracks, particles, params, workers=3)
    for name in ("damage_density", "particle_density", "damage_histogram", "layer_slope"):
        np.testing.assert_array_equal(getattr(three, name), getattr(one, name))
    assert three.volume_fit == one.volume_fit
    np.testing.assert_array_equal(density_map(cracks, 9, workers=8), one.damage_density)
    with pytest.raises(ValueError, match="workers"):
        density_map(cracks, 9, workers=0)


def test_correlation_known_slope() -> None:
    """Cracks are every other column of the particles -> damage = particle density / 2."""
    rng = np.random.default_rng(3)
    particles = np.zeros((3, 160, 160), dtype=bool)
    for z in range(3):
        for by in range(20, 140, 20):
            for bx in range(20, 140, 20):
                k = int(rng.integers(0, 21))  # rows of particle in this 20 x 20 block
                particles[z, by : by + k, bx : bx + 20] = True
    cracks = particles.copy()
    cracks[:, :, 1::2] = False
    q = quantify_damage(cracks, particles, QuantifyParams(window=20, stride=20))
    assert q.volume_fit.slope == pytest.approx(0.5, abs=1e-6)
    assert q.volume_fit.intercept == pytest.approx(0.0, abs=1e-6)
    assert q.volume_fit.pearson_r == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(q.layer_slope, 0.5, atol=1e-6)
    np.testing.assert_allclose(q.layer_pearson_r, 1.0, atol=1e-6)
    np.testing.assert_allclose(q.depth_profile, 0.5)


def test_damage_histogram_is_a_distribution() -> None:
    particles = np.ones((2, 30, 30), dtype=bool)
    cracks = np.zeros_like(particles)
    cracks[0, ::3, :] = True
    q = quantify_damage(cracks, particles, QuantifyParams(window=3, histogram_bins=10))
    assert q.damage_histogram.shape == (2, 10)
    np.testing.assert_allclose(q.damage_histogram.sum(axis=1), 1.0)
    assert q.damage_histogram[1, 0] == pytest.approx(1.0)  # no damage in slice 1
    assert len(q.histogram_edges) == 11


def test_undefined_fits_are_nan_and_empty_slices_nan_profile() -> None:
    assert np.isnan(fit_line(np.ones(10), np.arange(10.0)).slope)
    assert np.isnan(fit_line(np.arange(10.0), np.ones(10)).pearson_r)
    q = quantify_damage(np.zeros((2, 10, 10), bool), np.zeros((2, 10, 10), bool))
    assert np.isnan(q.depth_profile).all()


def test_shape_errors_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="particle_mask"):
        quantify_damage(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="crack_mask"):
        quantify_damage(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError):
        QuantifyParams(window=0)
