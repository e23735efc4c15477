"""Live tracker and batch alignment on synthetic scans with ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes.params import XanesParams
from pipelines.xanes.tracker import XanesTracker, align_stack
from synthetic.txm import TxmScene, default_energies
from tests.pipelines.xanes.conftest import truth_index


@pytest.fixture(scope="module")
def aligned(synthetic_scan):
    scan = synthetic_scan
    return align_stack(scan.frames, scan.energies, flat=scan.flat, dark=scan.dark)


def test_registration_error_against_truth(synthetic_scan, aligned):
    scene = synthetic_scan.scene
    n = synthetic_scan.energies.size
    assert aligned.particle_shift.shape == (scene.n_particles, n, 2)
    which = truth_index(scene, aligned.labels)
    assert sorted(which.tolist()) == list(range(scene.n_particles)), "one label per particle"
    truth = np.stack([scene.truth_shift(0, i) for i in range(n)], axis=1)[which]
    assert np.all(np.isfinite(aligned.particle_shift)), "every particle found in every frame"
    rms = np.sqrt(np.mean(np.sum((aligned.particle_shift - truth) ** 2, axis=-1)))
    assert rms <= 0.3, f"registration RMS {rms:.3f} px"
    np.testing.assert_allclose(
        aligned.particle_shift, aligned.particle_com - aligned.particle_com[:, :1], atol=1e-9
    )
    truth_global = np.median(truth, axis=0)
    global_rms = np.sqrt(np.mean(np.sum((aligned.global_shift - truth_global) ** 2, axis=-1)))
    assert global_rms <= 0.3


def test_edge_energy_map_against_truth(synthetic_scan, aligned):
    truth = synthetic_scan.scene.truth_edge_energy(0)
    assert aligned.edge_energy.dtype == np.float32
    assert aligned.whiteline_energy.dtype == np.float32
    inside = aligned.labels > 0
    assert np.all(np.isnan(aligned.edge_energy[~inside]))
    both = np.isfinite(truth) & np.isfinite(aligned.edge_energy)
    assert both.sum() >= 0.6 * inside.sum()
    error = np.median(np.abs(aligned.edge_energy[both] - truth[both]))
    assert error <= 1.0, f"edge energy median abs error {error:.2f} eV"
    assert aligned.spectra.shape == (aligned.labels.max(), synthetic_scan.energies.size)
    assert np.all(np.isfinite(aligned.spectra))


def test_live_results_match_batch(synthetic_scan, aligned):
    scan = synthetic_scan
    tracker = XanesTracker(XanesParams(), flat=scan.flat, dark=scan.dark)
    for i in range(5):
        result = tracker.add_frame(scan.frames[i], float(scan.energies[i]))
        assert result.index == i
        np.testing.assert_allclose(result.particle_shift, aligned.particle_shift[:, i])
        np.testing.assert_allclose(result.global_shift, aligned.global_shift[i])
        assert result.n_found == tracker.n_particles
    np.testing.assert_array_equal(tracker.labels, aligned.labels)


def test_stage_jump_and_vanishing_particle_keep_identities():
    """A 9 px stage move (feedback) and a particle hidden for 5 frames: no identity swap."""
    scene = TxmScene.random(11, shape=(192, 192), n_particles=6, n_frames=40)
    energies = default_energies(40)
    flat = scene.flat(8350.0)
    dark = scene.dark()
    tracker = XanesTracker(XanesParams(), flat=flat, dark=dark)
    offsets = [(0.0, 0.0)] * 20 + [(9.0, -7.0)] * 20
    hidden = range(12, 17)
    results = []
    for i, energy in enumerate(energies):
        frame = scene.frame(energy, scan=0, index=i, stage_offset_px=offsets[i])
        if i == 0:
            first = frame
        if i in hidden:
            frame = _hide_particle(frame, tracker.labels, 1, first, flat)
        results.append(tracker.add_frame(frame, energy))
    which = truth_index(scene, tracker.labels)
    for i, result in enumerate(results):
        truth = scene.truth_shift(0, i)[which] + np.asarray(offsets[i])
        found = result.found.copy()
        if i in hidden:
            assert not found[0], "a hidden particle must not be reported"
            found[0] = False
        assert found.sum() >= tracker.n_particles - 1
        err = np.abs(result.particle_shift[found] - truth[found])
        assert np.all(err <= 1.0), (i, err)
    assert results[-1].found.all()


def _hide_particle(frame, labels, label, first, flat):
    """Replace a particle's (dilated) footprint by the flat level: it vanished."""
    from scipy import ndimage

    region = ndimage.binary_dilation(labels == label, iterations=6)
    out = frame.copy()
    out[region] = (flat * (np.median(frame / flat)))[region]
    return out


def test_input_validation():
    tracker = XanesTracker(XanesParams())
    with pytest.raises(RuntimeError):
        _ = tracker.labels
    with pytest.raises(ValueError, match="frame"):
        tracker.add_frame(np.zeros((3, 4, 5)), 8300.0)
    with pytest.raises(ValueError, match="energy_ev"):
        tracker.add_frame(np.ones((64, 64)), float("nan"))
    tracker.add_frame(np.ones((64, 64), dtype=np.uint16), 8300.0)
    with pytest.raises(ValueError, match="frame shape"):
        tracker.add_frame(np.ones((32, 64)), 8301.0)
    with pytest.raises(ValueError, match="params"):
        XanesTracker({"track": {}})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="energies"):
        align_stack(np.ones((3, 16, 16)), np.ones(2))


def test_raw_spectra_are_the_mean_optical_density_before_normalisation(synthetic_scan, aligned):
    from pipelines.xanes.spectra import analyse_spectra

    raw = aligned.spectra_raw
    assert raw.shape == aligned.spectra.shape and np.all(np.isfinite(raw))
    for k in range(raw.shape[0]):  # normalising the raw spectrum gives the stored one
        again = analyse_spectra(synthetic_scan.energies, raw[k], params=XanesParams().spectra)
        np.testing.assert_allclose(again.normalised, aligned.spectra[k], rtol=1e-5, atol=1e-6)
    # four frames cannot be normalised, the raw optical density is still known
    scan = synthetic_scan
    short = align_stack(scan.frames[:4], scan.energies[:4], flat=scan.flat, dark=scan.dark)
    assert np.isnan(short.spectra).all()
    assert short.spectra_raw.shape == short.spectra.shape
    assert np.isfinite(short.spectra_raw).all()
