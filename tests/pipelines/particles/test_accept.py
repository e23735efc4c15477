"""Instance acceptance (pipelines.particles.accept): binder-like instances go, particles stay,
also the small, low-contrast particles of the live service's simulated tomograms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.particles.accept import (
    drop_unlike_particles,
    instance_mean,
    phase_levels,
    reach_map,
    solid_reach,
    trim_dark_outline,
    trim_unlike_voxels,
)
from pipelines.particles.instances import InstanceParams, segment_instances
from pipelines.tomo.fbp import reconstruct
from synthetic.cathode import CathodeParams, make_cathode_volume
from synthetic.scan import simulate_scan


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grey levels, particle probability, envelope probability and labels of one slice: a
    bright particle (1), a faint patch the particle network calls particle (2) and a bright
    patch the envelope network does not (3), on a background at 0.2."""
    yy, xx = np.mgrid[:80, :80]
    disk = [(yy - cy) ** 2 + (xx - cx) ** 2 < 64 for cy, cx in ((20, 20), (55, 55), (20, 60))]
    grey = np.full((1, 80, 80), 0.2, dtype=np.float32)
    foreground = np.zeros_like(grey)
    envelope = np.zeros_like(grey)
    labels = np.zeros((1, 80, 80), dtype=np.int32)
    for k, (mask, level, env) in enumerate(
        zip(disk, (0.8, 0.3, 0.8), (0.9, 0.9, 0.2), strict=True), 1
    ):
        grey[0][mask] = level
        foreground[0][mask] = 0.95
        envelope[0][mask] = env
        labels[0][mask] = k
    return grey, foreground, envelope, labels


def test_phase_levels_are_each_slices_medians_of_the_networks_two_sides() -> None:
    grey, foreground, _, _ = scene()
    # slice 0: the scene; slice 1: no particle; slice 2: no contrast; slice 3: the scene darker
    grey4 = np.concatenate([grey, grey, np.full_like(grey, 0.5), grey * 0.5])
    fg4 = np.concatenate([foreground, np.zeros_like(foreground), foreground, foreground])
    solid, background = phase_levels(grey4, fg4)
    np.testing.assert_allclose(solid, [0.8, np.nan, np.nan, 0.4], atol=1e-6)
    np.testing.assert_allclose(background, [0.2, np.nan, np.nan, 0.1], atol=1e-6)
    reach = reach_map(grey4, (solid, background))
    np.testing.assert_allclose(reach[0], reach[3], atol=1e-6)  # relative to each slice
    assert np.isnan(reach[1]).all() and np.isnan(reach[2]).all()
    with pytest.raises(ValueError, match="solid level must exceed"):
        reach_map(grey, (np.array([0.2]), np.array([0.8])))


def test_solid_reach_and_instance_mean() -> None:
    grey, _, envelope, labels = scene()
    reach = solid_reach(labels, reach_map(grey, (np.array([0.8]), np.array([0.2]))))
    np.testing.assert_allclose(reach[1:], [1.0, 1 / 6, 1.0], atol=1e-6)
    np.testing.assert_allclose(instance_mean(labels, envelope)[1:], [0.9, 0.9, 0.2], atol=1e-6)
    assert np.isnan(reach[0])
    # an instance only in slices without levels has no reach (and is not dropped for it)
    assert np.isnan(solid_reach(labels, np.full(labels.shape, np.nan))[1])


def test_drop_unlike_particles_keeps_the_particle_only() -> None:
    grey, foreground, envelope, labels = scene()
    out = drop_unlike_particles(labels, grey, foreground, envelope=envelope)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, (labels == 1).astype(np.int32))
    # each check alone removes its own instance; both off keep all (renumbered 1..n)
    only_reach = drop_unlike_particles(labels, grey, foreground, envelope=None)
    assert np.array_equal(only_reach > 0, (labels == 1) | (labels == 3))
    assert set(np.unique(only_reach)) == {0, 1, 2}
    only_envelope = drop_unlike_particles(
        labels, grey, foreground, envelope=envelope, min_solid_reach=0
    )
    assert np.array_equal(only_envelope > 0, (labels == 1) | (labels == 2))
    kept = drop_unlike_particles(
        labels, grey, foreground, envelope=envelope, min_envelope=0, min_solid_reach=0
    )
    np.testing.assert_array_equal(kept, labels)


def test_trim_unlike_voxels_removes_a_faint_rim_and_keeps_cracks_and_cores() -> None:
    yy, xx = np.mgrid[:60, :60]
    r = np.hypot(yy - 30, xx - 30)
    solid = r < 12
    rim = (r >= 12) & (r < 16)  # faint binder the particle network added to the particle
    core = r < 3  # a dark core the envelope network misses
    crack = solid & (np.abs(yy - 30) <= 1) & (xx > 36)  # a dark surface crack it sees
    grey = np.full((1, 60, 60), 0.2, dtype=np.float32)
    grey[0][solid] = 0.8
    grey[0][rim] = 0.3
    grey[0][core | crack] = 0.1
    foreground = np.where((solid | rim)[None], 0.95, 0.02).astype(np.float32)
    envelope = np.where(solid[None], 0.9, 0.1).astype(np.float32)
    envelope[0][core] = 0.1
    labels = np.where((solid | rim)[None], 7, 0).astype(np.int32)
    out = trim_unlike_voxels(labels, grey, foreground, envelope)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out[0] == 7, solid)  # rim gone; core refilled; crack kept
    # with both bounds at 0 nothing is trimmed
    np.testing.assert_array_equal(
        trim_unlike_voxels(labels, grey, foreground, envelope, min_envelope=0, min_solid_reach=0),
        labels,
    )
    with pytest.raises(ValueError, match="envelope shape"):
        trim_unlike_voxels(labels, grey, foreground, envelope[:, :10])


