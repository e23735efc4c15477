"""Layer-by-layer damage analysis on layouts whose answer is set by construction."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.cracks.layers import layer_bounds, layer_correlation, pooled_distribution
from pipelines.cracks.quantify import QuantifyParams, quantify_damage


def paper_layout(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """8 slices; z < 4 (separator side): damage = 0.5 - 0.4 * packing, z >= 4 (collector side):
    damage = 0.1 + 0.3 * packing, exactly."""
    packing = rng.uniform(0.1, 0.9, size=(8, 30, 30)).astype(np.float32)
    damage = np.empty_like(packing)
    damage[:4] = 0.5 - 0.4 * packing[:4]
    damage[4:] = 0.1 + 0.3 * packing[4:]
    return packing, damage


def test_slope_sign_flips_from_collector_to_separator() -> None:
    packing, damage = paper_layout(np.random.default_rng(1))
    layers = layer_correlation(packing, damage, n_layers=2)
    np.testing.assert_array_equal(layers.z_start, [0, 4])
    np.testing.assert_array_equal(layers.z_stop, [4, 8])
    np.testing.assert_allclose(layers.slope, [-0.4, 0.3], atol=1e-5)
    np.testing.assert_allclose(layers.intercept, [0.5, 0.1], atol=1e-5)
    np.testing.assert_allclose(layers.pearson_r, [-1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(layers.n_samples, [4 * 900, 4 * 900])
    # four layers: each half keeps its sign; with a stride, fewer samples, same lines
    four = layer_correlation(packing, damage, n_layers=4, stride=3)
    assert np.all(four.slope[:2] < 0) and np.all(four.slope[2:] > 0)
    np.testing.assert_array_equal(four.n_samples, [2 * 100] * 4)


def test_noise_keeps_the_sign_and_weakens_r() -> None:
    rng = np.random.default_rng(2)
    packing, damage = paper_layout(rng)
    noisy = damage + rng.normal(0, 0.05, damage.shape).astype(np.float32)
    layers = layer_correlation(packing, noisy, n_layers=2)
    assert layers.slope[0] == pytest.approx(-0.4, abs=0.03)
    assert layers.slope[1] == pytest.approx(0.3, abs=0.03)
    assert -1.0 < layers.pearson_r[0] < -0.8 and 0.7 < layers.pearson_r[1] < 1.0


def test_no_particle_and_constant_packing_are_unknown() -> None:
    packing = np.zeros((4, 10, 10), dtype=np.float32)
    packing[2:] = 0.5  # constant: no line through it
    layers = layer_correlation(packing, np.zeros_like(packing), n_layers=2)
    assert np.isnan(layers.slope).all() and np.isnan(layers.pearson_r).all()
    np.testing.assert_array_equal(layers.n_samples, [0, 200])


def test_pooled_distribution_is_the_histogram_of_the_slab() -> None:
    rng = np.random.default_rng(4)
    particles = rng.random((6, 60, 60)) < 0.5
    particles[1] = False  # a slice without particles weighs nothing
    cracks = particles & (rng.random(particles.shape) < np.linspace(0.02, 0.3, 6)[:, None, None])
    q = quantify_damage(cracks, particles, QuantifyParams(window=7, histogram_bins=12))
    for a, b in [(0, 3), (3, 6), (0, 6), (1, 2)]:
        pooled = pooled_distribution(q.damage_histogram, q.particle_area, a, b)
        values = q.damage_density[a:b][particles[a:b]]
        if values.size == 0:
            assert np.isnan(pooled).all()
            continue
        top = q.histogram_edges[-1]
        direct, _ = np.histogram(np.clip(values, 0, top), bins=q.histogram_edges)
        np.testing.assert_allclose(pooled, direct / values.size, atol=1e-12)
        assert pooled.sum() == pytest.approx(1.0)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="n_layers"):
        layer_bounds(3, 4)
    with pytest.raises(ValueError, match="damage_density"):
        layer_correlation(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)), n_layers=1)
    with pytest.raises(ValueError, match="z_start"):
        pooled_distribution(np.zeros((3, 2)), np.ones(3), 2, 2)
    np.testing.assert_array_equal(layer_bounds(10, 3), [0, 3, 7, 10])
