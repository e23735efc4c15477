"""Rigid / non-rigid split and SSIM summary on motions and scores set by construction."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes.deformation import deformation_series, rigid_split
from pipelines.xanes.quality import ssim_summary


def test_rigid_particles_follow_the_drift_and_the_wobbling_one_does_not() -> None:
    t = np.arange(20.0)
    drift = np.stack([0.3 * t, -0.2 * t], axis=1)
    rng = np.random.default_rng(0)
    displacement = np.repeat(drift[None], 4, axis=0) + rng.uniform(-0.1, 0.1, (4, 20, 2))
    displacement[2, :, 0] += 3.0 * np.sin(t / 2.0)  # moves on its own, rows only
    displacement[3] = np.nan  # never found
    d = deformation_series(displacement)
    split = rigid_split(d, tolerance=1.0)
    np.testing.assert_array_equal(split.rigid, [True, True, False, False])
    np.testing.assert_array_equal(split.known, [True, True, True, False])
    assert split.nonrigid_peak[2] == pytest.approx(3.0, abs=0.35)
    assert np.all(split.nonrigid_peak[:2] < 0.3) and np.isnan(split.nonrigid_peak[3])
    # rigid speed: the drift's (0.3, 0.2) plus the noise's differences (at most 0.2)
    assert 0.3 <= split.peak_speed_rigid[0] <= 0.5 and 0.2 <= split.peak_speed_rigid[1] <= 0.4
    # the wobbler's row speed peaks near 0.3 + 1.5 (|d/dt 3 sin(t/2)| <= 1.5)
    assert 1.3 < split.peak_speed_nonrigid[0] < 2.0
    assert split.peak_ratio[0] > 3.0 and split.peak_ratio[1] < 2.0
    np.testing.assert_allclose(split.peak_ratio, split.peak_speed_nonrigid / split.peak_speed_rigid)


def test_all_rigid_leaves_the_nonrigid_group_unknown() -> None:
    displacement = np.zeros((3, 5, 2))
    split = rigid_split(deformation_series(displacement), tolerance=0.5)
    assert split.rigid.all()
    assert np.isnan(split.peak_speed_nonrigid).all() and np.isnan(split.peak_ratio).all()
    with pytest.raises(ValueError, match="tolerance"):
        rigid_split(deformation_series(displacement), tolerance=0.0)


def test_ssim_summary() -> None:
    ssim = np.array(
        [
            [1.0, 0.9, 0.4, 0.7],
            [1.0, np.nan, 0.8, np.nan],
            [np.nan, np.nan, np.nan, np.nan],
        ]
    )
    s = ssim_summary(ssim, low=0.5)
    np.testing.assert_allclose(s.particle_mean[:2], [0.75, 0.9])
    np.testing.assert_allclose(s.particle_min[:2], [0.4, 0.8])
    np.testing.assert_allclose(s.particle_std[:2], [np.std([1.0, 0.9, 0.4, 0.7]), 0.1])
    np.testing.assert_allclose(s.particle_low_fraction[:2], [0.25, 0.0])
    np.testing.assert_array_equal(s.particle_found, [4, 2, 0])
    assert np.isnan([s.particle_mean[2], s.particle_min[2], s.particle_low_fraction[2]]).all()
    np.testing.assert_allclose(s.frame_mean, [1.0, 0.9, 0.6, 0.7])
    assert s.overall_mean == pytest.approx(np.mean([1.0, 0.9, 0.4, 0.7, 1.0, 0.8]))
    assert s.overall_median == pytest.approx(0.85)
    empty = ssim_summary(np.full((2, 3), np.nan))
    assert np.isnan(empty.overall_mean) and np.isnan(empty.frame_mean).all()
    with pytest.raises(ValueError, match="2-D"):
        ssim_summary(np.zeros(3))
