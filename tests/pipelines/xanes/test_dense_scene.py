"""The tracker on the dense, real-looking scene family (``synthetic.txm_dense``, issue 12).

That generator was written apart from the one the pipeline was developed on: large touching and
border-cut particles, zone-plate rings, an illumination gradient, 1500 counts per pixel.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes import XanesParams, XanesResult, XanesTracker, align_stack
from synthetic.txm_dense import DenseTxmScene, dense_energies

# what issue 12's 7th session added, all switched off: the tracker as it was before
BEFORE_7TH_SESSION = {
    "post_edge_pass": "off",
    "reanchor_renewal": "off",
    "max_partial_deviation_px": None,
}


def _track(
    scene: DenseTxmScene, energies: np.ndarray, track: dict, *, keep_stacks: bool = False
) -> XanesTracker:
    params = XanesParams.model_validate({"track": track, "keep_aligned_stacks": keep_stacks})
    tracker = XanesTracker(params, flat=scene.flat(8400.0))
    for i, energy in enumerate(energies):
        tracker.add_frame(scene.frame(float(energy), i), float(energy))
    return tracker


@pytest.fixture(scope="module")
def dense_tracker():
    n = 24
    scene = DenseTxmScene.random(100, shape=(384, 384), n_particles=12, n_frames=n)
    energies = dense_energies(n)
    tracker = _track(scene, energies, {})
    result = tracker.finalize()
    truth = np.stack([scene.truth_shift(i) for i in range(n)], axis=1)
    return scene, result, truth, tracker


@pytest.fixture(scope="module")
def dense(dense_tracker):
    scene, result, truth, _ = dense_tracker
    return scene, result, truth


def _global_rms(global_shift: np.ndarray, truth: np.ndarray) -> float:
    error = global_shift - np.median(truth, axis=0)
    return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))


def _truth_of_labels(scene: DenseTxmScene, labels: np.ndarray) -> np.ndarray:
    truth = scene.truth_labels(0)
    out = []
    for k in range(int(labels.max())):
        counts = np.bincount(truth[labels == k + 1], minlength=scene.n_particles + 1)
        out.append(int(np.argmax(counts[1:])) if counts[1:].any() else -1)
    return np.array(out)


def test_dense_scene_reports_unknown_instead_of_zero(dense):
    scene, result, _ = dense
    assert result.global_shift.shape == (scene.drift.shape[0], 2)
    # every frame either has a registered particle behind its global shift or says NaN
    finite = np.all(np.isfinite(result.global_shift), axis=1)
    np.testing.assert_array_equal(finite, result.n_found > 0)
    assert not np.any(result.trusted & ~finite)


def test_dense_scene_detections_are_particles(dense):
    scene, result, _ = dense
    which = _truth_of_labels(scene, result.labels)
    assert which.size >= 1
    assert np.all(which >= 0), "a detection on the background pattern"


def _errors(scene: DenseTxmScene, result, truth: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Shift errors of every registered particle-frame, and the wholly visible particles tracked
    in >= 90 % of the frames from the one they were detected in."""
    which = list(_truth_of_labels(scene, result.labels))
    errors = []
    for k, j in enumerate(which):
        if j < 0:
            continue
        error = result.particle_shift[k] - truth[j]
        errors.append(error[np.isfinite(error[:, 0])])
    tracked = []
    for j in np.nonzero(scene.wholly_visible())[0]:
        if j not in which:
            continue
        shifts = result.particle_shift[which.index(j), :, 0]
        seen = np.nonzero(np.isfinite(shifts))[0]
        if seen.size and np.mean(np.isfinite(shifts[seen[0] :])) >= 0.9:
            tracked.append(int(j))
    return np.concatenate(errors), tracked


