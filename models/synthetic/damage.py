"""More crack morphologies for the training family: split, hollow-core and fragmented particles.

:func:`add_damage` takes a :class:`~models.synthetic.cathode.CathodeVolume` and gives a share of
its particles one of three kinds of damage, built from the particle's own shape (its distance
transform and centroid), unlike the hold-out family of the benchmarks
(``benchmarks/holdout_family.py``), which no training script may use:

* ``split``: a planar crack through the centroid across the whole particle;
* ``core``: the part of the particle deeper than a share of its largest inner distance is void,
  with 2 to 5 planar radial cracks from the core to the surface;
* ``fragmented``: the particle is divided into 3 to 8 grains by nearest-seed regions and a
  random part of the grain boundaries opens.

Crack voxels get the pore attenuation; the particle ids are unchanged (a particle includes its
cracks and core).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from models.synthetic.cathode import CRACK, CathodeVolume

DAMAGE = ("split", "core", "fragmented")


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _particle_damage(
    inside: np.ndarray, rng: np.random.Generator, kind: str, width: float
) -> np.ndarray:
    """Crack voxels of one particle (``inside``: its mask within its bounding box)."""
    coords = np.argwhere(inside).astype(np.float32)
    centre = coords.mean(axis=0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in inside.shape], indexing="ij"), axis=0)
    offset = grid.astype(np.float32) - centre[:, None, None, None]
    if kind == "split":
        normal = _unit(rng)
        shift = float(rng.uniform(-1.5, 1.5))
        crack = np.abs(np.tensordot(normal, offset, axes=1) - shift) < width / 2
    elif kind == "core":
        depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1, 1:-1]
        crack = depth > float(rng.uniform(0.5, 0.75)) * depth.max()
        for _ in range(int(rng.integers(2, 6))):
            out = _unit(rng)
            across = np.cross(out, _unit(rng))
            across /= max(np.linalg.norm(across), 1e-6)
            slab = np.abs(np.tensordot(across, offset, axes=1)) < width / 2
            crack |= slab & (np.tensordot(out, offset, axes=1) > 0)
    else:
        n = int(rng.integers(3, 9))
        seeds = coords[rng.choice(len(coords), size=min(n, len(coords)), replace=False)]
        marker = np.zeros(inside.shape, dtype=np.int32)
        marker[tuple(seeds.astype(int).T)] = np.arange(1, len(seeds) + 1)
        _, idx = ndimage.distance_transform_edt(marker == 0, return_indices=True)
        grains = marker[tuple(idx)] * inside
        edges = np.zeros(inside.shape, dtype=bool)
        opened = rng.random(len(seeds) + 1) < float(rng.uniform(0.4, 1.0))
        for axis in range(3):
            a = np.moveaxis(grains, axis, 0)
            d = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
            d &= opened[a[1:]] | opened[a[:-1]]
            e = np.moveaxis(edges, axis, 0)
            e[1:] |= d
            if width > 1.8:
                e[:-1] |= d
        crack = edges
    return crack & inside


def add_damage(
    volume: CathodeVolume,
    rng: np.random.Generator,
    *,
    share: float = 0.5,
    width_px: tuple[float, float] = (1.0, 2.6),
    kinds: tuple[str, ...] = DAMAGE,
) -> CathodeVolume:
    """A copy of ``volume`` with split, hollow-core or fragmented particles added.

    Parameters
    ----------
    volume : CathodeVolume
        Training-family volume.
    rng : numpy.random.Generator
        Source of all random choices.
    share : float, optional
        Share of the particles that get one of the three kinds of damage.
    width_px : tuple of float
        Range of crack widths.
    kinds : tuple of str, optional
        The kinds of damage drawn from (a subset of :data:`DAMAGE`).

    Returns
    -------
    CathodeVolume
        Attenuation and phase (hence the crack mask) updated; particle ids unchanged.
    """
    unknown = set(kinds) - set(DAMAGE)
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {DAMAGE}, got {kinds}")
    ids = volume.particle_ids
    attenuation = volume.attenuation.copy()
    phase = volume.phase.copy()
    pore_mu = float(attenuation[phase == 0].mean()) if (phase == 0).any() else 0.0
    for label, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is None or rng.random() >= share:
            continue
        inside = ids[box] == label
        if inside.sum() < 200:
            continue
        kind = kinds[int(rng.integers(len(kinds)))]
        crack = _particle_damage(inside, rng, kind, float(rng.uniform(*width_px)))
        attenuation[box][crack] = pore_mu
        phase[box][crack] = CRACK
    return replace(volume, attenuation=attenuation, phase=phase)