def test_trim_dark_outline_takes_the_half_maximum_outline_one_pixel_deep() -> None:
    yy, xx = np.mgrid[:80, :80]
    r = np.hypot(yy - 25, xx - 25)
    solid = r < 12
    blur = (r >= 12) & (r < 14)  # the blurred edge: 2 px at 0.35 (below half-way 0.5)
    core = r < 3  # a dark core, enclosed: stays
    grey = np.full((1, 80, 80), 0.2, dtype=np.float32)
    grey[0][solid] = 0.8
    grey[0][blur] = 0.35
    grey[0][core] = 0.1
    # a dim small particle: peak 0.45 (reach 0.42), edge 0.34 (reach 0.23): above half of its
    # own peak, kept, though below half of the solid level
    r2 = np.hypot(yy - 60, xx - 60)
    grey[0][r2 < 6] = 0.34
    grey[0][r2 < 4] = 0.45
    labels = np.zeros((1, 80, 80), dtype=np.int32)
    labels[0][solid | blur] = 3
    labels[0][r2 < 6] = 5
    foreground = np.where(labels > 0, 0.95, 0.02).astype(np.float32)
    out = trim_dark_outline(labels, grey, foreground)
    assert out.dtype == np.int32
    # the outermost layer of the blurred edge goes, the layer inside it stays; the core stays
    outer = (labels[0] == 3) & ndimage.binary_dilation(labels[0] != 3)
    np.testing.assert_array_equal(out[0] == 3, (labels[0] == 3) & ~outer)
    assert (out[0][blur & ~outer] == 3).all() and (blur & ~outer).any()
    assert (out[0][core] == 3).all()
    np.testing.assert_array_equal(out[0] == 5, r2 < 6)
    # darker edge of the dim particle (reach 0.083 < half of 0.42): its outline goes
    grey[0][(r2 >= 5) & (r2 < 6)] = 0.25
    out = trim_dark_outline(labels, grey, foreground)
    assert (out[0][r2 < 4] == 5).all()
    assert not (out[0][(r2 >= 5.5) & (r2 < 6)] == 5).any()
    np.testing.assert_array_equal(trim_dark_outline(labels, grey, foreground, share=0), labels)
    with pytest.raises(ValueError, match="normalized shape"):
        trim_dark_outline(labels, grey[:, :10], foreground)


def test_drop_unlike_particles_rejects_bad_input() -> None:
    grey, foreground, envelope, labels = scene()
    with pytest.raises(ValueError, match="min_envelope"):
        drop_unlike_particles(labels, grey, foreground, envelope=envelope, min_envelope=1.5)
    with pytest.raises(ValueError, match="foreground shape"):
        drop_unlike_particles(labels, grey, foreground[:, :10], envelope=envelope)


@pytest.mark.parametrize(
    ("shape", "seed", "diameter", "cracks", "n_angles"),
    [
        ((24, 128, 128), 21, 16.0, 1.0, 60),  # a tomogram of tests/browser/conftest.py
        ((24, 64, 64), 5, 12.0, 2.5, 72),  # the cycled scan of test_report_compare.py
    ],
)
def test_acceptance_drops_no_true_particle_of_the_small_live_tomograms(
    shape: tuple[int, int, int], seed: int, diameter: float, cracks: float, n_angles: int
) -> None:
    # an earlier contrast filter (docs/wip/issue13-faint-instances.patch) removed every
    # particle of these tomograms; the acceptance must not remove one that was found
    volume = make_cathode_volume(
        shape, seed=seed, crack_density=cracks, params=CathodeParams(particle_diameter_px=diameter)
    )
    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    frames = simulate_scan(volume.attenuation, angles, seed=seed + 1)
    recon = reconstruct(frames.projections, angles, flat=frames.flat, dark=frames.dark)
    off = InstanceParams(min_envelope_probability=0.0, min_solid_reach=0.0)
    before = segment_instances(recon, off).labels
    after = segment_instances(recon).labels
    truth = volume.particle_ids.astype(np.int64)

    def matched(labels: np.ndarray) -> set[int]:
        lab = labels.astype(np.int64)
        both = (lab > 0) & (truth > 0)
        base = int(lab.max()) + 1
        pairs, overlap = np.unique(truth[both] * base + lab[both], return_counts=True)
        t, p = pairs // base, pairs % base
        iou = overlap / (np.bincount(truth.ravel())[t] + np.bincount(lab.ravel())[p] - overlap)
        return set(t[iou > 0.5].tolist())

    found_before = matched(before)
    assert len(found_before) >= 5  # the scene has particles the pipeline finds
    assert found_before <= matched(after)  # none lost (the trim can make more match)