def test_dense_scene_holds_its_measured_level(dense):
    """Not the issue-12 goals (see the xfail below): the level measured on 2026-11-30 (11th
    session, whole particles' deviations from the drift smoothed: per particle 0.51 px, global
    0.41 px, 8 of 8 wholly visible particles tracked, the worst particle-frame 1.05 px off; 9th
    session 0.57 / 0.41 / 8 / 1.49; 8th session 0.71 / 0.41 / 8 / 2.02; 7th session 1.09 /
    0.44 / 8 / 2.72; before it 1.16 / 0.61 / 8 / 2.99), with a margin, so that a change that
    makes the dense family worse fails here."""
    scene, result, truth = dense
    error, tracked = _errors(scene, result, truth)
    distance = np.hypot(error[:, 0], error[:, 1])
    rms = float(np.sqrt(np.mean(distance**2)))
    assert rms <= 0.6, f"per-particle RMS {rms:.3f} px"
    global_rms = _global_rms(result.global_shift, truth)
    assert global_rms <= 0.5, f"global RMS {global_rms:.3f} px"
    visible = int(np.count_nonzero(scene.wholly_visible()))
    assert len(tracked) >= 8, f"{len(tracked)} of {visible} wholly visible particles tracked"
    # an identity swap (a neighbour's outline) is several px; 2.0 leaves the measured 1.05
    assert distance.max() < 2.0, f"a particle {distance.max():.2f} px off its truth"


@pytest.mark.parametrize(
    ("option", "value", "margin"),
    [
        # frame 0 alone as each particle's anchor: 1.06 px per particle (measured)
        ("post_edge_anchor", "frame0", 0.02),
        # the last frame's outline as the pass's template: 0.75 px per particle, 0.44 global
        ("post_edge_template", "last", 0.02),
        # border-cut particles left at their live shifts: 0.86 px per particle (measured with
        # their own shifts kept at finalize, track.partial_shift="own", where the pass matters)
        ("post_edge_partial", False, 0.02),
        # the pass on the live support (the frame-0 mask grown by 4 px + 4 % of the diameter),
        # not on the clear outline (13th session): 0.510 px against 0.489 (2026-12-01)
        ("post_edge_support", "live", 0.01),
    ],
)
def test_dense_scene_post_edge_pass_parts_each_help(dense, option, value, margin):
    """Each part of the 8th session's post-edge pass, switched off alone, makes the scene worse
    per particle (default 0.71 px): the faint-frame anchor, the mean outline template and the
    border-cut particles in the pass; and the 13th session's outline support."""
    scene, result, truth = dense
    if option == "post_edge_partial":
        result = _track(scene, result.energies, {"partial_shift": "own"}).finalize()
        other = _track(scene, result.energies, {option: value, "partial_shift": "own"}).finalize()
    elif option == "post_edge_template":
        # on the live support, where the mean template was measured (0.537 px against 0.510);
        # on the outline support (13th session) the last frame's outline is 0.503 px against
        # 0.489: the rings the mean blurs weigh less once the support holds the rim
        live_support = {"post_edge_support": "live"}
        result = _track(scene, result.energies, live_support).finalize()
        other = _track(scene, result.energies, {option: value, **live_support}).finalize()
    else:
        other = _track(scene, result.energies, {option: value}).finalize()
    error_other, _ = _errors(scene, other, truth)
    error_now, _ = _errors(scene, result, truth)
    rms_other = float(np.sqrt(np.mean(np.sum(error_other**2, axis=1))))
    rms_now = float(np.sqrt(np.mean(np.sum(error_now**2, axis=1))))
    assert rms_other > rms_now + margin, (rms_other, rms_now)


def _scene_result(seed: int, track: dict):
    n = 24
    scene = DenseTxmScene.random(seed, shape=(384, 384), n_particles=12, n_frames=n)
    truth = np.stack([scene.truth_shift(i) for i in range(n)], axis=1)
    result = _track(scene, dense_energies(n), track).finalize()
    return scene, result, truth


def test_dense_scene_later_edges_found_by_repeated_redetection():
    """Particles whose own edge comes after the first re-detection (seed 103) are found by
    one more re-detection 8 frames later while the contrast holds (``track.redetect_late_frames``):
    8 of the 10 wholly visible particles tracked, 5 without (measured 2026-11-30)."""
    scene, result, truth = _scene_result(103, {})
    _, tracked = _errors(scene, result, truth)
    scene_b, result_b, _ = _scene_result(103, {"redetect_late_frames": None})
    _, tracked_before = _errors(scene_b, result_b, truth)
    assert len(tracked) >= 8 > len(tracked_before), (tracked, tracked_before)


