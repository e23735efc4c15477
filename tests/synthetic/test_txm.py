"""Synthetic TXM-XANES scene generator: determinism, ground truth and the camera API."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from synthetic.txm import TxmScene, default_energies


@pytest.fixture(scope="module")
def scene():
    return TxmScene.random(3, shape=(128, 128), n_particles=4, n_scans=2, n_frames=20)


def test_default_energies():
    energies = default_energies()
    assert energies.shape == (143,)
    assert energies[0] == 8250.0 and energies[-1] == 8500.0
    assert np.all(np.diff(energies) > 0)
    edge = (energies >= 8320) & (energies < 8380)
    assert edge.sum() >= 0.5 * energies.size
    with pytest.raises(ValueError, match="n"):
        default_energies(3)


def test_deterministic_and_dtypes(scene):
    again = TxmScene.random(3, shape=(128, 128), n_particles=4, n_scans=2, n_frames=20)
    a = scene.frame(8345.0, scan=1, index=5)
    np.testing.assert_array_equal(a, again.frame(8345.0, scan=1, index=5))
    assert a.dtype == np.float32 and a.shape == (128, 128)
    assert scene.flat(8345.0).dtype == np.float32
    assert scene.dark().dtype == np.float32
    other = scene.frame(8345.0, scan=1, index=5, rng=np.random.default_rng(9))
    assert not np.array_equal(a, other)


def test_truth_consistency(scene):
    labels = scene.truth_labels()
    assert labels.dtype == np.int32 and labels.max() == scene.n_particles
    np.testing.assert_array_equal(scene.truth_shift(0, 0), 0.0)
    np.testing.assert_array_equal(scene.truth_global_shift(0, 0), 0.0)
    centres0 = ndimage.center_of_mass(labels > 0, labels, np.arange(1, scene.n_particles + 1))
    np.testing.assert_allclose(scene.truth_centres(0, 0), centres0)
    shift = scene.truth_shift(1, 7)
    assert shift.shape == (scene.n_particles, 2)
    np.testing.assert_allclose(scene.truth_centres(1, 7), np.array(centres0) + shift)
    nonrigid = shift - scene.truth_global_shift(1, 7)
    assert np.ptp(nonrigid, axis=0).max() > 0.1, "particles move on their own"
    edge = scene.truth_edge_energy(0)
    assert edge.dtype == np.float32
    assert np.all(np.isnan(edge[labels == 0]))
    inside = edge[labels > 0]
    assert np.all((inside >= 8333.0) & (inside <= 8350.0))
    assert np.nanstd(inside) > 0.5, "edge energy varies within and between particles"
    assert np.nanmean(scene.truth_edge_energy(1)) > np.nanmean(edge), "charging raises the edge"
    with pytest.raises(ValueError, match="scan"):
        scene.truth_shift(2, 0)


def test_particles_move_with_truth_and_stage_offset(scene):
    """Noise-free OD moments follow truth_shift, and the stage offset adds to it."""
    labels = scene.truth_labels()
    k = 0
    region = ndimage.binary_dilation(labels == k + 1, iterations=12)
    ref = scene.optical_density(8400.0, scan=0, index=0)
    c0 = np.array(ndimage.center_of_mass(np.where(region, ref - np.median(ref), 0)))
    for scan, index, offset in [(0, 9, (0.0, 0.0)), (1, 3, (2.5, -1.5))]:
        od = scene.optical_density(8400.0, scan=scan, index=index, stage_offset_px=offset)
        moved = np.roll(
            region, np.round(scene.truth_shift(scan, index)[k] + offset).astype(int), axis=(0, 1)
        )
        c = np.array(ndimage.center_of_mass(np.where(moved, od - np.median(od), 0)))
        np.testing.assert_allclose(c - c0, scene.truth_shift(scan, index)[k] + offset, atol=0.3)


def test_edge_contrast_and_noise(scene):
    labels = scene.truth_labels() > 0
    dark = scene.dark()
    od = {
        e: -np.log((scene.frame(e, scan=0, index=0) - dark) / (scene.flat(e) - dark))
        for e in (8250.0, 8450.0)
    }
    below = od[8250.0][labels].mean() - od[8250.0][~labels].mean()
    above = od[8450.0][labels].mean() - od[8450.0][~labels].mean()
    assert 0.05 < below < above, "faint below the edge, strong above"


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        TxmScene.random(0, shape=(32, 32))
    with pytest.raises(ValueError, match="n_particles"):
        TxmScene.random(0, n_particles=0)
