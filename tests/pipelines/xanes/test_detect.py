"""Particle detection on real SSRL TXM frames and on synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipelines.xanes.detect import detect_particles, label_maxima, own_peak_mask, relabel_by_area
from pipelines.xanes.params import DetectParams
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


def _disc_frame(discs, shape=(512, 512), noise=0.01, seed=0):
    """Optical density of flat-topped discs ``(row, col, radius, od)`` on a noisy background,
    with the truth labels (later discs on top)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    od = rng.normal(0.0, noise, shape)
    truth = np.zeros(shape, dtype=np.int32)
    for k, (r, c, radius, value) in enumerate(discs):
        inside = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        od[inside] += value
        truth[inside] = k + 1
    return od.astype(np.float32), truth


def _majority(labels, truth):
    return {
        k: int(np.bincount(truth[labels == k]).argmax()) for k in range(1, int(labels.max()) + 1)
    }


def test_small_particle_touching_a_large_one_gets_its_own_label_with_size_scaled_seeds():
    # a 9 px particle overlapping a 60 px one by 2 px: its distance-transform peak lies within
    # a typical particle's seed spacing of the large particle's deeper pixels, not within the
    # large particle's own inscribed disc
    od, truth = _disc_frame([(256, 256, 60, 0.3), (256, 256 + 67, 9, 0.3)])
    typical = detect_particles(od, background_removed=True)
    assert sorted(_majority(typical, truth).values()) == [1]  # the typical spacing merges it
    labels = detect_particles(
        od, params=DetectParams(split_seeds="size_scaled"), background_removed=True
    )
    majority = _majority(labels, truth)
    assert sorted(majority.values()) == [1, 2], majority
    small = [k for k, t in majority.items() if t == 2][0]
    assert np.sum((labels == small) & (truth == 2)) >= 0.5 * np.sum(truth == 2)
    assert np.sum(labels == small) <= 2 * np.sum(truth == 2)


def test_small_beside_large_seeds_split_a_small_particle_but_not_the_lobes_of_a_large_one():
    # the 9 px particle overlapping a 60 px one (as above): its seed's height (inscribed
    # radius) is well under half of its neighbour's, so it keeps its own label
    od, truth = _disc_frame([(256, 256, 60, 0.3), (256, 256 + 67, 9, 0.3)])
    params = DetectParams(split_seeds="small_beside_large")
    labels = detect_particles(od, params=params, background_removed=True)
    majority = _majority(labels, truth)
    assert sorted(majority.values()) == [1, 2], majority
    small = [k for k, t in majority.items() if t == 2][0]
    assert np.sum((labels == small) & (truth == 2)) >= 0.5 * np.sum(truth == 2)
    assert np.sum(labels == small) <= 2 * np.sum(truth == 2)
    # one irregular particle: a 40 px disc with two 24 px lobes. The size-scaled seeds cut
    # the lobes off (their maxima lie farther from the centre than its inscribed radius);
    # their height is 0.6 of the centre's, so here it stays one label
    lobed = [(256, 256, 40, 0.0), (256, 256 + 45, 24, 0.0), (256 - 45, 256, 24, 0.0)]
    noise, truth = _disc_frame(lobed)
    od = noise + np.float32(0.3) * (truth > 0)
    scaled = detect_particles(
        od, params=DetectParams(split_seeds="size_scaled"), background_removed=True
    )
    assert scaled.max() == 3  # the size-scaled seeds fragment it
    labels = detect_particles(od, params=params, background_removed=True)
    assert labels.max() == 1
    assert np.sum((labels == 1) & (truth > 0)) >= 0.9 * np.sum(truth > 0)


def test_faint_small_particle_beside_bright_ones_found_by_local_contrast():
    # a 20 px particle at OD 0.25 (25 noise sd) beside bright large ones: the frame's threshold
    # (half the Otsu level the bright ones set, about 0.5) drops it; the local-contrast rule
    # (faint_noise_sigmas) keeps it at its own half maximum, and finds no noise blob
    discs = [(180, 180, 80, 2.0), (380, 360, 45, 1.5), (400, 120, 10, 0.25)]
    od, truth = _disc_frame(discs)
    frame_threshold = detect_particles(od, background_removed=True)
    assert 3 not in _majority(frame_threshold, truth).values()
    labels = detect_particles(
        od, params=DetectParams(faint_noise_sigmas=6.0), background_removed=True
    )
    majority = _majority(labels, truth)
    assert sorted(majority.values()) == [1, 2, 3], majority
    small = [k for k, t in majority.items() if t == 3][0]
    assert np.sum((labels == small) & (truth == 3)) >= 0.5 * np.sum(truth == 3)
    assert np.sum(labels == small) <= 1.5 * np.sum(truth == 3)