def test_dense_scene_redetection_by_both_overlaps():
    """A re-detected object is classified by its overlap as a fraction of itself and of each
    tracked footprint (``track.redetect_by_both_overlaps``): on seed 101 without it a tracked
    particle takes a touching neighbour's outline and ends 4.3 px off (measured 2026-11-30:
    1.18 px per particle; with it 1.09 px, worst 3.3 px). Measured with the finalize rule
    that drops a whole particle 2 px off the drift of a rigid sample switched off on both
    sides (``track.max_whole_deviation_px``, 11th session), and so is the one that drops an
    object staying in the detector frame (``track.drop_still_particles``): either would hide
    the swap (with the latter on, the swapped particle is dropped: worst 2.7 px both ways)."""
    keep_far = {"max_whole_deviation_px": None, "drop_still_particles": False}
    scene, result, truth = _scene_result(101, keep_far)
    _, result_off, _ = _scene_result(101, {"redetect_by_both_overlaps": False, **keep_far})
    error, _ = _errors(scene, result, truth)
    error_off, _ = _errors(scene, result_off, truth)
    assert np.hypot(*error.T).max() < 3.5 < np.hypot(*error_off.T).max()
    assert np.sqrt(np.mean(np.sum(error**2, axis=1))) < np.sqrt(
        np.mean(np.sum(error_off**2, axis=1))
    )


def test_dense_scene_still_rings_seen_and_post_edge_pass_applied(dense_tracker):
    """The zone-plate rings of this generator stay in the detector frame while the sample
    drifts: the tracker sees it (background correlation 0.79 in place, 0.19 where the drift
    took it) and re-registers the whole particles on their post-edge outline at finalize."""
    _, _, _, tracker = dense_tracker
    motion = tracker.background_motion
    assert motion is not None
    assert motion.still_corr > 0.6 and motion.moving_corr < 0.4, motion
    assert tracker.post_edge_applied


def test_dense_scene_live_drift_not_held_by_the_rings(dense_tracker):
    """The live (per-frame) global shift, which the drift feedback uses: a renewed outline
    template is placed by frame 0, not by the shift the rings held back (measured 0.488 px;
    0.611 before the 7th session)."""
    _, _, truth, tracker = dense_tracker
    live = np.stack([r.global_shift for r in tracker.results])
    live_rms = _global_rms(live, truth)
    assert live_rms <= 0.55, f"live global RMS {live_rms:.3f} px"


def test_dense_scene_border_cut_particles_never_far_from_the_consensus(dense_tracker):
    """A border-cut particle more than 2 px from the global shift of >= 3 whole particles is
    not found (NaN) in that frame; its ROI still feeds the maps (placed by the consensus)."""
    _, result, _, tracker = dense_tracker
    assert result.partial.any()
    for frame in tracker.results[1:]:
        whole = frame.found & ~frame.partial
        if whole.sum() < 3:
            continue
        cut = frame.found & frame.partial
        deviation = np.hypot(*(frame.particle_shift[cut] - frame.global_shift).T)
        assert np.all(deviation <= 2.0), (frame.index, deviation)
        assert np.all(np.isnan(frame.particle_shift[frame.partial & ~frame.found]))


def test_dense_scene_without_the_7th_session_is_worse(dense_tracker):
    """The same scene with the post-edge pass, the live re-anchoring and the border-cut rule
    off: the level before (1.158 px per particle, 0.611 px global, a border-cut particle 2.12
    px from the consensus): what the tests above guard against."""
    scene, result, truth, _ = dense_tracker
    tracker = _track(scene, result.energies, BEFORE_7TH_SESSION)
    before = tracker.finalize()
    assert not tracker.post_edge_applied
    assert not before.post_edge_applied and result.post_edge_applied
    assert before.backfilled.shape == before.particle_shift.shape[:2]
    assert not before.backfilled.any()
    assert _global_rms(before.global_shift, truth) > 1.3 * _global_rms(result.global_shift, truth)
    error_before, _ = _errors(scene, before, truth)
    error_now, _ = _errors(scene, result, truth)
    rms_before = float(np.sqrt(np.mean(np.sum(error_before**2, axis=1))))
    rms_now = float(np.sqrt(np.mean(np.sum(error_now**2, axis=1))))
    assert rms_before > rms_now


