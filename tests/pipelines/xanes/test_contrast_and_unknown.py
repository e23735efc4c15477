"""Registration that does not move with the contrast, and NaN (not 0.0) when unknown (issue 12)."""

from __future__ import annotations

import numpy as np

from pipelines.xanes import XanesParams, XanesTracker, align_stack
from synthetic.txm import TxmScene, default_energies


def _disc_scene(contrasts: np.ndarray, shifts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Counts of a textured particle and a second one, the first scaled per frame."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:160, 0:160].astype(np.float64)
    texture = 1.0 + 0.3 * np.sin(rows / 3.0) * np.cos(cols / 5.0)
    frames = []
    for contrast, (dy, dx) in zip(contrasts, shifts, strict=True):
        r1 = np.hypot(rows - 70 - dy, (cols - 60 - dx) * 1.2)
        r2 = np.hypot(rows - 110 - dy, cols - 120 - dx)
        od = 0.2 + contrast * 0.25 * texture * np.clip(28 - r1, 0, 1)
        od += 0.3 * np.clip(18 - r2, 0, 1)
        frames.append(rng.poisson(4000 * np.exp(-od)).astype(np.float32))
    return np.stack(frames)


def test_contrast_scaled_particle_keeps_its_shift():
    n = 12
    rng = np.random.default_rng(4)
    contrasts = np.array([1.0, 2.0, 4.0, 1.5, 3.0, 2.5, 4.0, 1.0, 3.5, 2.0, 4.0, 2.0])
    shifts = np.cumsum(rng.normal(0, 0.5, (n, 2)), axis=0)
    shifts[0] = 0
    frames = _disc_scene(contrasts, shifts)
    flat = np.full(frames.shape[1:], 4000.0, dtype=np.float32)
    result = align_stack(frames, np.linspace(8300, 8400, n), flat=flat, params=XanesParams())
    label = int(result.labels[70, 60])
    assert label > 0
    error = result.particle_shift[label - 1] - shifts
    assert np.all(np.isfinite(error))
    # the goal (0.3 px RMS); measured 0.16 px, 0.26 px worst frame
    assert float(np.sqrt(np.mean(np.sum(error**2, axis=1)))) <= 0.3
    assert float(np.max(np.abs(error))) <= 0.5


def test_lost_particles_and_frames_are_nan_not_zero():
    scene = TxmScene.random(3, shape=(128, 128), n_particles=4, n_frames=6)
    energies = default_energies(8)[:6]
    flat = scene.flat(8400.0)
    tracker = XanesTracker(XanesParams(), flat=flat, dark=scene.dark())
    results = []
    for i, energy in enumerate(energies):
        # frame 3: the sample is out of the beam (nothing to register)
        frame = scene.flat(energy) if i == 3 else scene.frame(energy, scan=0, index=i)
        results.append(tracker.add_frame(frame, float(energy)))
    assert tracker.n_particles >= 1
    lost = results[3]
    assert lost.n_found == 0 and not lost.trusted
    assert np.all(np.isnan(lost.global_shift))
    assert np.all(np.isnan(lost.particle_shift)) and not np.any(lost.particle_shift == 0.0)
    assert np.all(np.isnan(lost.particle_com))
    assert results[4].n_found >= 1 and results[4].trusted
    final = tracker.finalize()
    assert np.all(np.isnan(final.global_shift[3])) and final.n_found[3] == 0
    assert not final.trusted[3] and final.trusted[4]
    assert np.all(np.isnan(final.particle_shift[:, 3]))