def test_faint_small_particles_found_at_their_own_half_maximum():
    # bright large particles set the frame's (Otsu) threshold; small particles 15-25 noise sd
    # above the background lie below it. Cut at half of their OWN peak (own_peak_noise_sigmas)
    # they are found with about their true area, one of them 6 px from the bright one's edge
    discs = [
        (200, 200, 70, 1.5),
        (380, 380, 40, 1.0),
        (420, 120, 9, 0.15),
        (100, 420, 8, 0.2),
        (60, 120, 10, 0.25),
        (200, 200 + 70 + 6 + 10, 10, 0.2),
    ]
    od, truth = _disc_frame(discs)
    # optics blur, then the detector's noise
    od = ndimage.gaussian_filter(od, 1.0)
    od += np.random.default_rng(1).normal(0.0, 0.01, od.shape).astype(np.float32)
    frame_threshold = _majority(detect_particles(od, background_removed=True), truth)
    assert sorted(frame_threshold.values()) == [1, 2]  # main's default finds the bright only
    params = DetectParams(own_peak_noise_sigmas=4.0)
    labels = detect_particles(od, params=params, background_removed=True)
    majority = _majority(labels, truth)
    assert sorted(majority.values()) == [1, 2, 3, 4, 5, 6], majority
    for k, t in majority.items():
        area = np.sum(truth == t)
        assert np.sum((labels == k) & (truth == t)) >= 0.7 * area, (k, t)
        assert np.sum(labels == k) <= 1.3 * area, (k, t)


def test_own_peak_threshold_adds_no_rim_ring_or_gradient_objects():
    # one bright particle with a 12 px linear rim (its blurred edge has no maximum of its own)
    # on zone-plate-like rings of 5 noise sd and an illumination gradient: one object, the
    # same as the frame's threshold gives
    rows, cols = np.mgrid[:512, :512]
    rings = 0.05 * np.sin(2.0 * np.pi * np.hypot(rows - 300, cols - 180) / 20.0)
    particle = 1.5 * np.clip((60.0 - np.hypot(rows - 250, cols - 300)) / 12.0, 0.0, 1.0)
    noise = np.random.default_rng(2).normal(0.0, 0.01, rows.shape)
    od = (rings + 0.0003 * cols + particle + noise).astype(np.float32)
    default = detect_particles(od, background_removed=True)
    labels = detect_particles(
        od, params=DetectParams(own_peak_noise_sigmas=4.0), background_removed=True
    )
    assert default.max() == 1
    assert labels.max() == 1
    assert abs(int(np.sum(labels > 0)) - int(np.sum(default > 0))) <= 0.02 * np.sum(default > 0)
    # without the particle: nothing
    empty = detect_particles(
        od - particle.astype(np.float32),
        params=DetectParams(own_peak_noise_sigmas=4.0),
        background_removed=True,
    )
    assert empty.max() == 0


def test_own_peak_mask_joins_a_rim_bump_to_its_particle():
    # a bump on the 40 px rim of a bright plateau: a maximum of its own, but its dip is far
    # below a quarter of its height, so it is cut at the plateau's half maximum, not at its own
    rows, cols = np.mgrid[:160, :160]
    plateau = np.clip((70.0 - np.hypot(rows - 80, cols - 80)) / 40.0, 0.0, 1.0)
    bump = 0.1 * np.exp(-((rows - 80) ** 2 + (cols - 80 - 50) ** 2) / (2.0 * 1.5**2))
    smooth = plateau + bump
    maxima = ndimage.maximum_filter(smooth, size=3) == smooth
    assert maxima[75:86, 125:136].any()  # the bump is a maximum
    own, cut = own_peak_mask(
        smooth, 0.0, 0.001, low_sigmas=4.0, min_dip=0.003, min_dip_fraction=0.25, fraction=0.5
    )
    assert not cut.any()
    assert np.array_equal(own, smooth > 0.5)
    with pytest.raises(ValueError, match="noise"):
        own_peak_mask(
            smooth, 0.0, 0.0, low_sigmas=4.0, min_dip=0.0, min_dip_fraction=0.25, fraction=0.5
        )