def test_dense_scene_static_refine_option(dense):
    """``track.static_refine`` (off by default) refines the shifts at finalize: the same
    particle-frames are registered (NaN stays NaN) and the scene stays at its measured level
    (2026-11-30, 6th session: 1.150 px per particle, 0.631 px global; default 1.158 / 0.611)."""
    scene, default, truth = dense
    n = truth.shape[1]
    frames = np.stack([scene.frame(float(e), i) for i, e in enumerate(default.energies)])
    params = XanesParams.model_validate({"track": {"static_refine": True}})
    result = align_stack(frames, default.energies, flat=scene.flat(8400.0), params=params)
    assert (
        result.particle_shift.shape
        == default.particle_shift.shape
        == (
            default.particle_shift.shape[0],
            n,
            2,
        )
    )
    np.testing.assert_array_equal(
        np.isfinite(result.particle_shift), np.isfinite(default.particle_shift)
    )
    error, _ = _errors(scene, result, truth)
    rms = float(np.sqrt(np.mean(np.sum(error**2, axis=1))))
    assert rms <= 1.35, f"per-particle RMS {rms:.3f} px"
    global_error = result.global_shift - np.median(truth, axis=0)
    global_rms = float(np.sqrt(np.mean(np.sum(global_error**2, axis=1))))
    assert global_rms <= 0.75, f"global RMS {global_rms:.3f} px"


@pytest.mark.xfail(
    strict=True,
    reason="issue 12 goals not met on the dense family: faint pre-edge particles under the "
    "zone-plate rings are missed at frame 0 and the static pattern holds the registration",
)
def test_dense_scene_goals(dense):
    scene, result, truth = dense
    error, tracked = _errors(scene, result, truth)
    assert len(tracked) >= 0.95 * np.count_nonzero(scene.wholly_visible())
    assert float(np.sqrt(np.mean(np.sum(error**2, axis=1)))) <= 0.3
    global_error = result.global_shift - np.median(truth, axis=0)
    assert float(np.sqrt(np.mean(np.sum(global_error**2, axis=1)))) <= 0.3


def test_dense_scene_lost_particle_is_reacquired_with_its_earlier_frames():
    """A wholly visible particle whose faint frame-0 outline stops matching at frame 1 (seed
    105: true particle 6, NaN in frames 1-11 before) is re-acquired at a re-detection with a
    new outline template (``track.reacquire_lost_frames``) and, at finalize, registered in
    the frames before that against its post-edge outline (``track.post_edge_backfill``):
    tracked in every frame, 0.3-1.0 px off its truth (measured 2026-11-30)."""
    n = 24
    scene = DenseTxmScene.random(105, shape=(384, 384), n_particles=12, n_frames=n)
    energies = dense_energies(n)
    truth = np.stack([scene.truth_shift(i) for i in range(n)], axis=1)
    visible = int(np.count_nonzero(scene.wholly_visible()))

    def lost_particle(track: dict) -> tuple[np.ndarray, list[int], XanesResult, int]:
        result = _track(scene, energies, track, keep_stacks=True).finalize()
        which = list(_truth_of_labels(scene, result.labels))
        _, tracked = _errors(scene, result, truth)
        assert 6 in which
        k = which.index(6)
        return result.particle_shift[k], tracked, result, k

    off = {"reacquire_lost_frames": None, "post_edge_backfill": False}
    before, tracked_before, result, k = lost_particle(off)
    assert np.all(np.isnan(before[1:12])), "the scene no longer loses the particle"
    assert 6 not in tracked_before
    assert result.post_edge_applied and not result.backfilled.any()
    assert np.all(np.isnan(result.aligned_stacks[k][1:12]))
    shift, tracked, result, k = lost_particle({})
    # the backfilled frames are flagged and their aligned ROIs feed the maps
    backfilled = np.nonzero(result.backfilled[k])[0]
    assert backfilled.size and set(backfilled.tolist()) <= set(range(1, 12))
    stack = result.aligned_stacks[k]
    assert np.all(np.isfinite(stack[backfilled]))
    mask = result.rois[k].mask
    assert np.all(np.isfinite(result.spectra_raw[k, backfilled]))
    # each backfilled ROI holds the particle: its OD inside the mask above its surround
    for i in backfilled.tolist():
        assert stack[i][mask].mean() > stack[i][~mask].mean(), i
    assert 6 in tracked
    assert len(tracked) == visible > len(tracked_before)
    assert np.all(np.isfinite(shift))
    error = np.hypot(*(shift - truth[6]).T)
    assert error.max() < 1.5, np.round(error, 2)


