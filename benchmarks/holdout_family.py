"""A validation-only family of synthetic cathode scans that no network trains on.

Written apart from :mod:`synthetic.cathode` (different code and different shapes), so
that a score here says something about data the networks have not seen. It lives in
``benchmarks/`` (above ``pipelines/``, as it reconstructs with the project's own FBP, and out of
reach of the training scripts in ``models/``; a test checks that none imports it).

What differs from the training family:

* particles are rotated super-ellipsoids with a low-order bumpy surface, placed by random
  sequential addition (sparse to dense, 8 to 45 px semi-axes), not a jittered lattice of
  irregular spheres;
* each particle gets one damage kind: a planar crack through the whole particle, a hollow core
  with radial cracks, intergranular fragmentation (Voronoi grain boundaries opened), a surface
  crack, or none;
* carbon/binder is either blobby (a thresholded smooth random field) or granular (many small
  grains), and fills only part of the pore space;
* a detector model of its own (photon noise, phase-contrast fringes of either sign, blur,
  column gains that make rings, sparse-angle or missing-wedge scans), reconstructed with the
  project's own :func:`pipelines.tomo.fbp.reconstruct`, optionally quantised to 8 bit as the
  real PNG renders are.

Ground truth: particle instances whose mask includes their cracks and core voids (the particle
envelope), the crack/void mask, and the carbon/binder mask. ``cracked=False`` gives the same
microstructure with no cracks and no cores (the crack-free variant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from pipelines.tomo.fbp import ReconParams, reconstruct
from pipelines.tomo.project import forward_project

DamageKind = Literal["through", "hollow", "fragmented", "surface", "none"]
DAMAGE_KINDS: tuple[DamageKind, ...] = ("through", "hollow", "fragmented", "surface", "none")


@dataclass
class HoldoutVolume:
    """A reconstructed hold-out scan and its ground truth.

    Attributes
    ----------
    recon : numpy.ndarray
        float32 (Z, Y, X) reconstruction (0 outside the reconstruction circle); uint8 when
        the scan was quantised.
    particle_ids : numpy.ndarray
        int32 (Z, Y, X) particle instances including their cracks and core voids.
    crack_mask : numpy.ndarray
        bool (Z, Y, X) cracks and core voids (inside the particles).
    binder_mask : numpy.ndarray
        bool (Z, Y, X) carbon/binder.
    kinds : dict
        Damage kind of each particle id.
    attenuation : numpy.ndarray
        float32 (Z, Y, X) true attenuation (1/pixel).
    """

    recon: np.ndarray
    particle_ids: np.ndarray
    crack_mask: np.ndarray
    binder_mask: np.ndarray
    kinds: dict[int, DamageKind]
    attenuation: np.ndarray


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


@dataclass
class _Particle:
    centre: np.ndarray  # (z, y, x)
    axes: np.ndarray  # semi-axes (3,)
    rotation: np.ndarray  # (3, 3)
    power: float
    bumps: np.ndarray  # (k, 3) directions
    bump_amp: np.ndarray  # (k,)
    kind: DamageKind

    @property
    def radius(self) -> float:
        return float(self.axes.max())


def _local(p: _Particle, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Offsets from the centre (3, ...) and the normalised super-ellipsoid radius in ``box``."""
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
    offset = np.stack([g - c for g, c in zip(grids, p.centre, strict=True)]).astype(np.float32)
    u = np.tensordot(p.rotation.T.astype(np.float32), offset, axes=1)
    scaled = np.abs(u / p.axes[:, None, None, None].astype(np.float32))
    r = (scaled**p.power).sum(axis=0) ** (1.0 / p.power)
    norm = np.sqrt((offset**2).sum(axis=0)) + 1e-6
    direction = offset / norm
    bump = np.zeros_like(r)
    for d, a in zip(p.bumps, p.bump_amp, strict=True):
        bump += a * np.cos(3.0 * np.tensordot(d.astype(np.float32), direction, axes=1))
    return offset, r * (1.0 + bump)


