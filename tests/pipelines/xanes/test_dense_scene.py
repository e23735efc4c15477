"""The tracker on the dense, real-looking scene family (``synthetic.txm_dense``, issue 12).

That generator was written apart from the one the pipeline was developed on: large touching and
border-cut particles, zone-plate rings, an illumination gradient, 1500 counts per pixel.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes import XanesParams, align_stack
from synthetic.txm_dense import DenseTxmScene, dense_energies


@pytest.fixture(scope="module")
def dense():
    n = 24
    scene = DenseTxmScene.random(100, shape=(384, 384), n_particles=12, n_frames=n)
    energies = dense_energies(n)
    frames = np.stack([scene.frame(float(e), i) for i, e in enumerate(energies)])
    result = align_stack(frames, energies, flat=scene.flat(8400.0), params=XanesParams())
    truth = np.stack([scene.truth_shift(i) for i in range(n)], axis=1)
    return scene, result, truth


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
    """Not the issue-12 goals (see the xfail below): the level measured on 2026-11-29 (5th
    session; per particle 1.16 px, global 0.61 px, 6 of 8 wholly visible particles tracked, the
    worst particle-frame 2.99 px off, a border-cut particle), with a margin, so that a change
    that makes the dense family worse fails here."""
    scene, result, truth = dense
    error, tracked = _errors(scene, result, truth)
    distance = np.hypot(error[:, 0], error[:, 1])
    rms = float(np.sqrt(np.mean(distance**2)))
    assert rms <= 1.35, f"per-particle RMS {rms:.3f} px"
    global_error = result.global_shift - np.median(truth, axis=0)
    global_rms = float(np.sqrt(np.mean(np.sum(global_error**2, axis=1))))
    assert global_rms <= 0.75, f"global RMS {global_rms:.3f} px"
    visible = int(np.count_nonzero(scene.wholly_visible()))
    assert len(tracked) >= 6, f"{len(tracked)} of {visible} wholly visible particles tracked"
    # an identity swap (a neighbour's outline) is several px; 3.5 leaves the measured 2.99
    assert distance.max() < 3.5, f"a particle {distance.max():.2f} px off its truth"


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
