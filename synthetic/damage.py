"""More crack morphologies for the training family: split, hollow-core and fragmented particles.

:func:`add_damage` takes a :class:`~synthetic.cathode.CathodeVolume` and gives a share of
its particles one of three kinds of damage, built from the particle's own shape (its distance
transform and centroid), unlike the hold-out family of the benchmarks
(``benchmarks/holdout_family.py``), which no training script may use:

* ``split``: a planar crack through the centroid across the whole particle;
* ``core``: the part of the particle deeper than a share of its largest inner distance is void,
  with 2 to 5 planar radial cracks from the core to the surface;
* ``fragmented``: the particle is divided into 3 to 8 grains by nearest-seed regions and a
  random part of the grain boundaries opens;
* ``surface`` (in :data:`WIDE_DAMAGE` only): 1 to 4 short planar cracks entering from the
  surface and stopping at a random depth, like the first cracks of a cycled particle;
* ``voids`` (:data:`WIDE_DAMAGE` only): a cluster of 3 to 12 small round pores of random size
  in the particle's interior.

Crack voxels get the pore attenuation; the particle ids are unchanged (a particle includes its
cracks and core).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage

from synthetic.cathode import CRACK, CathodeParams, CathodeVolume, make_cathode_volume

DAMAGE = ("split", "core", "fragmented")
# the wider randomisation of the training generator (``--wide`` in training.crack_unet)
WIDE_DAMAGE = ("split", "core", "fragmented", "surface", "voids")


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _inner_depth(inside: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1, 1:-1]


def _surface_cracks(
    inside: np.ndarray, offset: np.ndarray, rng: np.random.Generator, width: float
) -> np.ndarray:
    """1 to 4 planar cracks entering from random surface points toward the centroid.

    Each lies in a plane containing the inward direction, reaches 20 to 60 % of twice the
    particle's largest inner distance deep, is about as wide, and opens from ``width`` at its
    tip to up to 8 px at its mouth.
    """
    depth = _inner_depth(inside)
    surface = np.argwhere(inside & (depth <= 1.5)).astype(np.float32)
    crack = np.zeros(inside.shape, dtype=bool)
    if not len(surface):
        return crack
    centroid = np.argwhere(inside).mean(axis=0).astype(np.float32)
    reach = 2.0 * float(depth.max())
    for _ in range(int(rng.integers(1, 5))):
        mouth = surface[rng.integers(len(surface))] - centroid
        inward = -mouth / max(float(np.linalg.norm(mouth)), 1e-6)
        normal = np.cross(inward, _unit(rng))
        normal /= max(float(np.linalg.norm(normal)), 1e-6)
        lateral = np.cross(inward, normal)
        rel = offset - mouth[:, None, None, None]
        length = float(rng.uniform(0.2, 0.6)) * reach
        half_span = 0.5 * length * float(rng.uniform(0.6, 1.4))
        along = np.tensordot(inward.astype(np.float32), rel, axes=1)
        # wedge-shaped: the crack opens toward its mouth (half-width up to 1 to 4 px there)
        mouth_half = max(width / 2, float(rng.uniform(1.0, 4.0)))
        opening = np.clip(1.0 - along / length, 0.0, 1.0)
        half_width = width / 2 + (mouth_half - width / 2) * opening
        crack |= (
            (np.abs(np.tensordot(normal.astype(np.float32), rel, axes=1)) < half_width)
            & (along > -2.0)
            & (along < length)
            & (np.abs(np.tensordot(lateral.astype(np.float32), rel, axes=1)) < half_span)
        )
    return crack


def _void_cluster(inside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """3 to 12 round pores (radius 1 to 5 px) at random interior points."""
    depth = _inner_depth(inside)
    candidates = np.argwhere(depth > max(2.0, 0.25 * depth.max()))
    voids = np.zeros(inside.shape, dtype=bool)
    if not len(candidates):
        return voids
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in inside.shape], indexing="ij"), axis=0)
    for _ in range(int(rng.integers(3, 13))):
        c = candidates[rng.integers(len(candidates))].astype(np.float32)
        radius = float(rng.uniform(1.0, 5.0))
        scale = np.exp(rng.normal(0.0, 0.25, size=3)).astype(np.float32)
        d2 = sum(((grid[i] - c[i]) / scale[i]) ** 2 for i in range(3))
        voids |= d2 <= radius * radius
    return voids


def _particle_damage(
    inside: np.ndarray,
    rng: np.random.Generator,
    kind: str,
    width: float,
    *,
    core_share: tuple[float, float] = (0.5, 0.75),
    wide_fragments: bool = False,
) -> np.ndarray:
    """Crack voxels of one particle (``inside``: its mask within its bounding box)."""
    coords = np.argwhere(inside).astype(np.float32)
    centre = coords.mean(axis=0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in inside.shape], indexing="ij"), axis=0)
    offset = grid.astype(np.float32) - centre[:, None, None, None]
    if kind == "surface":
        return _surface_cracks(inside, offset, rng, width) & inside
    if kind == "voids":
        return _void_cluster(inside, rng) & inside
    if kind == "split":
        normal = _unit(rng)
        shift = float(rng.uniform(-1.5, 1.5))
        crack = np.abs(np.tensordot(normal, offset, axes=1) - shift) < width / 2
    elif kind == "core":
        depth = _inner_depth(inside)
        crack = depth > float(rng.uniform(*core_share)) * depth.max()
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
        if wide_fragments and width >= 3.0:  # grain boundaries as wide as the drawn width
            cross = ndimage.generate_binary_structure(3, 1)
            edges = ndimage.binary_dilation(edges, cross, iterations=int(round((width - 2) / 2)))
        crack = edges
    return crack & inside


def add_damage(
    volume: CathodeVolume,
    rng: np.random.Generator,
    *,
    share: float = 0.5,
    width_px: tuple[float, float] = (1.0, 2.6),
    kinds: tuple[str, ...] = DAMAGE,
    core_share: tuple[float, float] = (0.5, 0.75),
    wide_fragments: bool = False,
) -> CathodeVolume:
    """A copy of ``volume`` with split, hollow-core or fragmented particles added.

    Parameters
    ----------
    volume : CathodeVolume
        Training-family volume.
    rng : numpy.random.Generator
        Source of all random choices.
    share : float, optional
        Share of the particles that get one of the kinds of damage.
    width_px : tuple of float
        Range of crack widths.
    kinds : tuple of str
        Kinds of damage drawn from (:data:`DAMAGE`, or :data:`WIDE_DAMAGE` for all five).
    core_share : tuple of float
        Range of the inner-distance share above which a hollow core is void (smaller = a
        larger core).
    wide_fragments : bool
        Open the fragment boundaries as wide as the drawn width when it is >= 3 px (else they
        are 1 to 2 px whatever the width).

    Returns
    -------
    CathodeVolume
        Attenuation and phase (hence the crack mask) updated; particle ids unchanged.
    """
    unknown = set(kinds) - set(WIDE_DAMAGE)
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {WIDE_DAMAGE}, got {kinds}")
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
        crack = _particle_damage(
            inside,
            rng,
            kind,
            float(rng.uniform(*width_px)),
            core_share=core_share,
            wide_fragments=wide_fragments,
        )
        attenuation[box][crack] = pore_mu
        phase[box][crack] = CRACK
    return replace(volume, attenuation=attenuation, phase=phase)


def damaged_cathode_volume(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    seed: int,
    crack_density: float,
    depth_gradient: bool,
    params: CathodeParams,
    damage_share: float,
    **damage: Any,
) -> CathodeVolume:
    """A synthetic cathode volume (:func:`synthetic.cathode.make_cathode_volume`) with a
    ``damage_share`` of its particles damaged by :func:`add_damage` (``damage``: its other
    keywords) when that share is > 0."""
    volume = make_cathode_volume(
        shape, seed=seed, crack_density=crack_density, depth_gradient=depth_gradient, params=params
    )
    if damage_share <= 0:
        return volume
    return add_damage(volume, rng, share=damage_share, **damage)
