"""The global shift of a frame from its particles and the border-cut rule (consensus.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes.consensus import (
    far_partials,
    far_wholes,
    frame_consensus,
    global_from_shifts,
    inconsistent_partials,
    partials_from_drift,
    rigid_spread,
    smoothed_deviations,
    still_particles,
)


def test_whole_particles_vote_and_a_far_border_cut_one_is_dropped():
    shifts = np.array([[1.0, 2.0], [1.2, 2.1], [0.9, 1.9], [6.0, -3.0]])
    found = np.ones(4, dtype=bool)
    partial = np.array([False, False, False, True])
    global_shift, voters, n_used, spread = frame_consensus(found, shifts, partial)
    assert voters.tolist() == [True, True, True, False] and n_used == 3
    np.testing.assert_allclose(global_shift, [1.0, 2.0])
    assert 0.0 < spread < 0.5
    dropped = inconsistent_partials(found, shifts, global_shift, partial, 2.0)
    assert dropped.tolist() == [False, False, False, True]
    assert not inconsistent_partials(found, shifts, global_shift, partial, None).any()


def test_border_cut_particles_vote_when_fewer_than_three_whole_ones():
    shifts = np.array([[1.0, 1.0], [3.0, 3.0], [np.nan, np.nan]])
    found = np.array([True, True, False])
    partial = np.array([False, True, False])
    global_shift, voters, n_used, _ = frame_consensus(found, shifts, partial)
    assert voters.tolist() == [True, True, False] and n_used == 2
    assert np.all(np.isfinite(global_shift))


def test_no_particle_gives_nan_not_zero():
    global_shift, _, n_used, spread = frame_consensus(
        np.zeros(2, dtype=bool), np.full((2, 2), np.nan), np.zeros(2, dtype=bool)
    )
    assert n_used == 0 and np.all(np.isnan(global_shift)) and np.isnan(spread)


def test_scan_rule_is_the_frame_rule_of_every_frame():
    rng = np.random.default_rng(3)
    shift = rng.normal(0.0, 1.0, (6, 5, 2))
    shift[4, 1] = np.nan
    shift[:, 3] = np.nan  # a frame with no particle
    shift[5, 2] = [9.0, 9.0]  # a border-cut particle far off
    partial = np.array([False, False, False, False, True, True])
    global_shift, n_found, spread = global_from_shifts(shift, partial)
    for i in range(shift.shape[1]):
        found = np.all(np.isfinite(shift[:, i]), axis=1)
        g, _, n, s = frame_consensus(found, shift[:, i], partial)
        np.testing.assert_array_equal(global_shift[i], g)
        assert n_found[i] == n
        np.testing.assert_array_equal(spread[i], s)
    assert np.all(np.isnan(global_shift[3])) and n_found[3] == 0
    far = far_partials(shift, global_shift, partial, 3.0)
    assert far[5, 2] and far.sum() == 1
    assert not far_partials(shift, global_shift, partial, None).any()


def _scan_with_a_border_cut_particle(own_motion_px: float) -> tuple[np.ndarray, np.ndarray]:
    """5 whole particles moving with a drift (plus their own motion) and one border-cut
    particle registered 1.5 px off along rows after frame 10."""
    rng = np.random.default_rng(5)
    n = 30
    drift = np.cumsum(rng.normal(0.0, 0.5, (n, 2)), axis=0)
    drift[0] = 0.0
    own = np.cumsum(rng.normal(0.0, own_motion_px, (6, n, 2)), axis=1)
    own[:, 0] = 0.0
    shift = drift[None] + own + rng.normal(0.0, 0.05, (6, n, 2))
    shift[:, 0] = 0.0
    shift[5, 10:, 0] += 1.5
    shift[5, 3] = np.nan
    return shift, np.array([False] * 5 + [True])


def test_border_cut_particle_follows_the_drift_of_a_rigid_sample():
    shift, partial = _scan_with_a_border_cut_particle(own_motion_px=0.0)
    global_shift, _, _ = global_from_shifts(shift, partial)
    assert rigid_spread(shift, global_shift, partial) < 0.1
    placed_shift, placed = partials_from_drift(shift, global_shift, partial, 0.5)
    assert placed[5].sum() == shift.shape[1] - 1 and not placed[:5].any()
    assert np.all(np.isnan(placed_shift[5, 3]))  # not registered: stays unknown
    np.testing.assert_array_equal(placed_shift[:5], shift[:5])
    error = placed_shift[5] - global_shift
    assert np.nanmax(np.abs(error)) == 0.0


def test_border_cut_particle_keeps_its_shift_when_the_sample_deforms():
    shift, partial = _scan_with_a_border_cut_particle(own_motion_px=0.5)
    global_shift, _, _ = global_from_shifts(shift, partial)
    assert rigid_spread(shift, global_shift, partial) > 0.5
    placed_shift, placed = partials_from_drift(shift, global_shift, partial, 0.5)
    assert not placed.any() and placed_shift is shift


def test_whole_particle_far_from_the_drift_of_a_rigid_sample_is_found_out():
    shift, partial = _scan_with_a_border_cut_particle(own_motion_px=0.0)
    shift[2, 20:] += [4.0, 0.5]  # a whole particle re-anchored 4 px off from frame 20 on
    global_shift, _, _ = global_from_shifts(shift, partial)
    assert rigid_spread(shift, global_shift, partial) < 0.1  # the median: still rigid
    far = far_wholes(shift, global_shift, partial, 2.0)
    assert far[2, 20:].all() and far.sum() == shift.shape[1] - 20
    assert not far_wholes(shift, global_shift, partial, None).any()
    # the border-cut one (1.5 px off) is left to the border-cut rule
    assert not far[5].any()


def test_smoothing_the_deviation_keeps_a_slow_deformation_and_removes_noise():
    rng = np.random.default_rng(11)
    n = 40
    drift = np.cumsum(rng.normal(0.0, 0.5, (n, 2)), axis=0)
    t = np.arange(n) / (n - 1)
    slow = 0.4 * np.sin(2 * np.pi * 0.7 * t + np.arange(6)[:, None])[..., None] * [1.0, -1.0]
    truth = drift[None] + slow - slow[:, :1]
    shift = truth + rng.normal(0.0, 0.3, truth.shape)
    shift[3, 7] = np.nan
    partial = np.array([False] * 5 + [True])
    global_shift = np.median(truth[:5], axis=0)  # the drift, known
    smoothed_shift, smoothed = smoothed_deviations(shift, global_shift, partial, 5)
    assert not smoothed[5].any() and not smoothed[3, 7] and smoothed[:5].sum() == 5 * n - 1
    np.testing.assert_array_equal(smoothed_shift[5], shift[5])  # border-cut: untouched
    assert np.all(np.isnan(smoothed_shift[3, 7]))  # not registered: stays unknown

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.nanmean(np.sum(a**2, axis=-1))))

    before, after = rms(shift[:5] - truth[:5]), rms(smoothed_shift[:5] - truth[:5])
    assert after < 0.6 * before
    # noise-free, the slow deformation comes through the running median nearly unchanged
    exact, _ = smoothed_deviations(truth, global_shift, partial, 5)
    assert rms(exact[:5] - truth[:5]) < 0.1
    with pytest.raises(ValueError, match="half_window"):
        smoothed_deviations(shift, global_shift, partial, 0)


def test_an_object_that_stays_put_while_the_sample_drifts_is_still():
    rng = np.random.default_rng(5)
    n = 30
    drift = np.stack([np.linspace(0.0, 4.0, n), np.linspace(0.0, -2.0, n)], axis=1)
    shift = drift[None] + rng.normal(0.0, 0.3, (4, n, 2))
    shift[1] = rng.normal(0.0, 0.3, (n, 2))  # held in the detector frame
    shift[2, 5:] = np.nan  # registered only while the drift is small: not judged
    shift[3] = 0.5 * drift + rng.normal(0.0, 0.1, (n, 2))  # half way: not still
    global_shift = np.median(shift[[0, 3]], axis=0)
    still = still_particles(shift, global_shift, min_drift_px=1.0)
    np.testing.assert_array_equal(still, [False, True, False, False])
    # no drift, no evidence: nothing is still
    flat = still_particles(shift - drift[None], global_shift - drift, min_drift_px=1.0)
    assert not flat.any()


def test_still_particles_checks_its_inputs():
    with pytest.raises(ValueError, match="shift"):
        still_particles(np.zeros((2, 5)), np.zeros((5, 2)), min_drift_px=1.0)
    with pytest.raises(ValueError, match="global_shift"):
        still_particles(np.zeros((2, 5, 2)), np.zeros((4, 2)), min_drift_px=1.0)
    with pytest.raises(ValueError, match="min_drift_px"):
        still_particles(np.zeros((2, 5, 2)), np.zeros((5, 2)), min_drift_px=0.0)
