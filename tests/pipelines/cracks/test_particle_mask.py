"""Particle mask: cracks inside particles count as particle, gaps between particles do not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage.morphology import disk

from pipelines.cracks.particle_mask import (
    _NO_LABEL,
    CONVENTIONAL,
    ParticleMaskParams,
    _box_share,
    _drop_small_holes,
    _grow_into,
    _holes,
    _neighbourhood_extremes,
    binary_dilate,
    binary_erode,
    drop_edge_specks,
    learned_envelope_voids,
    particle_envelope_slice,
    particle_mask,
    particle_mask_slice,
    solid_threshold,
    surface_inlets,
)


def _two_discs_with_crack() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:80, :120].astype(float)
    image = np.full((80, 120), 0.2, dtype=np.float32)
    left = (yy - 40) ** 2 + (xx - 35) ** 2 < 20**2
    right = (yy - 40) ** 2 + (xx - 77) ** 2 < 20**2  # 2 px gap between the discs
    image[left | right] = 1.0
    crack = left & (np.abs(yy - 40) < 1.5) & (xx > 25)  # radial crack reaching the surface
    image[crack] = 0.0
    return image, left | right


def test_crack_inside_particle_is_particle() -> None:
    image, truth = _two_discs_with_crack()
    mask = particle_mask_slice(image, 0.5)
    assert mask[40, 30:50].all()  # crack pixels
    _, n_objects = ndimage.label(mask)
    assert n_objects == 2  # the gap between the particles stays open
    assert (mask == truth).mean() > 0.99


def test_crack_mask_joins_split_particle() -> None:
    image, truth = _two_discs_with_crack()
    image[40:42, :] = 0.0  # a crack cutting the left disc in two, across the whole slice
    cracks = np.zeros(image.shape, dtype=bool)
    cracks[40:42, 16:54] = True
    mask = particle_mask_slice(image, 0.5, cracks=cracks)
    assert mask[40:42, 20:50].all()


def test_conventional_mask_bridges_gaps() -> None:
    image, _ = _two_discs_with_crack()
    conventional = particle_mask_slice(image, 0.5, CONVENTIONAL)
    _, n_objects = ndimage.label(conventional)
    assert n_objects == 1


def test_volume_mask_and_threshold() -> None:
    image, truth = _two_discs_with_crack()
    vol = np.stack([image, image])
    noisy = vol + np.random.default_rng(0).normal(0, 0.03, vol.shape).astype(np.float32)
    noisy[:, :20, :20] -= 0.3  # pores
    thr = solid_threshold(noisy)
    assert 0.3 < thr < 0.9
    mask = particle_mask(vol, ParticleMaskParams(threshold=0.5))
    assert mask.shape == vol.shape and mask.dtype == bool
    with pytest.raises(ValueError, match="volume"):
        particle_mask(image)
    with pytest.raises(ValueError, match="cracks"):
        particle_mask_slice(image, 0.5, cracks=np.zeros((3, 3), bool))


@settings(max_examples=60, deadline=None)
@given(
    mask=arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24))),
    radius=st.integers(1, 3),
)
def test_shifted_morphology_equals_scipy(mask: np.ndarray, radius: int) -> None:
    # the particle mask's closing uses these instead of scipy's (slow) binary morphology
    for footprint in (disk(radius).astype(bool), np.ones((3, 3), dtype=bool)):
        np.testing.assert_array_equal(
            binary_dilate(mask, footprint), ndimage.binary_dilation(mask, structure=footprint)
        )
        np.testing.assert_array_equal(
            binary_erode(mask, footprint), ndimage.binary_erosion(mask, structure=footprint)
        )


@settings(max_examples=60, deadline=None)
@given(
    labels=arrays(
        np.int32, st.tuples(st.integers(1, 20), st.integers(1, 20)), elements=st.integers(0, 5)
    ),
    size=st.sampled_from([3, 5, 7]),
    seed=st.integers(0, 2**16),
)
def test_neighbourhood_extremes_equal_scipy_filters(
    labels: np.ndarray, size: int, seed: int
) -> None:
    # highest label / lowest non-zero label of the square around chosen pixels, borders repeated
    points = np.nonzero(np.random.default_rng(seed).random(labels.shape) < 0.5)
    highest, lowest = _neighbourhood_extremes(labels, points, size)
    nonzero = np.where(labels > 0, labels, _NO_LABEL)
    np.testing.assert_array_equal(
        highest, ndimage.maximum_filter(labels, size=size, mode="nearest")[points]
    )
    np.testing.assert_array_equal(
        lowest, ndimage.minimum_filter(nonzero, size=size, mode="nearest")[points]
    )
    only_highest, none = _neighbourhood_extremes(labels, points, size, lowest=False)
    assert none is None
    np.testing.assert_array_equal(only_highest, highest)


@settings(max_examples=60, deadline=None)
@given(
    mask=arrays(bool, st.tuples(st.integers(1, 20), st.integers(1, 20))),
    radius=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_box_share_is_the_mean_of_the_clipped_square(
    mask: np.ndarray, radius: int, seed: int
) -> None:
    # the notch test's share of particle around a pixel; the square is cut at the image border
    points = np.nonzero(np.random.default_rng(seed).random(mask.shape) < 0.5)
    expected = [
        mask[max(y - radius, 0) : y + radius + 1, max(x - radius, 0) : x + radius + 1].mean()
        for y, x in zip(*points, strict=True)
    ]
    np.testing.assert_array_equal(_box_share(mask, points, radius), np.array(expected))


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def test_envelope_bridges_a_through_crack_but_not_a_gap_between_particles() -> None:
    shape = (80, 140)
    image = np.full(shape, 0.2, dtype=np.float32)
    cut = _disc(shape, 40, 35, 24)
    through = cut & (np.abs(np.arange(shape[1])[None, :] - 35) < 1.5)  # 2 px wide, edge to edge
    left_particle, right_particle = _disc(shape, 40, 88, 16), _disc(shape, 40, 121, 16)
    image[cut | left_particle | right_particle] = 1.0
    image[through] = 0.0
    # the network marks the crack and (wrongly) the 1-px gap between the two right particles
    gap = (
        (image < 0.5)
        & ndimage.binary_dilation(left_particle, iterations=2)
        & (ndimage.binary_dilation(right_particle, iterations=2))
    )
    assert gap.any()
    envelope, voids = particle_envelope_slice(image, 0.5, bridge=through | gap)
    assert envelope[through].all() and voids[through].all()
    assert not envelope[gap].any() and not voids[gap].any()
    labels, n = ndimage.label(envelope)
    assert n == 3


def test_envelope_keeps_a_hollow_core_and_reports_it_as_void() -> None:
    shape = (90, 90)
    image = np.full(shape, 0.2, dtype=np.float32)
    particle = _disc(shape, 45, 45, 30)
    core = _disc(shape, 45, 45, 9)
    image[particle] = 1.0
    image[core] = 0.05
    envelope, voids = particle_envelope_slice(image, 0.5)
    assert envelope[core].all() and voids[core].all()
    assert not voids[particle & ~core].any()
    small = ParticleMaskParams(min_void_area=int(core.sum()) + 1)
    assert not particle_envelope_slice(image, 0.5, small)[1].any()
    with pytest.raises(ValueError, match="bridge"):
        particle_envelope_slice(image, 0.5, bridge=np.zeros((3, 3), bool))


def test_fill_enclosed_holes_gives_a_core_to_its_particle_but_not_a_pore_to_two() -> None:
    from pipelines.cracks.particle_mask import fill_enclosed_holes

    labels = np.zeros((60, 100), dtype=np.int32)
    ring = _disc((60, 100), 30, 25, 20) & ~_disc((60, 100), 30, 25, 8)
    labels[ring] = 7
    # a pore enclosed by two particles (left and right halves of a second ring)
    other = _disc((60, 100), 30, 75, 20) & ~_disc((60, 100), 30, 75, 8)
    labels[other & (np.arange(100)[None, :] < 75)] = 3
    labels[other & (np.arange(100)[None, :] >= 75)] = 4
    filled = fill_enclosed_holes(labels)
    assert (filled[_disc((60, 100), 30, 25, 8)] == 7).all()
    assert (filled[_disc((60, 100), 30, 75, 7)] == 0).all()
    np.testing.assert_array_equal(filled[labels > 0], labels[labels > 0])
    with pytest.raises(ValueError, match="2-D"):
        fill_enclosed_holes(np.zeros((2, 3, 3), dtype=np.int32))


def test_drop_edge_specks_keeps_cracks_and_voids_drops_outline_specks() -> None:
    yy, xx = np.mgrid[:60, :60]
    envelope = (yy - 30) ** 2 + (xx - 30) ** 2 < 20**2
    cracks = np.zeros(envelope.shape, dtype=bool)
    cracks[30, 11:30] = True  # a crack open to the surface, 19 px
    cracks[28:30, 40:42] = True  # an enclosed 4-px void away from the outline
    speck = np.zeros(envelope.shape, dtype=bool)
    speck[11:13, 29:31] = envelope[11:13, 29:31]  # a speck on the outline
    assert speck.any()
    cracks |= speck
    kept = drop_edge_specks(cracks, envelope, 8)
    assert kept[30, 11:30].all()
    assert kept[28:30, 40:42].all()
    assert not (kept & speck).any()
    assert np.array_equal(drop_edge_specks(cracks, envelope, 0), cracks)
    assert not (kept & ~cracks).any()


def test_learned_envelope_voids_are_dark_pixels_deep_inside_the_envelope() -> None:
    yy, xx = np.mgrid[:80, :80]
    envelope = (yy - 40) ** 2 + (xx - 40) ** 2 <= 30**2
    image = np.where(envelope, 1.0, 0.0).astype(np.float32)
    crack = envelope & (np.abs(xx - 40) <= 2)  # a 5-px through-crack
    image[crack] = 0.0
    rim = envelope & ((yy - 40) ** 2 + (xx - 40) ** 2 >= 29**2)
    image[rim] = 0.0  # a dark, blurred outline
    voids = learned_envelope_voids(image, 0.5, envelope)
    assert not (voids & rim).any()
    deep = crack & ((yy - 40) ** 2 + (xx - 40) ** 2 <= 26**2)
    assert voids[deep].all()
    assert not (voids & ~crack).any()
    with pytest.raises(ValueError, match="2-D"):
        learned_envelope_voids(image, 0.5, envelope[:-1])


def test_surface_inlets_take_a_deep_slot_not_a_bay_nor_a_gap_between_particles() -> None:
    yy, xx = np.mgrid[:100, :160].astype(float)
    particle = (yy - 50) ** 2 + (xx - 45) ** 2 < 30**2
    # a neighbour touching it: a plain closing of radius 6 fills 118 px between the two
    neighbour = (yy - 50) ** 2 + (xx - 103) ** 2 < 25**2
    slot = particle & (np.abs(yy - 50) < 2.5) & (xx < 45)  # 5 px wide, 30 px deep, from the left
    bay = particle & ((yy - 22) ** 2 + (xx - 45) ** 2 < 7**2)  # a dent as deep as it is wide
    image = np.full(particle.shape, 0.2, dtype=np.float32)
    image[particle | neighbour] = 1.0
    image[slot | bay] = 0.1
    envelope = (particle | neighbour) & ~slot & ~bay
    inlets = surface_inlets(image, 0.5, envelope, radius=6)
    assert not (inlets & envelope).any()
    assert inlets[slot].mean() > 0.5  # its deep part; the mouth is as wide as it is deep
    assert not inlets[bay].any()
    assert not inlets[~particle].any()  # nothing in the gap between the two particles
    # a bright pixel is no inlet; an empty envelope has none
    image[50, 30] = 1.0
    assert not surface_inlets(image, 0.5, envelope, radius=6)[50, 30]
    assert not surface_inlets(image, 0.5, np.zeros_like(envelope), radius=6).any()
    with pytest.raises(ValueError, match="radius"):
        surface_inlets(image, 0.5, envelope, radius=0)
    with pytest.raises(ValueError, match="2-D"):
        surface_inlets(image, 0.5, envelope[:10], radius=6)


@settings(max_examples=30, deadline=None)
@given(
    solid=arrays(bool, (24, 24)),
    candidates=arrays(bool, (24, 24)),
    steps=st.integers(1, 5),
)
def test_grow_into_changes_only_the_reach_pixels(
    solid: np.ndarray, candidates: np.ndarray, steps: int
) -> None:
    # particle_envelope_slice reads the grown labels at the reach pixels only: everywhere
    # else they must be the input labels and no label may have reached a background pixel
    labels, _ = ndimage.label(solid)
    reach = candidates & ~solid
    grown, lowest = _grow_into(labels, reach, steps)
    assert np.array_equal(grown[~reach], labels[~reach])
    assert np.all(lowest[~reach & ~solid] == _NO_LABEL)
    assert np.array_equal(lowest[solid], labels[solid])
    reached = grown[reach] > 0
    assert np.all(lowest[reach][reached] <= grown[reach][reached])
    # the candidates handed over as points (particle_envelope_slice) give the same growth
    with_points = _grow_into(labels, candidates, steps, points=np.nonzero(reach))
    assert np.array_equal(with_points[0], grown) and np.array_equal(with_points[1], lowest)


@settings(max_examples=60, deadline=None)
@given(
    density=st.floats(0.4, 0.8),
    min_area=st.integers(2, 6),
    seed=st.integers(0, 2**16),
)
def test_drop_small_holes_equals_labelling_the_holes(
    density: float, min_area: int, seed: int
) -> None:
    # particle_envelope_slice sizes its holes by the background components they are made of
    # (whole components, as it fills them): the same as labelling the holes themselves
    rng = np.random.default_rng(seed)
    solid = rng.random((32, 32)) < density
    background, is_hole = _holes(solid)
    chosen = is_hole & (rng.random(is_hole.size) < 0.7)
    holes = chosen[background]
    pieces, n = ndimage.label(holes)
    small = np.bincount(pieces.ravel(), minlength=n + 1) < min_area
    small[0] = True
    np.testing.assert_array_equal(_drop_small_holes(holes, background, min_area), ~small[pieces])
