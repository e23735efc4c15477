"""The dense TXM scene family (issue 12): a generator written apart from synthetic.txm."""

from __future__ import annotations

import numpy as np

from synthetic.txm_dense import DenseTxmScene, dense_energies


def test_dense_scene_has_large_touching_and_border_cut_particles():
    scene = DenseTxmScene.random(5, shape=(256, 256), n_particles=12, n_frames=6)
    radii = np.array([lump.radius for lump in scene.lumps])
    assert radii.min() >= 7.5 and radii.max() <= 64.0 + 1e-9
    labels = scene.truth_labels(0)
    # some particles are cut by the frame border, some are wholly visible
    visible = scene.wholly_visible()
    assert 0 < visible.sum() < scene.n_particles
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    assert np.all(~visible[border[border > 0] - 1])


def test_dense_scene_drift_is_exact_and_frames_are_counts():
    scene = DenseTxmScene.random(6, shape=(128, 128), n_particles=6, n_frames=5)
    energies = dense_energies(12)
    frame = scene.frame(float(energies[0]), 0)
    assert frame.dtype == np.float32 and frame.shape == (128, 128)
    assert np.all(frame >= 0) and np.all(frame == np.round(frame))
    assert 0.5 * scene.counts < float(np.median(scene.flat(8400.0))) < 1.5 * scene.counts
    np.testing.assert_array_equal(scene.truth_shift(0), np.zeros((scene.n_particles, 2)))
    # rigid drift plus a sub-pixel per-particle wobble
    spread = scene.truth_shift(4) - scene.truth_global_shift(4) + scene.truth_global_shift(0)
    assert np.all(np.abs(spread) <= 0.8 + 1e-9)


def test_contrast_rises_across_the_edge():
    scene = DenseTxmScene.random(7, shape=(128, 128), n_particles=5, n_frames=2)
    below = scene.optical_density(8250.0, 0)
    above = scene.optical_density(8450.0, 0)
    inside = scene.truth_labels(0) > 0
    assert np.median((above - 0.05)[inside] / (below - 0.05)[inside]) >= 2.0
