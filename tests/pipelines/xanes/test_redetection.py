"""Re-detection: a particle that becomes visible next to a tracked one joins; fragments of a
faint particle that the brighter frames see whole are one particle (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes import XanesParams, XanesTracker

SIZE = 512
N_FRAMES = 16
EDGE_FRAME = 8
# (row, col, radius): four separated particles, then a small tracked one (A) and its
# neighbour (B), touching it, too faint to see until the edge
SEPARATED = [(110, 120, 30), (120, 380, 26), (390, 110, 28), (400, 400, 24)]
PAIR_A = (256, 250, 9)
PAIR_B = (256, 265, 8)


def _frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, energies and the drift (rows, cols) of a scene whose absorption rises at the
    edge frame, where particle B appears."""
    rng = np.random.default_rng(12)
    rows, cols = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    drift = np.stack([np.linspace(0.0, 2.5, N_FRAMES), np.linspace(0.0, -1.8, N_FRAMES)], axis=1)
    energies = np.linspace(8300.0, 8400.0, N_FRAMES)
    frames = []
    for i, (dy, dx) in enumerate(drift):
        contrast = 1.0 if i < EDGE_FRAME else 2.5
        od = np.zeros((SIZE, SIZE))
        for r, c, radius in [*SEPARATED, PAIR_A]:
            od += 0.12 * contrast * np.clip(radius - np.hypot(rows - r - dy, cols - c - dx), 0, 1)
        if i >= EDGE_FRAME:
            r, c, radius = PAIR_B
            od += 0.3 * np.clip(radius - np.hypot(rows - r - dy, cols - c - dx), 0, 1)
        frames.append(rng.poisson(4000.0 * np.exp(-od)).astype(np.float32))
    return np.stack(frames), energies, drift


@pytest.fixture(scope="module")
def scene():
    return _frames()


def _track(scene, **track) -> tuple[object, np.ndarray]:
    frames, energies, drift = scene
    params = XanesParams.model_validate({"track": track})
    tracker = XanesTracker(params, flat=np.full(frames.shape[1:], 4000.0, dtype=np.float32))
    for frame, energy in zip(frames, energies, strict=True):
        tracker.add_frame(frame, float(energy))
    result = tracker.finalize()
    tracker.close()
    return result, drift


def _label_at(labels: np.ndarray, centre: tuple[int, int, int]) -> int:
    r, c, _ = centre
    return int(labels[r, c])


def test_particle_appearing_next_to_a_tracked_one_joins(scene):
    result, drift = _track(scene)
    a, b = _label_at(result.labels, PAIR_A), _label_at(result.labels, PAIR_B)
    assert a > 0 and b > 0 and a != b, (a, b)
    shift_b = result.particle_shift[b - 1]
    seen = np.isfinite(shift_b[:, 0])
    assert not seen[: EDGE_FRAME - 1].any()  # not visible before the edge: unknown
    assert seen[EDGE_FRAME:].mean() >= 0.9
    error = shift_b[seen] - drift[seen]
    assert float(np.max(np.hypot(error[:, 0], error[:, 1]))) <= 1.0
    shift_a = result.particle_shift[a - 1]
    assert np.isfinite(shift_a[:, 0]).mean() >= 0.9


def test_without_the_split_the_neighbour_is_taken_for_the_tracked_particle(scene):
    result, _ = _track(scene, redetect_split_refused=False)
    a, b = _label_at(result.labels, PAIR_A), _label_at(result.labels, PAIR_B)
    assert a > 0 and b in (0, a)


LARGE = (256, 256)
LOBE_ANGLES = (0.3, 2.4)


def _lobed_particle(rows: np.ndarray, cols: np.ndarray, neck_px: float) -> np.ndarray:
    """A 40 px core and two 10 px lobes joined to it by necks ``2 x neck_px`` wide (a faint
    frame's ragged threshold): the watershed cuts it into three."""
    r0, c0 = LARGE
    core = np.hypot(rows - r0, cols - c0) <= 40
    for angle in LOBE_ANGLES:
        along = (rows - r0) * np.sin(angle) + (cols - c0) * np.cos(angle)
        across = -(rows - r0) * np.cos(angle) + (cols - c0) * np.sin(angle)
        lobe = np.hypot(rows - r0 - 56 * np.sin(angle), cols - c0 - 56 * np.cos(angle)) <= 10
        core |= lobe | ((along > 30) & (along < 50) & (np.abs(across) <= neck_px))
    return core


def _fragment_frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of a scene whose large particle shows as a lobed core before the edge frame and
    whole (a 68 px disc holding the lobes) after it, with the drift."""
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    drift = np.stack([np.linspace(0.0, 2.0, N_FRAMES), np.linspace(0.0, 1.5, N_FRAMES)], axis=1)
    energies = np.linspace(8300.0, 8400.0, N_FRAMES)
    frames = []
    for i, (dy, dx) in enumerate(drift):
        contrast = 1.0 if i < EDGE_FRAME else 2.5
        od = np.zeros((SIZE, SIZE))
        for r, c, radius in SEPARATED:
            od += 0.12 * contrast * np.clip(radius - np.hypot(rows - r - dy, cols - c - dx), 0, 1)
        if i < EDGE_FRAME:
            od += 0.12 * _lobed_particle(rows - dy, cols - dx, 3.0)
        else:
            # thicker in the middle: the core's outline stays visible inside the whole particle
            centre = np.hypot(rows - LARGE[0] - dy, cols - LARGE[1] - dx)
            od += 0.2 * np.clip(68 - centre, 0, 1) + 0.15 * np.clip(40 - centre, 0, 1)
        frames.append(rng.poisson(4000.0 * np.exp(-od)).astype(np.float32))
    return np.stack(frames), energies, drift


@pytest.fixture(scope="module")
def fragment_scene():
    return _fragment_frames()


def _labels_on_large(labels: np.ndarray) -> list[int]:
    rows, cols = np.mgrid[: labels.shape[0], : labels.shape[1]]
    inside = np.hypot(rows - LARGE[0], cols - LARGE[1]) <= 68
    return sorted(int(k) for k in np.unique(labels[inside]) if k > 0)


def test_fragments_of_a_faint_particle_seen_whole_later_are_one_particle(fragment_scene):
    result, drift = _track(fragment_scene)
    on_large = _labels_on_large(result.labels)
    assert len(on_large) == 1, on_large
    shift = result.particle_shift[on_large[0] - 1]
    seen = np.isfinite(shift[:, 0])
    assert seen.mean() >= 0.9
    error = shift[seen] - drift[seen]
    assert float(np.max(np.hypot(error[:, 0], error[:, 1]))) <= 1.0
    # the dropped fragments are unknown, not 0.0, and no longer counted
    assert result.particle_shift.shape[0] >= 3
    assert int(np.sum(np.all(np.isnan(result.particle_shift[..., 0]), axis=1))) == 2


def test_without_absorbing_the_fragments_stay_particles(fragment_scene):
    result, _ = _track(fragment_scene, absorb_fragment_fraction=None)
    assert len(_labels_on_large(result.labels)) == 3
