"""Particle detection on real SSRL TXM frames and on synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipelines.xanes.detect import detect_particles, label_maxima, relabel_by_area
from pipelines.xanes.prepare import optical_density, remove_background
from tests.pipelines.xanes.conftest import truth_index

# Large particles picked by eye in the README frames (row, col); the sample drifts by about
# (25, 12) px between the two energies.
LARGE = {
    "08324.0": [(682, 413), (366, 616), (204, 449)],
    "08354.0": [(713, 416), (390, 628), (225, 460)],
}


@pytest.mark.parametrize("tag", ["08324.0", "08354.0"])
def test_real_frames_large_particles_and_no_background_blobs(ssrl, tag):
    real = ssrl[tag]
    od = optical_density(real.samples[0], real.flat)
    labels = detect_particles(od)
    assert labels.dtype == np.int32
    n = int(labels.max())
    assert 3 <= n <= 20
    for centre in LARGE[tag]:
        label = labels[centre]
        assert label > 0, f"large particle at {centre} missed"
        assert np.sum(labels == label) >= 10_000
    # no background blobs: the typical pixel of every object (>= 1000 px) is above the
    # per-pixel background noise, which a noise blob of that size never reaches ...
    flat_od = remove_background(od)
    background = flat_od[ndimage.binary_dilation(labels > 0, iterations=10) == 0]
    noise = 1.4826 * np.median(np.abs(background - np.median(background)))
    contrast = ndimage.median(flat_od, labels, np.arange(1, n + 1))
    assert np.all(contrast >= 1.0 * noise), (contrast, noise)
    # ... and the empty upper-left corner of the field stays empty
    assert not np.any(labels[:150, :300])


def test_synthetic_faint_frame_finds_every_particle(synthetic_scan):
    scan = synthetic_scan
    od = optical_density(scan.frames[0], scan.flat.mean(axis=0), scan.dark)
    labels = detect_particles(od)
    which = truth_index(scan.scene, labels)
    assert sorted(which.tolist()) == list(range(scan.scene.n_particles))
    truth = scan.scene.truth_labels()
    for k, t in enumerate(which):
        ours, theirs = labels == k + 1, truth == t + 1
        iou = np.sum(ours & theirs) / np.sum(ours | theirs)
        assert iou >= 0.6


def test_empty_frame_has_no_particles():
    rng = np.random.default_rng(3)
    od = rng.normal(0.5, 0.02, (128, 128)).astype(np.float32)
    assert detect_particles(od).max() == 0


def test_relabel_by_area_orders_and_compacts():
    labels = np.zeros((10, 10), dtype=np.int64)
    labels[0, :2] = 7
    labels[5:, 5:] = 3
    labels[2, 2:5] = 9
    out = relabel_by_area(labels)
    assert out.dtype == np.int32
    assert np.sum(out == 1) == 25 and np.sum(out == 2) == 3 and np.sum(out == 3) == 2


def test_bad_input():
    with pytest.raises(ValueError, match="od"):
        detect_particles(np.zeros((3, 4, 5)))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 40), cols=st.integers(1, 40))
def test_label_maxima_is_ndimage_maximum(seed, rows, cols):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, cols)).astype(np.float32)
    labels, n = ndimage.label(rng.random((rows, cols)) > 0.5)
    if n == 0:
        return
    expected = ndimage.maximum(values, labels, np.arange(1, n + 1))
    np.testing.assert_array_equal(label_maxima(values, labels, n), expected)
