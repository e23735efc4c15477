"""Deformation: rigid drift vs non-rigid motion, kinematics per scan."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes.deformation import deformation_rows, deformation_series, per_scan_positions


def test_rigid_motion_has_no_nonrigid_part():
    t = np.arange(10.0)
    drift = np.stack([0.5 * t, -0.2 * t], axis=1)
    displacement = np.repeat(drift[None], 4, axis=0)
    result = deformation_series(displacement)
    np.testing.assert_allclose(result.global_drift, drift)
    np.testing.assert_allclose(result.nonrigid, 0.0, atol=1e-12)
    np.testing.assert_allclose(result.velocity[:, 1:], np.broadcast_to([0.5, -0.2], (4, 9, 2)))
    np.testing.assert_allclose(result.acceleration[:, 2:], 0.0, atol=1e-12)
    assert np.all(np.isnan(result.velocity[:, 0]))
    np.testing.assert_allclose(result.cumulative_distance[:, -1], 9 * np.hypot(0.5, 0.2))


def test_nonrigid_particle_and_missing_points():
    displacement = np.zeros((4, 5, 2))
    displacement[2, :, 1] = np.arange(5.0) ** 2
    displacement[1, 3] = np.nan
    result = deformation_series(displacement, times=np.array([0.0, 1.0, 2.0, 4.0, 5.0]))
    np.testing.assert_allclose(result.global_drift, 0.0)
    np.testing.assert_allclose(result.nonrigid[2, :, 1], np.arange(5.0) ** 2)
    assert result.velocity[2, 3, 1] == pytest.approx((9.0 - 4.0) / 2.0)
    assert np.isfinite(result.cumulative_distance).all()
    rows = deformation_rows(result)
    assert len(rows) == 20 and rows[-1]["particle"] == 3


def test_per_scan_positions():
    shift = np.zeros((2, 6, 2))
    shift[0, 3:] = 1.0
    shift[1, 4] = np.nan
    out = per_scan_positions(shift, np.array([0, 0, 0, 1, 1, 1]))
    assert out.shape == (2, 2, 2)
    np.testing.assert_allclose(out[0], [[0, 0], [1, 1]])
    np.testing.assert_allclose(out[1], 0.0)


def test_bad_shapes():
    with pytest.raises(ValueError, match="displacement"):
        deformation_series(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="times"):
        deformation_series(np.zeros((1, 3, 2)), times=np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="scan_of_frame"):
        per_scan_positions(np.zeros((1, 3, 2)), np.array([0, 1]))