def _box(p: _Particle, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    reach = p.radius * 1.25 + 2
    lo = [max(0, int(np.floor(c - reach))) for c in p.centre]
    hi = [min(n, int(np.ceil(c + reach)) + 1) for c, n in zip(p.centre, shape, strict=True)]
    if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def _place(
    shape: tuple[int, int, int], rng: np.random.Generator, density: float, size_range: tuple
) -> list[_Particle]:
    """Random sequential addition: bounding spheres may overlap a little (then a gap is cut)."""
    particles: list[_Particle] = []
    target = density * shape[1] * shape[2]
    covered = 0.0
    for _ in range(4000):
        if covered >= target:
            break
        r = float(rng.uniform(*size_range))
        axes = r * rng.uniform(0.65, 1.0, size=3)
        axes[int(rng.integers(3))] = r
        centre = np.array(
            [
                rng.uniform(-0.3 * r, shape[0] + 0.3 * r),
                rng.uniform(0, shape[1]),
                rng.uniform(0, shape[2]),
            ]
        )
        ok = all(np.linalg.norm(centre - q.centre) > 0.82 * (r + q.radius) for q in particles)
        if not ok:
            continue
        k = int(rng.integers(2, 5))
        particles.append(
            _Particle(
                centre=centre,
                axes=axes,
                rotation=_rotation(rng),
                power=float(rng.uniform(1.7, 3.2)),
                bumps=rng.normal(size=(k, 3)) / np.sqrt(3),
                bump_amp=rng.uniform(0.0, 0.06, size=k),
                kind="none",
            )
        )
        covered += np.pi * float(np.prod(np.sort(axes)[1:]))
    return particles


def _half_plane_crack(
    offset: np.ndarray, normal: np.ndarray, along: np.ndarray, width: float, start: float
) -> np.ndarray:
    """Thin slab ``|n . x| < width/2`` on the side ``a . x > start`` (a radial/surface crack)."""
    dist = np.tensordot(normal.astype(np.float32), offset, axes=1)
    ahead = np.tensordot(along.astype(np.float32), offset, axes=1)
    return (np.abs(dist) < width / 2) & (ahead > start)


def _perpendicular(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = rng.normal(size=3)
    w -= w.dot(v) * v
    return w / np.linalg.norm(w)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _damage(
    p: _Particle, offset: np.ndarray, r: np.ndarray, inside: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Crack / void voxels of one particle (subset of ``inside``)."""
    width = float(rng.uniform(1.0, 2.4))
    if p.kind == "through":
        normal = _unit(rng)
        # a gently curved plane through the middle third of the particle
        d = float(rng.uniform(-0.25, 0.25)) * p.radius
        along = _perpendicular(normal, rng)
        bend = (
            0.08
            * p.radius
            * np.sin(
                np.tensordot(along.astype(np.float32), offset, axes=1) / max(p.radius, 1) * 2.5
            )
        )
        dist = np.tensordot(normal.astype(np.float32), offset, axes=1) - d - bend
        crack = np.abs(dist) < width / 2
        if rng.random() < 0.4:  # a second, crossing plane
            crack |= np.abs(np.tensordot(_unit(rng).astype(np.float32), offset, axes=1)) < width / 2
    elif p.kind == "hollow":
        core = r < float(rng.uniform(0.15, 0.35))
        crack = core.copy()
        for _ in range(int(rng.integers(2, 7))):
            along = _unit(rng)
            crack |= _half_plane_crack(offset, _perpendicular(along, rng), along, width, 0.0) & (
                r < float(rng.uniform(0.7, 1.05))
            )
    elif p.kind == "fragmented":
        n_grains = int(rng.integers(4, 10))
        coords = offset.reshape(3, -1).T
        seeds = rng.uniform(-1, 1, size=(n_grains, 3)) * p.axes * 0.8
        dist = np.linalg.norm(coords[:, None, :] - seeds[None, :, :], axis=2)
        order = np.argsort(dist, axis=1)[:, :2]
        d1 = np.take_along_axis(dist, order[:, :1], 1)[:, 0]
        d2 = np.take_along_axis(dist, order[:, 1:2], 1)[:, 0]
        open_pair = rng.random((n_grains, n_grains)) < float(rng.uniform(0.3, 0.8))
        open_pair = open_pair | open_pair.T
        boundary = (d2 - d1 < width) & open_pair[order[:, 0], order[:, 1]]
        crack = boundary.reshape(r.shape)
    elif p.kind == "surface":
        crack = np.zeros(r.shape, dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            along = _unit(rng)
            crack |= _half_plane_crack(
                offset,
                _perpendicular(along, rng),
                along,
                width,
                float(rng.uniform(0.35, 0.7)) * p.radius,
            )
    else:
        crack = np.zeros(r.shape, dtype=bool)
    return crack & inside


def _binder(
    free: np.ndarray,
    rng: np.random.Generator,
    style: Literal["blobby", "granular"],
    fraction: float,
) -> np.ndarray:
    if style == "blobby":
        field = ndimage.gaussian_filter(rng.normal(size=free.shape).astype(np.float32), (1.5, 4, 4))
    else:
        field = ndimage.gaussian_filter(rng.normal(size=free.shape).astype(np.float32), 0.8)
        field += 0.5 * ndimage.gaussian_filter(
            rng.normal(size=free.shape).astype(np.float32), (2, 6, 6)
        )
    values = field[free]
    if values.size == 0:
        return np.zeros(free.shape, dtype=bool)
    level = np.quantile(values, 1.0 - fraction)
    return free & (field > level)


def make_microstructure(
    shape: tuple[int, int, int],
    *,
    seed: int,
    cracked: bool = True,
    density: float | None = None,
    size_range: tuple[float, float] | None = None,
    kinds: tuple[DamageKind, ...] = DAMAGE_KINDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, DamageKind]]:
    """Ground truth of a hold-out volume: attenuation, particle ids, cracks, binder, kinds.

    The random draws do not depend on ``cracked``, so ``cracked=False`` gives the same
    particles and binder without cracks and cores.
    """
    rng = np.random.default_rng(seed)
    dens = float(rng.uniform(0.35, 0.8)) if density is None else density
    lo = float(rng.uniform(8, 16))
    sizes = (lo, float(rng.uniform(max(lo + 6, 22), 45))) if size_range is None else size_range
    particles = _place(shape, rng, dens, sizes)
    ids = np.zeros(shape, dtype=np.int32)
    best_r = np.full(shape, np.inf, dtype=np.float32)
    cracks = np.zeros(shape, dtype=bool)
    kinds_out: dict[int, DamageKind] = {}
    damage_rngs = []
    for i, p in enumerate(particles, start=1):
        p.kind = kinds[int(rng.integers(len(kinds)))]
        damage_rngs.append(np.random.default_rng(rng.integers(2**32)))
        box = _box(p, shape)
        if box is None:
            continue
        _, r = _local(p, box)
        take = (r < 1.0) & (r < best_r[box])
        ids[box][take] = i
        best_r[box][take] = r[take]
    # a gap of about 2 px where two particles meet
    grown = ndimage.grey_dilation(ids, size=(1, 3, 3))
    shrunk = ndimage.grey_erosion(np.where(ids > 0, ids, np.iinfo(np.int32).max), size=(1, 3, 3))
    ids[(ids > 0) & ((grown != ids) | (shrunk != ids))] = 0
    sizes_vox = np.bincount(ids.ravel(), minlength=len(particles) + 1)
    for i, p in enumerate(particles, start=1):
        box = _box(p, shape)
        if box is None or sizes_vox[i] == 0:
            continue
        kinds_out[i] = p.kind
        offset, r = _local(p, box)
        inside = ids[box] == i
        crack = _damage(p, offset, r, inside, damage_rngs[i - 1])
        if cracked:
            cracks[box] |= crack
    ids = _renumber_kinds(ids, kinds_out)
    kinds_final = {new: kinds_out[old] for old, new in _renumber_map(kinds_out).items()}
    free = ids == 0
    style: Literal["blobby", "granular"] = "blobby" if rng.random() < 0.5 else "granular"
    binder = _binder(free, rng, style, float(rng.uniform(0.25, 0.6)))
    mu_solid = float(rng.uniform(0.008, 0.02))
    mu_binder = mu_solid * float(rng.uniform(0.15, 0.35))
    texture = 1.0 + 0.04 * ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.2)
    attenuation = np.zeros(shape, dtype=np.float32)
    attenuation[ids > 0] = mu_solid
    attenuation *= texture
    attenuation[binder] = mu_binder * texture[binder]
    attenuation[cracks] = 0.0
    return attenuation, ids, cracks, binder, kinds_final


def _renumber_map(kinds: dict[int, DamageKind]) -> dict[int, int]:
    return {old: new for new, old in enumerate(sorted(kinds), start=1)}


def _renumber_kinds(ids: np.ndarray, kinds: dict[int, DamageKind]) -> np.ndarray:
    lut = np.zeros(int(ids.max()) + 1, dtype=np.int32)
    for old, new in _renumber_map(kinds).items():
        lut[old] = new
    return lut[ids]


def scan_and_reconstruct(
    attenuation: np.ndarray, *, seed: int, quantize_8bit: bool | None = None
) -> np.ndarray:
    """Simulate a detector (own model) and reconstruct with :func:`pipelines.tomo.fbp.reconstruct`.

    Photon counts, fringe sign and strength, blur, ring strength, the angular sampling
    (full, sparse or a missing wedge) and 8-bit quantisation are drawn from ``seed``.
    """
    rng = np.random.default_rng(seed)
    n = attenuation.shape[2]
    scheme = rng.choice(["full", "full", "sparse", "wedge"])
    if scheme == "sparse":
        angles = np.linspace(0, 180, max(n // 3, 24), endpoint=False)
    elif scheme == "wedge":
        angles = np.linspace(0, float(rng.uniform(140, 165)), n, endpoint=False)
    else:
        angles = np.linspace(0, 180, int(n * 1.5), endpoint=False)
    lint = forward_project(attenuation, angles)  # (N, Z, X)
    fringe = float(rng.uniform(0.0, 0.6)) * float(rng.choice([-1.0, 1.0]))
    laplace = ndimage.laplace(lint, mode="nearest") if fringe else 0.0
    photons = float(10 ** rng.uniform(3.6, 4.8))
    beam = photons * (1.0 + 0.1 * np.sin(np.linspace(0, 3, n)))[None, None, :]
    intensity = (
        beam * np.exp(-lint) * (1.0 + fringe * laplace / max(float(lint.std()), 1e-6) * 0.05)
    )
    intensity = ndimage.gaussian_filter(
        intensity, (0, float(rng.uniform(0.3, 1.1)), float(rng.uniform(0.3, 1.1)))
    )
    gains = 1.0 + float(rng.uniform(0.0, 0.01)) * rng.normal(size=n)
    projections = rng.poisson(np.clip(intensity * gains, 0, None)).astype(np.float32)
    flat = rng.poisson(np.broadcast_to(beam, (4, attenuation.shape[0], n))).astype(np.float32)
    recon = reconstruct(
        projections + 100.0,
        angles,
        flat=flat + 100.0,
        dark=np.full((2, attenuation.shape[0], n), 100.0, dtype=np.float32),
        params=ReconParams(center="detector"),
    )
    q = bool(rng.random() < 0.5) if quantize_8bit is None else quantize_8bit
    if not q:
        return recon
    inside = recon != 0
    low, high = np.percentile(recon[inside], [0.3, 99.7])
    scaled = np.clip((recon - low) / (high - low) * 255.0, 0, 255)
    out = np.round(scaled).astype(np.uint8)
    out[~inside] = 0
    return out


def make_holdout_volume(
    shape: tuple[int, int, int] = (16, 192, 192),
    *,
    seed: int,
    cracked: bool = True,
    quantize_8bit: bool | None = None,
    **micro: object,
) -> HoldoutVolume:
    """Draw, scan and reconstruct one hold-out volume (see the module docstring).

    Parameters
    ----------
    shape : tuple of int
        (Z, N, N).
    seed : int
        Seed of the microstructure and the scan.
    cracked : bool, optional
        False = the crack-free variant of the same microstructure.
    quantize_8bit : bool, optional
        Quantise the reconstruction to uint8; None = drawn from ``seed``.
    **micro
        ``density``, ``size_range``, ``kinds`` of :func:`make_microstructure`.

    Returns
    -------
    HoldoutVolume
    """
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"shape must be (Z, N, N), got {shape!r}")
    attenuation, ids, cracks, binder, kinds = make_microstructure(
        shape,
        seed=seed,
        cracked=cracked,
        **micro,  # type: ignore[arg-type]
    )
    recon = scan_and_reconstruct(attenuation, seed=seed + 7, quantize_8bit=quantize_8bit)
    return HoldoutVolume(
        recon=recon,
        particle_ids=ids,
        crack_mask=cracks,
        binder_mask=binder,
        kinds=kinds,
        attenuation=attenuation,
    )


def make_single_particle(
    kind: DamageKind,
    *,
    seed: int,
    shape: tuple[int, int, int] = (16, 128, 128),
    radius: float = 36.0,
    quantize_8bit: bool = False,
) -> HoldoutVolume:
    """One particle of the given damage kind in the middle of a binder-filled field, scanned.

    For the acceptance checks "a through-cracked / hollow-core particle gets one label and a
    crack mask inside its envelope".
    """
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"shape must be (Z, N, N), got {shape!r}")
    rng = np.random.default_rng(seed)
    axes = radius * np.array([1.0, float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.8, 1.0))])
    p = _Particle(
        centre=np.array([shape[0] / 2, shape[1] / 2, shape[2] / 2]),
        axes=axes,
        rotation=_rotation(rng),
        power=float(rng.uniform(1.8, 2.6)),
        bumps=rng.normal(size=(3, 3)) / np.sqrt(3),
        bump_amp=rng.uniform(0.0, 0.05, size=3),
        kind=kind,
    )
    box = _box(p, shape)
    assert box is not None
    offset, r = _local(p, box)
    ids = np.zeros(shape, dtype=np.int32)
    ids[box][r < 1.0] = 1
    cracks = np.zeros(shape, dtype=bool)
    cracks[box] = _damage(p, offset, r, ids[box] == 1, rng)
    binder = _binder(ids == 0, rng, "blobby", 0.4)
    attenuation = np.zeros(shape, dtype=np.float32)
    attenuation[ids > 0] = 0.012
    attenuation[binder] = 0.003
    attenuation[cracks] = 0.0
    recon = scan_and_reconstruct(attenuation, seed=seed + 7, quantize_8bit=quantize_8bit)
    return HoldoutVolume(
        recon=recon,
        particle_ids=ids,
        crack_mask=cracks,
        binder_mask=binder,
        kinds={1: kind},
        attenuation=attenuation,
    )
