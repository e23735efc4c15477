"""Synthetic cathode generator: labels, determinism, depth gradient, speed, detector frames."""

from __future__ import annotations

import time

import numpy as np
import pytest

from synthetic.cathode import (
    BINDER,
    CRACK,
    PORE,
    SOLID,
    CathodeParams,
    DetectorParams,
    make_cathode_volume,
    simulate_detector,
)


@pytest.fixture(scope="module")
def volume():
    return make_cathode_volume((64, 128, 128), seed=11)


def test_labels_are_consistent(volume) -> None:
    assert volume.phase.dtype == np.uint8 and volume.phase.shape == (64, 128, 128)
    assert volume.particle_ids.dtype == np.int32
    assert volume.attenuation.dtype == np.float32
    assert set(np.unique(volume.phase)) == {PORE, BINDER, SOLID, CRACK}
    # cracks lie inside particles and carry the particle's id
    assert (volume.particle_ids[volume.crack_mask] > 0).all()
    in_particle = volume.particle_ids > 0
    assert np.isin(volume.phase[in_particle], [SOLID, CRACK]).all()
    assert (volume.particle_mask == in_particle).all()
    # ids are consecutive
    ids = np.unique(volume.particle_ids)
    np.testing.assert_array_equal(ids, np.arange(ids.max() + 1))
    assert volume.n_particles > 50


def test_tightly_packed_particles_with_matrix_and_pores(volume) -> None:
    share = np.bincount(volume.phase.ravel(), minlength=4) / volume.phase.size
    assert 0.35 < share[SOLID] + share[CRACK] < 0.75
    assert share[BINDER] > 0.1 and share[PORE] > 0.05
    assert 0.002 < share[CRACK] < 0.1
    # cracks and pores have the pore attenuation, particles the highest
    mu = volume.attenuation
    assert mu[volume.crack_mask].max() == pytest.approx(CathodeParams().mu_pore)
    assert mu[volume.phase == SOLID].mean() > 3 * mu[volume.phase == BINDER].mean()


def test_more_cracks_near_the_separator(volume) -> None:
    cracks = volume.crack_mask.sum(axis=(1, 2))
    solid = volume.particle_mask.sum(axis=(1, 2))
    top = cracks[:16].sum() / solid[:16].sum()
    bottom = cracks[-16:].sum() / solid[-16:].sum()
    assert top > 1.5 * bottom


def test_crack_free_and_deterministic() -> None:
    clean = make_cathode_volume((16, 64, 64), seed=3, crack_density=0.0)
    assert not clean.crack_mask.any()
    a = make_cathode_volume((16, 64, 64), seed=3)
    b = make_cathode_volume((16, 64, 64), seed=3)
    np.testing.assert_array_equal(a.phase, b.phase)
    np.testing.assert_array_equal(a.attenuation, b.attenuation)
    # the crack-free volume has the same microstructure apart from the cracks
    np.testing.assert_array_equal(a.particle_ids > 0, clean.particle_ids > 0)


def test_n_particles_and_params() -> None:
    vol = make_cathode_volume((32, 64, 64), seed=1, n_particles=40)
    assert 25 <= vol.n_particles <= 40
    assert vol.params.n_particles == 40
    with pytest.raises(ValueError, match="shape"):
        make_cathode_volume((4, 4), seed=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crack_density"):
        make_cathode_volume((8, 16, 16), seed=1, crack_density=-1)
    with pytest.raises(ValueError):
        CathodeParams(unknown=1)  # type: ignore[call-arg]


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    make_cathode_volume((64, 128, 128), seed=2)
    assert time.perf_counter() - start < 5.0


def test_detector_frames() -> None:
    lint = np.zeros((3, 16, 20), dtype=np.float32)
    lint[:, 4:12, 5:15] = 1.0
    frames = simulate_detector(lint, seed=0, params=DetectorParams(n_flats=4, n_darks=2))
    assert frames.projections.dtype == np.uint16 and frames.projections.shape == (3, 16, 20)
    assert frames.flat.shape == (4, 16, 20) and frames.dark.shape == (2, 16, 20)
    dark = frames.dark.mean(axis=0)
    transmission = (frames.projections - dark) / (frames.flat.mean(axis=0) - dark)
    assert np.median(transmission[:, 7:9, 8:12]) == pytest.approx(np.exp(-1.0), abs=0.05)
    assert np.median(transmission[:, :, 17:]) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="line_integrals"):
        simulate_detector(np.zeros((4, 4)), seed=0)


def test_added_damage_stays_inside_its_particles() -> None:
    from synthetic.cathode import CathodeParams, make_cathode_volume
    from synthetic.damage import add_damage

    vol = make_cathode_volume((8, 96, 96), seed=4, crack_density=0.0, params=CathodeParams())
    damaged = add_damage(vol, np.random.default_rng(0), share=1.0)
    assert not vol.crack_mask.any() and damaged.crack_mask.any()
    np.testing.assert_array_equal(damaged.particle_ids, vol.particle_ids)
    assert not (damaged.crack_mask & (vol.particle_ids == 0)).any()
    assert (damaged.attenuation[damaged.crack_mask] < vol.attenuation[damaged.crack_mask]).all()


