"""Synthetic NMC cathode volumes with intra-particle cracks, and their X-ray projections.

The volume mimics a nano-tomography sub-volume of a composite cathode (see the crack-detection
seed paper): irregular secondary particles tightly packed in a carbon/binder matrix with pores,
thin branching, mostly radial cracks inside the particles, and a crack density that decreases
with depth.

Conventions
-----------
* Arrays are indexed ``(Z, Y, X)``. ``Z`` is the depth in the electrode and the tomographic
  rotation axis; **z = 0 is the separator side** (most damage), ``z = Z - 1`` the current
  collector side.
* Phases: 0 = pore, 1 = carbon/binder, 2 = particle solid, 3 = crack (always inside a particle).
* Attenuation is a linear attenuation coefficient per voxel, in units of 1/pixel, so the line
  integral of a projection is a plain sum of voxels along the ray.

:func:`simulate_detector` turns line integrals (from any forward projector, for example
``pipelines.tomo.project.forward_project``) into raw detector frames with the look of
propagation-based phase contrast: edge fringes, detector blur, photon noise, a non-uniform beam,
and column gain errors that the flat field does not remove (ring artefacts after reconstruction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from scipy import ndimage

PORE, BINDER, SOLID, CRACK = 0, 1, 2, 3

# Lattice spacing of particle centres relative to the particle diameter: below 1, neighbouring
# particles are flattened against each other, which gives the tight packing of a calendered
# electrode.
_SPACING_PER_DIAMETER = 0.92
# Share of lattice sites dropped (at most) to create loosely packed regions.
_MAX_DROPPED_SITES = 0.35


class CathodeParams(BaseModel):
    """Parameters of the synthetic cathode microstructure.

    Lengths are in voxels (pixels), attenuation in 1/pixel.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    crack_density: float = Field(
        default=1.0, ge=0.0, description="Scale of crack frequency; 0 = none."
    )
    depth_gradient: bool = Field(
        default=True, description="More cracks near z = 0 (separator side)."
    )
    depth_decay: float = Field(
        default=0.35, gt=0.0, description="e-folding depth of the crack excess, as a fraction of Z."
    )
    n_particles: PositiveInt | None = Field(
        default=None, description="Number of particles; None derives it from particle_diameter_px."
    )
    particle_diameter_px: float = Field(default=24.0, gt=4.0)
    diameter_spread: float = Field(
        default=0.18, ge=0.0, lt=1.0, description="Relative std of radii."
    )
    packing_variation: float = Field(
        default=0.6, ge=0.0, le=1.0, description="Strength of lateral/depth variation of packing."
    )
    shape_irregularity: float = Field(default=0.15, ge=0.0, le=0.5)
    gap_px: float = Field(default=1.2, ge=0.0, description="Minimum matrix gap between particles.")
    binder_fraction: float = Field(
        default=0.55, ge=0.0, le=1.0, description="Binder share of matrix."
    )
    crack_width_px: tuple[float, float] = Field(
        default=(1.2, 3.0), description="Crack width near the particle centre and at its surface."
    )
    mu_particle: float = Field(default=0.012, gt=0.0)
    mu_binder: float = Field(default=0.003, ge=0.0)
    mu_pore: float = Field(default=0.0, ge=0.0)


@dataclass
class CathodeVolume:
    """A labelled synthetic cathode volume.

    Attributes
    ----------
    phase : numpy.ndarray
        uint8 (Z, Y, X): 0 = pore, 1 = carbon/binder, 2 = particle solid, 3 = crack.
    particle_ids : numpy.ndarray
        int32 (Z, Y, X): 0 = no particle, k > 0 = particle instance k (its cracks carry k).
    attenuation : numpy.ndarray
        float32 (Z, Y, X) linear attenuation per voxel in 1/pixel.
    seed : int
        Seed the volume was generated from.
    params : CathodeParams
        Effective parameters.
    """

    phase: np.ndarray
    particle_ids: np.ndarray
    attenuation: np.ndarray
    seed: int
    params: CathodeParams

    @property
    def crack_mask(self) -> np.ndarray:
        """bool (Z, Y, X), True on crack voxels."""
        return self.phase == CRACK

    @property
    def particle_mask(self) -> np.ndarray:
        """bool (Z, Y, X), True on particle voxels including their cracks."""
        return self.particle_ids > 0

    @property
    def n_particles(self) -> int:
        """Number of particle instances present in the volume."""
        return int(self.particle_ids.max())