def test_dense_scene_border_cut_particles_placed_by_the_drift(dense):
    """The whole particles of this scene move with the drift (their own wobble is <= 0.4 px),
    so a border-cut particle's shift is the frame's global shift (``track.partial_shift``):
    the border-cut particles' own registrations are off by more than the drift is (measured
    2026-11-30 on seed 100: per particle 0.706 -> 0.569 px, the global shift unchanged), and
    the particle-frames registered stay the same (NaN stays NaN)."""
    scene, result, truth = dense
    own = _track(scene, result.energies, {"partial_shift": "own"}).finalize()
    np.testing.assert_array_equal(own.global_shift, result.global_shift)
    np.testing.assert_array_equal(
        np.isfinite(own.particle_shift), np.isfinite(result.particle_shift)
    )
    partial = result.partial
    assert partial.any()
    placed = np.all(np.isfinite(result.particle_shift[partial]), axis=2)
    assert placed.any()
    np.testing.assert_array_equal(
        result.particle_shift[partial][placed],
        np.broadcast_to(result.global_shift, result.particle_shift[partial].shape)[placed],
    )
    np.testing.assert_array_equal(result.particle_shift[~partial], own.particle_shift[~partial])
    error_own, _ = _errors(scene, own, truth)
    error_now, _ = _errors(scene, result, truth)
    rms_own = float(np.sqrt(np.mean(np.sum(error_own**2, axis=1))))
    rms_now = float(np.sqrt(np.mean(np.sum(error_now**2, axis=1))))
    assert rms_now < rms_own - 0.05, (rms_now, rms_own)


def _rms(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))


def test_dense_scene_whole_particles_smoothed_in_a_rigid_sample(dense):
    """11th session: the whole particles of this scene move with the drift, so at finalize each
    one's deviation from the global shift is its running median over +-5 frames
    (``track.smooth_deviation_frames``): per particle 0.569 -> 0.510 px, worst particle-frame
    1.49 -> 1.05 px (measured 2026-11-30); the global shift and border-cut particles do not
    change."""
    scene, result, truth = dense
    assert result.smoothed.shape == result.particle_shift.shape[:2]
    assert result.smoothed.any() and not result.smoothed[result.partial].any()
    registered = np.all(np.isfinite(result.particle_shift), axis=2)
    assert not np.any(result.smoothed & ~registered)
    raw = _track(scene, result.energies, {"smooth_deviation_frames": None}).finalize()
    assert not raw.smoothed.any()
    np.testing.assert_array_equal(raw.global_shift, result.global_shift)
    np.testing.assert_array_equal(
        raw.particle_shift[raw.partial], result.particle_shift[result.partial]
    )
    error, _ = _errors(scene, result, truth)
    error_raw, _ = _errors(scene, raw, truth)
    assert _rms(error) < _rms(error_raw) - 0.03, (_rms(error), _rms(error_raw))


def test_dense_scene_far_whole_particle_dropped_in_a_rigid_sample():
    """11th session: on seed 103 a whole particle ends 3.9 px off its truth (a template placed
    wrongly when it was re-acquired); the other whole particles move with the drift, so at
    finalize a whole particle more than 2 px from the global shift is NaN in that frame
    (``track.max_whole_deviation_px``): per particle 0.669 -> 0.514 px, worst 3.88 -> 2.24 px
    (measured 2026-11-30, smoothing off on both sides)."""
    raw = {"smooth_deviation_frames": None}
    scene, result, truth = _scene_result(103, raw)
    _, result_off, _ = _scene_result(103, {"max_whole_deviation_px": None, **raw})
    error, _ = _errors(scene, result, truth)
    error_off, _ = _errors(scene, result_off, truth)
    assert np.hypot(*error.T).max() < 3.0 < np.hypot(*error_off.T).max()
    assert _rms(error) < _rms(error_off) - 0.05, (_rms(error), _rms(error_off))
    # the dropped frames are NaN, not 0.0, and every frame keeps its global shift
    assert np.all(np.isfinite(result.global_shift))
