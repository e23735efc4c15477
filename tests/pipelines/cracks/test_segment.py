"""Crack segmentation: shipped U-Net on held-out synthetic scans vs the threshold baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from models.crack_unet import (
    CONTEXT_SLICES,
    DEFAULT_WEIGHTS,
    load_crack_unet,
    normalize_slices,
    reference_levels,
)
from pipelines.cracks.particle_mask import CONVENTIONAL, particle_mask
from pipelines.cracks.segment import (
    CrackParams,
    iter_crack_slices,
    map_cracks,
    overlap_scores,
    reconstructed_area,
    threshold_baseline,
)
from pipelines.tomo.fbp import inside_circle, reconstruct
from synthetic.cathode import CathodeVolume, make_cathode_volume
from synthetic.scan import simulate_scan

# Measured on exactly these held-out volumes of the training generator (a smoke test: issue 13
# scores the never-trained family and the real crops, tests/pipelines/cracks/
# test_validation_sets.py). The shipped weights (2026-12-01) are fine-tuned with phase fringes
# of both signs, outline hard negatives, missing-wedge and JPEG scans through the project FBP
# (README "Fringes of both signs, a longer run"): with the 'closing' particle mask crack IoU
# 0.745 (the weights before 0.803, the ones before those 0.865), with the default 'contact'
# envelope 0.645 (before 0.690); false cracks 0.64 % of the particle volume (before 0.37 %).
# They gave up a little on this plain positive-fringe case of their old generator for the
# never-trained family and the other imaging conditions. The bounds keep a margin from the
# measurement (BLAS/thread differences change a few voxels).
MIN_UNET_IOU = 0.72
MAX_FALSE_CRACK_FRACTION = 0.008
MIN_CONTACT_IOU = 0.62


@pytest.fixture(scope="module")
def closing_result(held_out: Scan):
    return map_cracks(held_out.recon, CrackParams(envelope="closing"))


@dataclass
class Scan:
    truth: CathodeVolume
    recon: np.ndarray
    inside: np.ndarray


def _scan(shape: tuple[int, int, int], seed: int, crack_density: float) -> Scan:
    truth = make_cathode_volume(shape, seed=seed, crack_density=crack_density)
    angles = np.linspace(0, 180, int(shape[2] * 1.5) + 1)
    frames = simulate_scan(truth.attenuation, angles, seed=seed + 1)
    recon = reconstruct(frames.projections, angles, flat=frames.flat, dark=frames.dark)
    return Scan(truth, recon, np.broadcast_to(inside_circle(shape[2]), shape))


@pytest.fixture(scope="module")
def held_out() -> Scan:
    return _scan((12, 160, 160), seed=424_242, crack_density=1.0)


@pytest.fixture(scope="module")
def result(held_out: Scan):
    return map_cracks(held_out.recon)


def test_shipped_weights_are_small_and_load() -> None:
    assert DEFAULT_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size < 5e6
    model = load_crack_unet()
    assert not model.training


def test_unet_crack_iou_on_held_out_volume(held_out: Scan, closing_result, result) -> None:
    scores = overlap_scores(
        closing_result.crack_mask[held_out.inside], held_out.truth.crack_mask[held_out.inside]
    )
    assert scores["iou"] >= MIN_UNET_IOU
    contact = overlap_scores(
        result.crack_mask[held_out.inside], held_out.truth.crack_mask[held_out.inside]
    )
    assert contact["iou"] >= MIN_CONTACT_IOU
    assert result.crack_mask.dtype == np.uint8 and result.particle_mask.dtype == np.uint8
    assert not (result.crack_mask & (1 - result.particle_mask)).any()
    particle = overlap_scores(
        result.particle_mask[held_out.inside], held_out.truth.particle_mask[held_out.inside]
    )
    assert particle["iou"] > 0.85


def test_unet_beats_threshold_baseline(held_out: Scan, result) -> None:
    """The intensity baseline confuses cracks with the pores and gaps its mask encloses."""
    truth = held_out.truth.crack_mask[held_out.inside]
    unet = overlap_scores(result.crack_mask[held_out.inside], truth)["iou"]
    conventional_mask = particle_mask(held_out.recon, CONVENTIONAL)
    baseline = threshold_baseline(held_out.recon, conventional_mask)
    base = overlap_scores(baseline[held_out.inside], truth)["iou"]
    assert unet >= 2 * base
    # most baseline false positives are pore or carbon/binder voxels, not particle solid
    false_pos = baseline.astype(bool) & ~held_out.truth.crack_mask & held_out.inside
    in_matrix = ~held_out.truth.particle_mask[false_pos]
    assert in_matrix.mean() > 0.5
    triangle = threshold_baseline(held_out.recon, conventional_mask, method="triangle")
    assert overlap_scores(triangle[held_out.inside], truth)["iou"] < unet


def test_few_false_cracks_on_crack_free_volume() -> None:
    scan = _scan((8, 160, 160), seed=515_151, crack_density=0.0)
    res = map_cracks(scan.recon)
    particles = scan.truth.particle_mask & scan.inside
    false_fraction = res.crack_mask[scan.inside].sum() / particles.sum()
    assert false_fraction <= MAX_FALSE_CRACK_FRACTION


def test_depth_profile_follows_truth(held_out: Scan, result) -> None:
    profile = result.quantification.depth_profile
    assert profile.shape == (12,) and profile.dtype == np.float64
    truth = held_out.truth
    true_profile = (truth.crack_mask & held_out.inside).sum((1, 2)) / (
        truth.particle_mask & held_out.inside
    ).sum((1, 2))
    assert np.corrcoef(profile, true_profile)[0, 1] > 0.5


def test_slices_in_order_and_custom_model(held_out: Scan) -> None:
    def nothing(tiles: np.ndarray) -> np.ndarray:
        assert tiles.shape[1] == CONTEXT_SLICES
        return np.zeros((len(tiles), *tiles.shape[-2:]), dtype=np.float32)

    params = CrackParams(tile_size=64, overlap=8, batch_size=3)
    pieces = list(iter_crack_slices(held_out.recon[:3], params, model=nothing))
    assert [p.z for p in pieces] == [0, 1, 2]
    assert all(not p.crack.any() and p.particle.any() for p in pieces)


def test_no_cracks_outside_the_reconstruction_circle(held_out: Scan) -> None:
    # a model that calls everything a crack: outside the circle (voxels exactly 0) nothing is
    # kept, unless zero_is_outside is switched off
    def everything(tiles: np.ndarray) -> np.ndarray:
        return np.ones((len(tiles), *tiles.shape[-2:]), dtype=np.float32)

    recon = held_out.recon[:2]
    outside = recon == 0
    assert outside.any() and not outside[held_out.inside[:2]].all()
    pieces = list(iter_crack_slices(recon, CrackParams(), model=everything))
    cracks = np.stack([p.crack for p in pieces]).astype(bool)
    assert cracks.any() and not cracks[outside].any()
    kept = list(iter_crack_slices(recon, CrackParams(zero_is_outside=False), model=everything))
    assert np.stack([p.crack for p in kept]).astype(bool)[outside].any()


def test_enclosed_zeros_are_data() -> None:
    # an 8-bit slice saturates a dark core void to 0: zeros enclosed by data are kept, zeros
    # reaching the border (outside the reconstruction circle) are not
    image = np.full((9, 9), 120, dtype=np.uint8)
    image[:, :2] = 0
    image[4:6, 4:6] = 0
    area = reconstructed_area(image)
    assert not area[:, :2].any()
    assert area[4:6, 4:6].all() and area[:, 2:].all()
    assert reconstructed_area(image.astype(np.float32) + 1).all()
    with pytest.raises(ValueError, match="2-D"):
        reconstructed_area(image[np.newaxis])


def test_saturated_core_void_is_a_crack(held_out: Scan) -> None:
    # a dark core void saturated to 0 inside a particle is reported as a void of the
    # 'contact' envelope (a model that calls everything a crack; its output on the zeros is
    # no candidate); before 2026-11-30 every zero was taken as outside the circle
    def everything(tiles: np.ndarray) -> np.ndarray:
        return np.ones((len(tiles), *tiles.shape[-2:]), dtype=np.float32)

    recon = held_out.recon[:1].copy()
    solid = held_out.truth.particle_mask[:1] & held_out.inside[:1]
    depth = ndimage.distance_transform_edt(solid[0])
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    assert depth[y, x] > 6
    recon[0, y - 2 : y + 3, x - 2 : x + 3] = 0
    piece = next(iter_crack_slices(recon, CrackParams(), model=everything))
    assert piece.crack[y - 2 : y + 3, x - 2 : x + 3].all()


def test_worker_threads_do_not_change_the_result(held_out: Scan) -> None:
    # the per-slice masks and the density maps run on worker threads; any count gives the same
    # masks and numbers (a cheap stand-in model: dark voxels of the middle slice)
    def dark(tiles: np.ndarray) -> np.ndarray:
        return (tiles[:, 1] < 0.3).astype(np.float32)

    params = CrackParams(tile_size=96, overlap=16, batch_size=3)
    serial = map_cracks(held_out.recon, params.model_copy(update={"workers": 1}), model=dark)
    threaded = map_cracks(held_out.recon, params.model_copy(update={"workers": 3}), model=dark)
    assert serial.crack_mask.any() and serial.particle_mask.any()
    np.testing.assert_array_equal(threaded.crack_mask, serial.crack_mask)
    np.testing.assert_array_equal(threaded.particle_mask, serial.particle_mask)
    np.testing.assert_array_equal(
        threaded.quantification.damage_density, serial.quantification.damage_density
    )
    np.testing.assert_array_equal(
        threaded.quantification.damage_histogram, serial.quantification.damage_histogram
    )
    assert threaded.solid_threshold == serial.solid_threshold
    with pytest.raises(ValueError):
        CrackParams(workers=0)


def test_context_slices_reach_the_model_in_order() -> None:
    """Slice z is given with z - 1 and z + 1 (edges repeated), also across slice blocks."""
    volume = np.arange(1, 8, dtype=np.float32)[:, None, None] * np.ones((7, 40, 36), np.float32)
    low, high = reference_levels(volume)
    seen: list[np.ndarray] = []

    def record(tiles: np.ndarray) -> np.ndarray:
        seen.extend(tiles[:, :, 0, 0])
        return np.zeros((len(tiles), *tiles.shape[-2:]), dtype=np.float32)

    params = CrackParams(tile_size=64, overlap=8, batch_size=3)  # blocks of 3 slices
    assert len(list(iter_crack_slices(volume, params, model=record))) == 7
    index = np.clip(np.arange(7)[:, None] + np.array([-1, 0, 1]), 0, 6)
    np.testing.assert_array_equal(np.array(seen), normalize_slices(volume[index, 0, 0], low, high))


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="volume must be 3-D"):
        map_cracks(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="particle_mask"):
        threshold_baseline(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="method"):
        threshold_baseline(np.ones((1, 4, 4)), np.ones((1, 4, 4)), method="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CrackParams(threshold=1.5)