def make_cathode_volume(
    shape: tuple[int, int, int],
    *,
    seed: int,
    crack_density: float = 1.0,
    depth_gradient: bool = True,
    n_particles: int | None = None,
    params: CathodeParams | None = None,
) -> CathodeVolume:
    """Generate a synthetic cathode volume with ground-truth labels.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)``; Y and X at least 8.
    seed : int
        Seed of the random generator; the same seed gives the same volume.
    crack_density : float, optional
        Scale of the crack frequency (share of cracked particles and cracks per particle);
        0 gives a crack-free volume.
    depth_gradient : bool, optional
        When True the crack frequency decays with depth from z = 0 (separator side).
    n_particles : int, optional
        Number of particles; by default it follows from ``params.particle_diameter_px``. When
        given, the particle diameter is derived so that the particles fill the volume.
    params : CathodeParams, optional
        Further microstructure parameters; ``crack_density``, ``depth_gradient`` and
        ``n_particles`` given as arguments override the fields of the same name.

    Returns
    -------
    CathodeVolume
        Phase labels, particle instances and attenuation.
    """
    if len(shape) != 3 or int(shape[0]) < 1 or int(shape[1]) < 8 or int(shape[2]) < 8:
        raise ValueError(f"shape must be (Z >= 1, Y >= 8, X >= 8), got {shape!r}")
    if crack_density < 0:
        raise ValueError(f"crack_density must be >= 0, got {crack_density}")
    if n_particles is not None and n_particles < 1:
        raise ValueError(f"n_particles must be >= 1, got {n_particles}")
    base = params if params is not None else CathodeParams()
    p = base.model_copy(
        update={
            "crack_density": float(crack_density),
            "depth_gradient": bool(depth_gradient),
            "n_particles": n_particles,
        }
    )
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    rng = np.random.default_rng(seed)

    packing_field = _smooth_noise(shape3, 2.5 * p.particle_diameter_px, rng)
    centres, radii, diameter = _place_particles(shape3, p, packing_field, rng)
    roughness = _smooth_noise(shape3, max(2.0, diameter / 6.0), rng)
    waviness = _smooth_noise(shape3, max(2.0, diameter / 4.0), rng)

    best_rn, second_rn, best_id = _assign_voxels(shape3, centres, radii, roughness, p, rng)
    gap_norm = p.gap_px / (diameter / 2.0)
    solid = (best_rn < 1.0) & ((second_rn - best_rn) > gap_norm)
    particle_ids = np.where(solid, best_id, 0).astype(np.int32)
    particle_ids = _relabel_consecutive(particle_ids)

    phase = np.full(shape3, PORE, dtype=np.uint8)
    binder = _binder_mask(shape3, best_rn, solid, p, rng)
    phase[binder] = BINDER
    phase[solid] = SOLID
    _carve_cracks(phase, particle_ids, best_rn, waviness, p, rng)

    attenuation = _attenuation(phase, particle_ids, p, rng)
    return CathodeVolume(
        phase=phase, particle_ids=particle_ids, attenuation=attenuation, seed=seed, params=p
    )


def crack_probability_at_depth(z_fraction: np.ndarray | float, params: CathodeParams) -> np.ndarray:
    """Relative crack frequency as a function of depth.

    Parameters
    ----------
    z_fraction : float or numpy.ndarray
        Depth as a fraction of Z (0 = separator side).
    params : CathodeParams
        Microstructure parameters.

    Returns
    -------
    numpy.ndarray
        Crack frequency factor, ``crack_density`` times a profile in (0.25, 1].
    """
    z = np.asarray(z_fraction, dtype=np.float64)
    if params.depth_gradient:
        profile = 0.25 + 0.75 * np.exp(-np.clip(z, 0.0, None) / params.depth_decay)
    else:
        profile = np.full_like(z, 0.55)
    return params.crack_density * profile