@pytest.mark.parametrize("kind", ["surface", "voids"])
def test_wide_damage_kinds_stay_inside_their_particles(kind: str) -> None:
    from synthetic.cathode import CathodeParams, make_cathode_volume
    from synthetic.damage import add_damage

    vol = make_cathode_volume(
        (8, 96, 96), seed=5, crack_density=0.0, params=CathodeParams(particle_diameter_px=40)
    )
    damaged = add_damage(vol, np.random.default_rng(1), share=1.0, kinds=(kind,))
    assert damaged.crack_mask.any()
    np.testing.assert_array_equal(damaged.particle_ids, vol.particle_ids)
    assert not (damaged.crack_mask & (vol.particle_ids == 0)).any()
    # neither kind empties a particle: most of every damaged particle stays solid
    share = damaged.crack_mask.sum() / max((vol.particle_ids > 0).sum(), 1)
    assert share < 0.3


def test_negative_phase_fringe_flips_the_edge_overshoot() -> None:
    from synthetic.cathode import DetectorParams

    lint = np.zeros((1, 32, 32), dtype=np.float32)
    lint[:, :, 16:] = 1.0
    quiet = {"photons": 3e4, "read_noise": 0.0, "ring_fraction": 0.0, "beam_nonuniformity": 0.0}
    rows = {}
    for sign in (1.0, -1.0):
        frames = simulate_detector(
            lint, seed=0, params=DetectorParams(phase_fringe=0.3 * sign, blur_sigma_px=0.0, **quiet)
        )
        flat = frames.flat.astype(np.float64).mean(axis=0) - frames.dark.mean(axis=0)
        rows[sign] = (frames.projections[0].astype(np.float64) - frames.dark.mean(axis=0))[
            16
        ] / flat[16]
    # just outside the edge the fringe brightens with one sign and darkens with the other
    assert rows[-1.0][15] < 0.85 and rows[1.0][15] > 1.15


def test_fringes_of_either_sign_deepen_or_fill_cracks_in_the_reconstruction() -> None:
    """Near-field fringes (intensity x (1 + f laplacian of the projection)) in the reconstructed
    slice: with f > 0 a crack reads darker than without fringes and the solid along it brighter
    (edge enhancement, the sample past the focus); f < 0 does the opposite; the fringe term has
    zero mean, so the particle interiors keep their attenuation."""
    from scipy import ndimage

    from synthetic.scan import reconstruct_synthetic

    vol = make_cathode_volume((2, 96, 96), seed=6, crack_density=1.5)
    crack = vol.crack_mask
    solid = vol.phase == SOLID
    assert crack.sum() > 200
    along = solid & ndimage.binary_dilation(crack, structure=np.ones((1, 3, 3)))
    inner = solid & ~ndimage.binary_dilation(~solid, structure=np.ones((1, 7, 7)))
    quiet = {"photons": 4e4, "ring_fraction": 0.0, "beam_nonuniformity": 0.0}
    crack_level, along_level, inner_mean = [], [], []
    for fringe in (0.6, 0.0, -0.6):
        recon = reconstruct_synthetic(
            vol.attenuation,
            seed=1,
            n_angles=120,
            detector=DetectorParams(phase_fringe=fringe, **quiet),
            method="fbp",
        )
        level = float(recon[inner].mean())
        crack_level.append(float(recon[crack].mean()) / level)
        along_level.append(float(recon[along].mean()) / level)
        inner_mean.append(level)
    assert crack_level[0] < crack_level[1] - 0.05 < crack_level[2] - 0.1
    assert along_level[0] > along_level[1] + 0.05 > along_level[2] + 0.1
    np.testing.assert_allclose(inner_mean, inner_mean[1], rtol=0.03)


def test_synthetic_scan_reconstructs_with_the_project_fbp_as_with_iradon() -> None:
    from synthetic.cathode import DetectorParams, make_cathode_volume
    from synthetic.scan import reconstruct_synthetic

    vol = make_cathode_volume((2, 64, 64), seed=6, crack_density=1.0)
    recons = {
        method: reconstruct_synthetic(
            vol.attenuation,
            seed=1,
            n_angles=90,
            detector=DetectorParams(),
            filter_name="shepp-logan",
            method=method,
        )
        for method in ("iradon", "fbp")
    }
    scale = float(np.abs(recons["iradon"]).max())
    assert np.abs(recons["fbp"] - recons["iradon"]).max() < 1e-3 * scale
    with pytest.raises(ValueError, match="method"):
        reconstruct_synthetic(
            vol.attenuation, seed=1, n_angles=8, detector=DetectorParams(), method="art"
        )


def test_fragment_boundaries_open_as_wide_as_the_drawn_width() -> None:
    from synthetic.cathode import CathodeParams, make_cathode_volume
    from synthetic.damage import add_damage

    vol = make_cathode_volume(
        (12, 96, 96), seed=5, crack_density=0.0, params=CathodeParams(particle_diameter_px=40)
    )
    shares = []
    for width in (2.0, 7.0):
        damaged = add_damage(
            vol,
            np.random.default_rng(2),
            share=1.0,
            kinds=("fragmented",),
            width_px=(width,) * 2,
            wide_fragments=True,
        )
        assert not (damaged.crack_mask & (vol.particle_ids == 0)).any()
        shares.append(damaged.crack_mask.sum() / (vol.particle_ids > 0).sum())
    # the same grains (same draws), boundaries opened about 3 times as wide
    assert shares[1] > 2.0 * shares[0]
    # without wide_fragments (the envelope and particle trainers) the width does not open them
    narrow = add_damage(
        vol, np.random.default_rng(2), share=1.0, kinds=("fragmented",), width_px=(7.0, 7.0)
    )
    assert narrow.crack_mask.sum() / (vol.particle_ids > 0).sum() < 1.5 * shares[0]
