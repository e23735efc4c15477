"""Hard negatives for the crack network: rough particle outlines, pores and fragment debris.

The crack fine-tunes that found more cracks (wide fragment gaps, ``--wide``) also marked the
real slices' dark bays along rough particle outlines, the pores of the carbon/binder next to
particles and the gaps among small fragments, none of which the training generator draws: its
particles have smooth outlines and its matrix next to them is uniform. :func:`roughen_outlines`
adds the three to a :class:`~synthetic.cathode.CathodeVolume`, none of them a crack:

* *bays*: round bites (radius 1.5 to 5 px) taken out of a share of the particles at random
  surface points, centred a little outside the surface, so each bay is about as deep as it is
  wide (a crack open to the surface is narrow and deep); the bitten voxels become pore or
  carbon/binder and leave the particle;
* *matrix pores*: round pores (radius 1 to 3.5 px) in the carbon/binder within 3 px of a
  particle;
* *debris*: small solid blobs (radius 1.5 to 5 px, ellipsoidal) in the matrix near particles,
  each a particle of its own, a gap of at least 1 px from every other particle.

It returns the voxels of the bays and pores and the matrix within 2 px of the debris, for the
training loss to weight as hard negatives.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from synthetic.cathode import BINDER, CRACK, PORE, SOLID, CathodeVolume


def _ball(radius: float, scale: np.ndarray) -> tuple[np.ndarray, int]:
    """bool ellipsoid of semi-axes ``radius * scale`` in a cube of half-side ``h``."""
    h = int(np.ceil(radius * float(scale.max()))) + 1
    zz, yy, xx = np.mgrid[-h : h + 1, -h : h + 1, -h : h + 1].astype(np.float32)
    d2 = (zz / scale[0]) ** 2 + (yy / scale[1]) ** 2 + (xx / scale[2]) ** 2
    return d2 <= radius * radius, h


def _box(centre: np.ndarray, h: int, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple]:
    """The volume's slices of a cube of half-side ``h`` at ``centre`` and the cube's own."""
    vol, own = [], []
    for c, n in zip(centre.astype(int), shape, strict=True):
        lo, hi = c - h, c + h + 1
        vol.append(slice(max(lo, 0), min(hi, n)))
        own.append(slice(max(lo, 0) - lo, 2 * h + 1 - (hi - min(hi, n))))
    return tuple(vol), tuple(own)


def roughen_outlines(
    volume: CathodeVolume,
    rng: np.random.Generator,
    *,
    bay_share: float = 0.7,
    bays_per_1000_surface: tuple[float, float] = (8.0, 30.0),
    bay_radius_px: tuple[float, float] = (1.5, 5.0),
    pores_per_1000_surface: tuple[float, float] = (2.0, 8.0),
    debris_per_1000_surface: tuple[float, float] = (0.5, 4.0),
) -> tuple[CathodeVolume, np.ndarray]:
    """A copy of ``volume`` with outline bays, matrix pores and debris, and their voxels.

    Parameters
    ----------
    volume : CathodeVolume
        Training-family volume (cracks already carved).
    rng : numpy.random.Generator
        Source of all random choices.
    bay_share : float
        Share of the particles given bays.
    bays_per_1000_surface, pores_per_1000_surface, debris_per_1000_surface : tuple of float
        Ranges (drawn once per volume) of the number of bays per 1000 surface voxels of a
        bitten particle, and of matrix pores and debris blobs per 1000 surface voxels of all
        particles.
    bay_radius_px : tuple of float
        Range of the bay radius.

    Returns
    -------
    tuple
        The new :class:`CathodeVolume` (crack voxels and the particle ids of the rest
        unchanged) and bool (Z, Y, X): the bays, the pores and the matrix within 2 px of the
        debris (hard negatives).
    """
    phase = volume.phase.copy()
    ids = volume.particle_ids.copy()
    att = volume.attenuation.copy()
    shape = phase.shape
    solid_mu = float(np.median(att[phase == SOLID])) if (phase == SOLID).any() else 0.012
    pore_mu = float(att[phase == PORE].mean()) if (phase == PORE).any() else 0.0
    binder_mu = float(att[phase == BINDER].mean()) if (phase == BINDER).any() else pore_mu
    negatives = np.zeros(shape, dtype=bool)
    particles = ids > 0
    surface = particles & ~ndimage.binary_erosion(particles, border_value=1)
    n_surface = int(surface.sum())
    if n_surface == 0:
        return volume, negatives

    # bays, particle by particle
    rate = float(rng.uniform(*bays_per_1000_surface)) / 1000.0
    for label, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is None or rng.random() >= bay_share:
            continue
        own = np.argwhere(surface[box] & (ids[box] == label))
        if len(own) < 20:
            continue
        centroid = np.argwhere(ids[box] == label).mean(axis=0)
        for _ in range(int(rng.poisson(rate * len(own)))):
            point = own[rng.integers(len(own))].astype(np.float32)
            outward = point - centroid
            outward[0] = 0.0  # in-slice: a bay is open to the matrix in the slices it cuts
            outward /= max(float(np.linalg.norm(outward)), 1e-6)
            radius = float(rng.uniform(*bay_radius_px))
            centre = point + outward * radius * float(rng.uniform(0.2, 0.6))
            centre += np.array([s.start for s in box], dtype=np.float32)
            centre = np.round(centre)
            ball, h = _ball(radius, np.exp(rng.normal(0.0, 0.2, 3)).astype(np.float32))
            vbox, bbox = _box(centre, h, shape)
            bite = ball[bbox] & (ids[vbox] == label)
            # only in slices where the bay's centre lies outside the particle: elsewhere the
            # bite would be a hole enclosed by the particle, which is a void (a positive)
            cy, cx = int(centre[1]), int(centre[2])
            if not (0 <= cy < shape[1] and 0 <= cx < shape[2]):
                continue
            outside = ids[vbox[0], cy, cx] != label
            bite &= outside[:, None, None]
            if (phase[vbox][ball[bbox]] == CRACK).any():
                continue  # keep crack mouths as they are
            fill = PORE if rng.random() < 0.7 else BINDER
            phase[vbox][bite] = fill
            ids[vbox][bite] = 0
            att[vbox][bite] = pore_mu if fill == PORE else binder_mu
            negatives[vbox] |= bite

    particles = ids > 0
    near = ndimage.distance_transform_edt(~particles)
    # matrix pores within 3 px of a particle
    candidates = np.argwhere((phase == BINDER) & (near <= 3))
    n_pores = int(rng.poisson(float(rng.uniform(*pores_per_1000_surface)) / 1000.0 * n_surface))
    for _ in range(n_pores if len(candidates) else 0):
        centre = candidates[rng.integers(len(candidates))]
        ball, h = _ball(float(rng.uniform(1.0, 3.5)), np.exp(rng.normal(0.0, 0.2, 3)))
        vbox, bbox = _box(centre, h, shape)
        pore = ball[bbox] & (phase[vbox] == BINDER)
        phase[vbox][pore] = PORE
        att[vbox][pore] = pore_mu
        negatives[vbox] |= pore

    # debris: small separate solid blobs near particles
    candidates = np.argwhere((~particles) & (near >= 2) & (near <= 8))
    n_debris = int(rng.poisson(float(rng.uniform(*debris_per_1000_surface)) / 1000.0 * n_surface))
    debris = np.zeros(shape, dtype=bool)
    next_id = int(ids.max()) + 1
    for _ in range(n_debris if len(candidates) else 0):
        centre = candidates[rng.integers(len(candidates))]
        ball, h = _ball(float(rng.uniform(1.5, 5.0)), np.exp(rng.normal(0.0, 0.3, 3)))
        vbox, bbox = _box(centre, h, shape)
        blob = ball[bbox]
        clear = ndimage.binary_dilation(ids[vbox] > 0, iterations=1)
        if (blob & clear).any():
            continue
        phase[vbox][blob] = SOLID
        ids[vbox][blob] = next_id
        att[vbox][blob] = solid_mu * float(rng.uniform(0.85, 1.1))
        debris[vbox] |= blob
        next_id += 1
    if debris.any():
        negatives |= (ndimage.distance_transform_edt(~debris) <= 2) & (ids == 0)
    negatives &= phase != CRACK
    return replace(volume, phase=phase, particle_ids=ids, attenuation=att), negatives
