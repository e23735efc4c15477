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


@pytest.mark.xfail(
    strict=True,
    reason="issue 12 goals not met on the dense family: faint pre-edge particles under the "
    "zone-plate rings are missed at frame 0 and the static pattern holds the registration",
)
def test_dense_scene_goals(dense):
    scene, result, truth = dense
    which = _truth_of_labels(scene, result.labels)
    visible = np.nonzero(scene.wholly_visible())[0]
    tracked = [
        j
        for j in visible
        if j in which
        and np.mean(np.isfinite(result.particle_shift[list(which).index(j), :, 0])) >= 0.9
    ]
    assert len(tracked) >= 0.95 * visible.size
    errors = [result.particle_shift[k] - truth[j] for k, j in enumerate(which) if j >= 0]
    error = np.concatenate(errors)
    error = error[np.isfinite(error[:, 0])]
    assert float(np.sqrt(np.mean(np.sum(error**2, axis=1)))) <= 0.3
