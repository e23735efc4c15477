"""Outline bays, matrix pores and debris as the crack network's hard negatives."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from synthetic.cathode import BINDER, CRACK, PORE, SOLID, CathodeParams, make_cathode_volume
from synthetic.outlines import roughen_outlines


def _volume(seed: int = 5):
    params = CathodeParams(particle_diameter_px=30.0, binder_fraction=0.6)
    return make_cathode_volume((12, 96, 96), seed=seed, crack_density=1.2, params=params)


def test_roughening_keeps_every_crack_and_adds_no_crack() -> None:
    vol = _volume()
    out, negatives = roughen_outlines(vol, np.random.default_rng(1), bay_share=1.0)
    np.testing.assert_array_equal(out.crack_mask, vol.crack_mask)
    np.testing.assert_array_equal(
        out.particle_ids[vol.crack_mask], vol.particle_ids[vol.crack_mask]
    )
    assert negatives.any()
    assert not (negatives & out.crack_mask).any()
    # the negatives lie outside every particle, as pore or carbon/binder
    assert not (negatives & (out.particle_ids > 0)).any()
    assert set(np.unique(out.phase[negatives])) <= {PORE, BINDER}


def test_bays_leave_their_particle_and_open_onto_the_matrix_in_slice() -> None:
    vol = _volume(6)
    out, _ = roughen_outlines(
        vol,
        np.random.default_rng(2),
        bay_share=1.0,
        pores_per_1000_surface=(0.0, 0.0),
        debris_per_1000_surface=(0.0, 0.0),
    )
    bitten = (vol.particle_ids > 0) & (out.particle_ids == 0)
    assert bitten.sum() > 100
    assert (out.attenuation[bitten] < out.attenuation[out.phase == SOLID].min()).all()
    matrix_before = vol.particle_ids == 0
    enclosed = 0
    for z in range(len(bitten)):
        pieces, n = ndimage.label(bitten[z])
        touching = ndimage.binary_dilation(matrix_before[z]) & bitten[z]
        enclosed += n - len(np.unique(pieces[touching & (pieces > 0)]))
    assert enclosed == 0  # no bay is a hole inside its particle (that would be a void)


def test_debris_are_separate_solid_particles() -> None:
    vol = _volume(7)
    out, negatives = roughen_outlines(
        vol,
        np.random.default_rng(3),
        bay_share=0.0,
        pores_per_1000_surface=(0.0, 0.0),
        debris_per_1000_surface=(6.0, 6.0),
    )
    new = out.particle_ids > vol.particle_ids.max()
    assert new.any() and (out.phase[new] == SOLID).all()
    old = ndimage.binary_dilation(vol.particle_ids > 0)
    assert not (new & old).any()  # at least a 1-voxel gap to the old particles
    assert (negatives & ndimage.binary_dilation(new)).any()


def test_roughening_is_reproducible() -> None:
    vol = _volume()
    a, na = roughen_outlines(vol, np.random.default_rng(9))
    b, nb = roughen_outlines(vol, np.random.default_rng(9))
    np.testing.assert_array_equal(a.attenuation, b.attenuation)
    np.testing.assert_array_equal(na, nb)
    assert CRACK in np.unique(a.phase)