def _smooth_noise(shape: tuple[int, ...], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with correlation length ~``scale_px``.

    A coarse Gaussian field is interpolated linearly, one axis at a time, to the full shape.
    """
    coarse = tuple(int(np.ceil(s / scale_px)) + 4 for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), 0.8).astype(np.float32)
    for axis, size in enumerate(shape):
        coord = np.arange(size, dtype=np.float64) * (coarse[axis] - 3) / max(size, 1)
        coord += rng.uniform(0.5, 1.5)
        i0 = np.floor(coord).astype(np.intp)
        w = (coord - i0).astype(np.float32)
        w_shape = [1] * len(shape)
        w_shape[axis] = size
        w = w.reshape(w_shape)
        field = field.take(i0, axis=axis) * (1 - w) + field.take(i0 + 1, axis=axis) * w
    field -= np.float32(field.mean())
    std = float(field.std())
    if std > 0:
        field /= np.float32(std)
    return field


def _place_particles(
    shape: tuple[int, int, int],
    p: CathodeParams,
    packing_field: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Particle centres on a jittered lattice with some sites dropped (loose regions)."""
    volume = float(np.prod(shape))
    keep_share = 1.0 - _MAX_DROPPED_SITES * p.packing_variation
    if p.n_particles is not None:
        spacing = (volume * keep_share / p.n_particles) ** (1.0 / 3.0)
        diameter = spacing / _SPACING_PER_DIAMETER
    else:
        diameter = p.particle_diameter_px
        spacing = diameter * _SPACING_PER_DIAMETER
    axes = [np.arange(-0.3 * spacing, s + 0.3 * spacing, spacing) for s in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    # staggered rows make the packing less cubic
    grid[:, 2] += (np.round(grid[:, 0] / spacing) % 2) * 0.5 * spacing
    grid[:, 1] += (np.round(grid[:, 0] / spacing) % 3) * 0.33 * spacing
    grid += rng.uniform(-0.28, 0.28, size=grid.shape) * spacing
    for axis, size in enumerate(shape):
        lo, hi = -0.45 * spacing, size - 1 + 0.45 * spacing
        grid = grid[(grid[:, axis] >= lo) & (grid[:, axis] <= hi)]
    n_sites = len(grid)
    n_keep = p.n_particles if p.n_particles is not None else int(round(n_sites * keep_share))
    n_keep = max(1, min(n_keep, n_sites))
    idx = np.clip(np.round(grid).astype(int), 0, np.array(shape) - 1)
    density = packing_field[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    weights = np.exp(2.0 * p.packing_variation * density)
    chosen = rng.choice(n_sites, size=n_keep, replace=False, p=weights / weights.sum())
    centres = grid[chosen]
    radii = 0.5 * diameter * np.exp(rng.normal(0.0, p.diameter_spread, size=n_keep))
    radii = np.clip(radii, 0.3 * diameter, 0.9 * diameter)
    return centres, radii, float(diameter)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _particle_bbox(
    centre: np.ndarray, extent: float, shape: tuple[int, int, int]
) -> tuple[slice, slice, slice] | None:
    lo = np.maximum(np.floor(centre - extent).astype(int), 0)
    hi = np.minimum(np.ceil(centre + extent).astype(int) + 1, np.array(shape))
    if np.any(hi <= lo):
        return None
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _local_coords(box: tuple[slice, slice, slice], centre: np.ndarray) -> list[np.ndarray]:
    return [
        (np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)).reshape(
            [-1 if i == k else 1 for k in range(3)]
        )
        for i, (s, c) in enumerate(zip(box, centre, strict=True))
    ]


def _assign_voxels(
    shape: tuple[int, int, int],
    centres: np.ndarray,
    radii: np.ndarray,
    roughness: np.ndarray,
    p: CathodeParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised distance to the nearest and second nearest particle, and the nearest id."""
    best = np.full(shape, np.float32(9.0), dtype=np.float32)
    second = np.full(shape, np.float32(9.0), dtype=np.float32)
    best_id = np.zeros(shape, dtype=np.int32)
    irr = p.shape_irregularity
    for k, (centre, radius) in enumerate(zip(centres, radii, strict=True), start=1):
        box = _particle_bbox(centre, 1.35 * radius * (1 + irr), shape)
        if box is None:
            continue
        axes_scale = np.exp(rng.normal(0.0, 0.12, size=3))
        axes_scale /= np.prod(axes_scale) ** (1.0 / 3.0)
        # rows of `shape_matrix` map (dz, dy, dx) to the particle's scaled principal axes
        shape_matrix = (_random_rotation(rng) / axes_scale[:, None]).astype(np.float32)
        dz, dy, dx = _local_coords(box, centre)
        u = [
            shape_matrix[i, 0] * dz + shape_matrix[i, 1] * dy + shape_matrix[i, 2] * dx
            for i in range(3)
        ]
        dist = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]) + np.float32(1e-3)
        inv_dist = np.float32(1.0) / dist
        lobes = np.ones_like(dist)
        for _ in range(3):
            # a random cubic of the direction cosine to a random axis: smooth bumps and dents
            v = rng.standard_normal(3)
            w = (shape_matrix.T @ (v / np.linalg.norm(v))).astype(np.float32)
            c = (w[0] * dz + w[1] * dy + w[2] * dx) * inv_dist
            a1, a2, a3 = (rng.uniform(-1.0, 1.0, size=3) * irr * 0.8).astype(np.float32)
            lobes += c * (a1 + c * (a2 + c * a3))
        np.maximum(lobes, np.float32(0.5), out=lobes)
        rn = dist / (np.float32(radius) * lobes) + np.float32(0.5 * irr) * roughness[box]
        b, s, ids = best[box], second[box], best_id[box]
        closer = rn < b
        s[:] = np.where(closer, b, np.minimum(s, rn))
        b[:] = np.where(closer, rn, b)
        ids[:] = np.where(closer, np.int32(k), ids)
    return best, second, best_id


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut[labels]


def _binder_mask(
    shape: tuple[int, int, int],
    best_rn: np.ndarray,
    solid: np.ndarray,
    p: CathodeParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """Carbon/binder occupies part of the matrix, preferably close to particle surfaces."""
    score = _smooth_noise(shape, max(3.0, p.particle_diameter_px / 5.0), rng)
    score += np.float32(0.8) * (best_rn < 1.3).astype(np.float32)
    matrix = ~solid
    values = score[matrix]
    if values.size == 0:
        return np.zeros(shape, dtype=bool)
    sample = values[:: max(1, values.size // 200_000)]
    threshold = np.quantile(sample, 1.0 - p.binder_fraction)
    return matrix & (score > threshold)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _perpendicular(n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    m = rng.standard_normal(3)
    m -= m.dot(n) * n
    return _unit(m)


def _steep_sheet_normal(rng: np.random.Generator) -> np.ndarray:
    """Normal of a crack sheet tilted at most ~25 degrees from the z axis.

    Sheets lying nearly flat in a slice would show up as wide blobs in that slice; real
    intra-particle cracks seen in lateral slices are thin lines, so sheets are kept steep.
    """
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    nz = rng.uniform(-0.42, 0.42)
    r = np.sqrt(1.0 - nz**2)
    return np.array([nz, r * np.sin(azimuth), r * np.cos(azimuth)], dtype=np.float32)


def _carve_cracks(
    phase: np.ndarray,
    particle_ids: np.ndarray,
    best_rn: np.ndarray,
    waviness: np.ndarray,
    p: CathodeParams,
    rng: np.random.Generator,
) -> None:
    """Turn thin, branching, mostly radial sheets inside cracked particles into crack voxels."""
    if p.crack_density <= 0 or particle_ids.max() == 0:
        return
    shape = phase.shape
    objects = ndimage.find_objects(particle_ids)
    w_lo, w_hi = p.crack_width_px
    for k, box in enumerate(objects, start=1):
        if box is None:
            continue
        ids = particle_ids[box]
        inside = ids == k
        coords = np.nonzero(inside)
        centre = np.array([c.mean() + s.start for c, s in zip(coords, box, strict=True)])
        extent = np.array([s.stop - s.start for s in box], dtype=float)
        radius = 0.5 * float(np.cbrt(np.prod(extent)))
        frequency = float(crack_probability_at_depth(centre[0] / shape[0], p))
        if rng.random() >= min(1.0, 0.85 * frequency):
            continue
        n_cracks = 1 + rng.poisson(2.0 * min(frequency, 2.0))
        dz, dy, dx = _local_coords(box, centre)
        rn = best_rn[box]
        wav = waviness[box]
        half_width = np.float32(0.5 * w_lo) + np.float32(0.5 * (w_hi - w_lo)) * np.clip(rn, 0, 1)
        crack = np.zeros(inside.shape, dtype=bool)
        origin = rng.normal(0.0, 0.12 * radius, size=3)
        sheets: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]] = []
        for _ in range(n_cracks):
            normal = _steep_sheet_normal(rng)
            direction = _perpendicular(normal, rng)
            r_end = 2.0 if rng.random() < 0.7 else rng.uniform(0.6, 0.9)
            sheets.append((origin, normal, direction, rng.uniform(0.0, 0.25), r_end))
            if rng.random() < 0.55:
                along = rng.uniform(0.3, 0.65) * radius
                branch_origin = origin + direction * along
                branch_normal = _unit(normal + 0.8 * _perpendicular(normal, rng) * [0.3, 1, 1])
                branch_dir = _unit(direction - direction.dot(branch_normal) * branch_normal)
                sheets.append((branch_origin, branch_normal, branch_dir, 0.0, r_end))
        for o, n, m, r_start, r_end in sheets:
            qz, qy, qx = dz - np.float32(o[0]), dy - np.float32(o[1]), dx - np.float32(o[2])
            signed = n[0] * qz + n[1] * qy + n[2] * qx + np.float32(0.8) * wav
            forward = m[0] * qz + m[1] * qy + m[2] * qx
            crack |= (
                (np.abs(signed) < half_width)
                & (forward > 0)
                & (rn >= np.float32(r_start))
                & (rn <= np.float32(r_end))
            )
        crack &= inside
        phase[box][crack] = CRACK


def _attenuation(
    phase: np.ndarray, particle_ids: np.ndarray, p: CathodeParams, rng: np.random.Generator
) -> np.ndarray:
    n = int(particle_ids.max())
    per_particle = np.ones(n + 1, dtype=np.float32)
    per_particle[1:] = 1.0 + 0.06 * rng.standard_normal(n).astype(np.float32)
    lut = np.array([p.mu_pore, p.mu_binder, p.mu_particle, p.mu_pore], dtype=np.float32)
    # cracks carry their particle's id but have the pore value (0 * factor stays 0 only for
    # mu_pore == 0), so the factor is applied to solid voxels only
    factor = per_particle[particle_ids]
    factor[phase != SOLID] = 1.0
    return lut[phase] * factor


class DetectorParams(BaseModel):
    """Parameters of the simulated projection camera and beam."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    photons: float = Field(default=2.0e4, gt=0, description="Mean flat-field counts per pixel.")
    dark_counts: float = Field(default=100.0, ge=0)
    read_noise: float = Field(default=2.0, ge=0)
    phase_fringe: float = Field(
        default=0.6,
        description="Strength (px^2) of the Laplacian edge fringes; negative flips their sign "
        "(the other side of focus).",
    )
    blur_sigma_px: float = Field(default=0.7, ge=0)
    ring_fraction: float = Field(
        default=0.04, ge=0, le=1, description="Share of miscalibrated columns."
    )
    ring_amplitude: float = Field(
        default=0.03, ge=0, description="Std of their relative gain error."
    )
    beam_nonuniformity: float = Field(default=0.08, ge=0, lt=1)
    n_flats: PositiveInt = 10
    n_darks: PositiveInt = 10


@dataclass
class DetectorFrames:
    """Raw frames of a simulated scan.

    Attributes
    ----------
    projections : numpy.ndarray
        uint16 (N, rows, cols) sample frames.
    flat : numpy.ndarray
        uint16 (n_flats, rows, cols) open-beam frames.
    dark : numpy.ndarray
        uint16 (n_darks, rows, cols) frames without beam.
    """

    projections: np.ndarray
    flat: np.ndarray
    dark: np.ndarray


def simulate_detector(
    line_integrals: np.ndarray, *, seed: int, params: DetectorParams | None = None
) -> DetectorFrames:
    """Turn attenuation line integrals into raw, phase-contrast-like detector frames.

    Parameters
    ----------
    line_integrals : numpy.ndarray
        float (N, rows, cols) projected attenuation (dimensionless, >= 0).
    seed : int
        Seed of the noise.
    params : DetectorParams, optional
        Camera and beam parameters.

    Returns
    -------
    DetectorFrames
        uint16 projections, flats and darks.

    Notes
    -----
    The intensity is ``exp(-p) * (1 + phase_fringe * laplacian(p))`` (the transport-of-intensity
    form of near-field propagation with the phase proportional to the attenuation), blurred by a
    Gaussian detector response, multiplied by the beam profile and by column gains, and drawn
    with Poisson noise. The flats see the beam profile but not the column gain errors, so those
    columns leave stripes in the sinograms and rings in the reconstruction.
    """
    p = params if params is not None else DetectorParams()
    if line_integrals.ndim != 3:
        raise ValueError(
            f"line_integrals must be 3-D (N, rows, cols), got shape {line_integrals.shape}"
        )
    rng = np.random.default_rng(seed)
    lint = np.asarray(line_integrals, dtype=np.float32)
    _, rows, cols = lint.shape
    intensity = np.exp(-lint)
    if p.phase_fringe != 0:
        # the Laplacian acts in the detector plane only, not across projection angles
        lap = np.stack([ndimage.laplace(frame, mode="nearest") for frame in lint])
        intensity *= np.clip(1.0 + np.float32(p.phase_fringe) * lap, 0.05, None)
    if p.blur_sigma_px > 0:
        intensity = ndimage.gaussian_filter(intensity, (0, p.blur_sigma_px, p.blur_sigma_px))
    profile = 1.0 + p.beam_nonuniformity * _smooth_noise((rows, cols), max(rows, cols) / 3.0, rng)
    beam = np.clip(profile, 0.2, None).astype(np.float32) * np.float32(p.photons)
    gains = np.ones(cols, dtype=np.float32)
    bad = np.asarray(rng.random(cols) < p.ring_fraction)
    gains[bad] += rng.normal(0.0, p.ring_amplitude, size=int(bad.sum())).astype(np.float32)
    expected = intensity * beam * gains
    projections = _counts(rng.poisson(expected), p, rng)
    flat = _counts(rng.poisson(np.broadcast_to(beam, (p.n_flats, rows, cols))), p, rng)
    dark = _counts(np.zeros((p.n_darks, rows, cols)), p, rng)
    return DetectorFrames(projections=projections, flat=flat, dark=dark)


def _counts(signal: np.ndarray, p: DetectorParams, rng: np.random.Generator) -> np.ndarray:
    total = signal + p.dark_counts + rng.normal(0.0, p.read_noise, size=signal.shape)
    return np.clip(np.round(total), 0, np.iinfo(np.uint16).max).astype(np.uint16)
