"""Flawed fraction against the slices required, detachment by size group, slice gallery."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.particles.gallery import gallery_order, particle_slice_crops
from pipelines.particles.stats import (
    StatsParams,
    detachment_by_size,
    flawed_fraction_by_required_slices,
    particle_statistics,
)


def test_flawed_fraction_against_required_slices() -> None:
    fraction = flawed_fraction_by_required_slices(np.array([0, 1, 4, 10]))
    expected = [3 / 4] + [2 / 4] * 3 + [1 / 4] * 6
    np.testing.assert_allclose(fraction, expected)
    assert fraction.shape == (10,)
    assert np.all(np.diff(fraction) <= 0)  # requiring more slices never flags more particles
    assert np.isnan(flawed_fraction_by_required_slices(np.zeros(0, int))).all()
    with pytest.raises(ValueError, match="0..10"):
        flawed_fraction_by_required_slices(np.array([11]))


def test_fraction_at_the_rule_matches_the_statistics() -> None:
    rng = np.random.default_rng(0)
    n = 40
    table = np.zeros(
        n,
        dtype=[
            ("equivalent_diameter_px", float),
            ("centroid_z", float),
            ("detachment", float),
            ("flawed_slices", np.int32),
            ("flawed", bool),
            ("touches_border", bool),
        ],
    )
    table["equivalent_diameter_px"] = rng.uniform(5, 30, n)
    table["centroid_z"] = rng.uniform(0, 20, n)
    table["detachment"] = rng.uniform(0, 1, n)
    table["flawed_slices"] = rng.integers(0, 11, n)
    table["flawed"] = table["flawed_slices"] >= 4
    table["touches_border"] = rng.random(n) < 0.2
    stats = particle_statistics(table, depth=20, params=StatsParams())
    inner = table[~table["touches_border"]]
    fraction = flawed_fraction_by_required_slices(inner["flawed_slices"])
    assert fraction[3] == pytest.approx(stats.overall.flawed_fraction)


def test_detachment_by_size_groups() -> None:
    diameter = np.array([5.0, 8.0, 10.9, 11.0, 20.0, 30.0, 12.0])
    detachment = np.array([0.05, 0.55, 0.95, 0.15, 0.15, 0.25, np.nan])
    groups = detachment_by_size(diameter, detachment, threshold=11.0, bins=10)
    np.testing.assert_array_equal(groups.small_counts, [1, 0, 0, 0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(groups.large_counts, [0, 2, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(groups.small_probability.sum(), 1.0)
    np.testing.assert_allclose(groups.large_probability[1], 2 / 3)
    np.testing.assert_allclose(groups.edges, np.linspace(0, 1, 11))
    empty = detachment_by_size(diameter, detachment, threshold=100.0)
    assert np.isnan(empty.large_probability).all() and empty.large_counts.sum() == 0
    with pytest.raises(ValueError, match="threshold"):
        detachment_by_size(diameter, detachment, threshold=0.0)


def test_slice_crops_show_the_particle_and_nothing_else() -> None:
    volume = np.zeros((6, 40, 40), dtype=np.float32)
    labels = np.zeros((6, 40, 40), dtype=np.int32)
    labels[1:5, 10:20, 10:30] = 3  # 10 x 20 box
    volume[labels == 3] = 7.0
    volume[labels == 0] = -5.0  # must not show
    labels[2, 30:35, 30:35] = 4  # a neighbour, not shown either
    volume[2, 30:35, 30:35] = 99.0
    crops = particle_slice_crops(volume, labels, 3, np.array([1, 2, 0]), size=32)
    assert crops.shape == (3, 32, 32) and crops.dtype == np.float32
    assert np.isnan(crops[2]).all()  # the particle does not reach slice 0
    for crop in crops[:2]:
        inside = np.isfinite(crop)
        np.testing.assert_allclose(crop[inside], 7.0, atol=1e-5)
        # a 10 x 20 box centred in a 20 x 20 square: rows 8..23 of 32 are the particle
        assert inside[:, 16].sum() == 16 and inside[16, :].sum() == 32
    with pytest.raises(ValueError, match="slice_z"):
        particle_slice_crops(volume, labels, 3, np.array([6]))


def test_gallery_order() -> None:
    flawed = np.array([True, False, True, True])
    scores = np.array([[0.6, 0.7], [0.99, 0.99], [0.9, 0.95], [0.5, 0.5]])
    np.testing.assert_array_equal(gallery_order(flawed, scores, 2), [2, 0])
    np.testing.assert_array_equal(gallery_order(flawed, scores, 10), [2, 0, 3])
    assert gallery_order(np.zeros(4, bool), scores, 3).size == 0
