"""Particle trajectories across scans: statistics per label, drift, matching after the drift."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes.trajectory import ScanMaps, particle_statistics, scan_drift, trajectory


def discs(centres: list[tuple[int, int]], shape=(80, 80), radius=6) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, dtype=np.int32)
    for k, (r, c) in enumerate(centres):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = k + 1
    return labels


def test_particle_statistics_leave_out_nan_and_say_unknown() -> None:
    labels = np.array([[1, 1, 2], [0, 3, 2]])
    values = np.array([[1.0, 3.0, np.nan], [7.0, 5.0, np.nan]])
    mean, sd, n = particle_statistics(labels, values)
    np.testing.assert_allclose(mean[:1], [2.0])
    np.testing.assert_allclose(sd[:1], [1.0])
    assert np.isnan(mean[1]) and np.isnan(sd[1]) and n[1] == 0  # no value: NaN, not 0
    assert mean[2] == 5.0 and sd[2] == 0.0 and list(n) == [2, 0, 1]


def test_drift_then_matching_keeps_identities_when_neighbours_are_closer_than_the_drift() -> None:
    # particles 14 px apart, the sample drifts 9 px between scans: nearest-neighbour matching
    # without the drift would swap identities; after the drift every particle is found
    base = [(20, 20), (20, 34), (40, 27), (60, 60)]
    shifted = [(r + 2, c + 9) for r, c in base]
    scan0, scan1 = discs(base), discs(shifted[::-1])  # label order differs too
    np.testing.assert_allclose(scan_drift(scan0, scan1), [2, 9], atol=0.1)
    value0 = np.where(scan0 > 0, 8340.0 + scan0, np.nan)
    value1 = np.where(scan1 > 0, 8345.0 + (5 - scan1), np.nan)  # track k: 8345 + k + 1
    traj = trajectory([ScanMaps(scan0, {"edge": value0}), ScanMaps(scan1, {"edge": value1})])
    assert traj.label.shape == (4, 2)
    np.testing.assert_array_equal(traj.label[:, 1], [4, 3, 2, 1])
    np.testing.assert_allclose(traj.mean["edge"][:, 1] - traj.mean["edge"][:, 0], 5.0)
    np.testing.assert_allclose(traj.drift[1], [2, 9], atol=0.1)


def test_particle_leaving_and_entering_gets_nan_and_a_new_track() -> None:
    scan0 = discs([(20, 20), (50, 50)])
    scan1 = discs([(20, 20), (60, 20)])  # particle 2 gone, a new one elsewhere
    ones = lambda lab: np.where(lab > 0, 1.0, np.nan)  # noqa: E731
    traj = trajectory([ScanMaps(scan0, {"v": ones(scan0)}), ScanMaps(scan1, {"v": ones(scan1)})])
    assert traj.label.tolist() == [[1, 1], [2, 0], [0, 2]]
    assert np.isnan(traj.mean["v"][1, 1]) and np.isnan(traj.mean["v"][2, 0])
    assert traj.n_valid["v"][1, 1] == 0


def test_trajectory_rejects_scans_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        trajectory([ScanMaps(discs([(10, 10)]), {}), ScanMaps(np.zeros((5, 5), int), {})])
