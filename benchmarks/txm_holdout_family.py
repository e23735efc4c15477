"""A validation-only family of operando XANES fields of view that no one tuned on.

Written apart from :mod:`synthetic.txm_dense` (different code, different shapes, different beam
and detector model), so that a score here says something about TXM data the tracker's
parameters were not chosen on. Like :mod:`benchmarks.holdout_family` for the tomography side,
it lives in ``benchmarks/`` out of reach of the training scripts and generators (a test checks
that none imports it, and that it imports neither :mod:`synthetic.txm` nor
:mod:`synthetic.txm_dense`).

What the family draws:

* **particles** with irregular outlines: star-shaped (random harmonics 2 to 5 of the radius),
  some stretched and rotated, or unions of two to four overlapping ellipses; some carry a
  primary-grain texture (Voronoi grains with thinner boundaries). Radii from 8 px to about a
  quarter of the frame; sparse to densely packed; some placed touching an earlier particle, so
  pairs and clusters form; the placement area reaches past the frame so several are cut by the
  border. Overlapping particles add their optical density, as in a projection;
* a **flat-topped thickness with a soft rim** (smoothstep over a rim of 12 % of the radius,
  2 to 8 px), not a rounded (spherical) profile;
* **per-particle Ni K-edge spectra**: edge energy within +-3 eV of 8345 eV, arctan step,
  Gaussian white line 6-12 eV above the edge, pre-edge slope, damped post-edge oscillation;
  pre-edge absorption 25-50 % of the post-edge one; a faint energy-independent support film
  that moves with the sample;
* a **beam in the detector frame**: vignetting about an off-centre point, a linear
  illumination gradient, off-centre concentric zone-plate rings (chirped cosine), condenser
  speckle (smoothed noise) and a faint tilted grid; frame to frame the beam's intensity
  wanders by about 1-2 % and the pattern moves by a fraction of a pixel (a random walk), so the
  one reference flat (the mean of 10 noisy exposures at frame 0's beam) never matches exactly;
* a **detector**: Gaussian blur (0.6-1.3 px), Poisson counts with 500-3000 counts per pixel in
  the open beam, fixed dead pixels (0) and hot pixels (in the flat too), a few zingers per
  frame, 16-bit output;
* **sample drift**: a random walk with sub-pixel steps (0.15-0.6 px per frame and axis) plus a
  slow trend, applied to the sample only (particles are drawn analytically at their drifted
  position, no interpolation), zero in frame 0.

Ground truth: per-frame drift (row, col), frame-0 particle labels (the outline footprint; where
particles overlap, the thicker one), which particles are wholly visible in every frame (vs cut
by the border), each particle's edge energy, and the noise-free optical density.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

EDGE_CENTRE_EV = 8345.0


def holdout_energies(n_frames: int = 36) -> np.ndarray:
    """Ascending energies crossing the Ni K-edge: coarse pre-edge, fine edge, coarse post-edge.

    Parameters
    ----------
    n_frames : int
        Number of energies (>= 10).

    Returns
    -------
    numpy.ndarray
        ``(n_frames,)`` float64 eV from 8250 to 8450.
    """
    if n_frames < 10:
        raise ValueError(f"n_frames must be >= 10, got {n_frames}")
    n_pre = max(3, n_frames // 5)
    n_post = max(3, n_frames // 4)
    n_edge = n_frames - n_pre - n_post
    pre = np.linspace(8250.0, 8328.0, n_pre, endpoint=False)
    edge = np.linspace(8328.0, 8375.0, n_edge, endpoint=False)
    post = np.linspace(8375.0, 8450.0, n_post)
    return np.concatenate([pre, edge, post])


@dataclass
class _Particle:
    centre: np.ndarray  # (row, col) in frame 0
    radius: float  # nominal radius (px)
    kind: str  # "star" or "lobes"
    harmonics: np.ndarray  # (K, 3): order, amplitude, phase (star)
    stretch: float  # star: axis ratio >= 1
    angle: float
    lobes: np.ndarray  # (L, 5): d_row, d_col, a, b, angle (lobes)
    thickness: float  # post-edge OD of the flat top
    rim: float  # px
    grains: np.ndarray | None  # (G, 2) grain seeds in particle coordinates, or None
    grain_gain: np.ndarray | None  # (G,) thickness factor per grain
    extent: float  # outline lies within this distance of the centre
    spectrum: dict[str, float] = field(default_factory=dict)

    def signed_distance(self, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Approximate distance inside the outline (px, > 0 inside) at offsets from the centre."""
        if self.kind == "star":
            c, s = np.cos(self.angle), np.sin(self.angle)
            u = (c * dx + s * dy) / np.sqrt(self.stretch)
            v = (-s * dx + c * dy) * np.sqrt(self.stretch)
            rho = np.hypot(u, v)
            theta = np.arctan2(v, u)
            r = np.full_like(rho, self.radius)
            for order, amp, phase in self.harmonics:
                r += self.radius * amp * np.cos(order * theta + phase)
            return r - rho
        out = np.full(dy.shape, -np.inf)
        for oy, ox, a, b, ang in self.lobes:
            c, s = np.cos(ang), np.sin(ang)
            u = c * (dx - ox) + s * (dy - oy)
            v = -s * (dx - ox) + c * (dy - oy)
            q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            out = np.maximum(out, (1.0 - q) * min(a, b))
        return out

    def thickness_map(self, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Flat-topped thickness (post-edge OD) with a soft rim and optional grain texture."""
        d = self.signed_distance(dy, dx)
        x = np.clip(d / self.rim, 0.0, 1.0)
        t = self.thickness * x * x * (3.0 - 2.0 * x)
        if self.grains is not None and self.grain_gain is not None:
            inside = d > 0
            if inside.any():
                pts = np.column_stack([dy[inside], dx[inside]])
                dist, idx = cKDTree(self.grains).query(pts, k=2)
                gain = self.grain_gain[idx[:, 0]]
                boundary = np.clip((dist[:, 1] - dist[:, 0]) / 1.5, 0.0, 1.0)
                t[inside] *= gain * (0.75 + 0.25 * boundary)
        return t

    def absorption(self, energies: np.ndarray) -> np.ndarray:
        """Absorption per unit post-edge thickness at each energy (about 1 well above the edge)."""
        p = self.spectrum
        de = np.asarray(energies, dtype=np.float64) - p["edge"]
        pre = p["pre"] * (1.0 + p["pre_slope"] * de / 100.0)
        step = 0.5 + np.arctan(de / p["width"]) / np.pi
        white = p["white_amp"] * np.exp(-0.5 * ((de - p["white_offset"]) / p["white_width"]) ** 2)
        above = np.clip(de, 0.0, None)
        wiggle = p["osc_amp"] * np.sin(2 * np.pi * above / p["osc_period"]) * np.exp(-above / 60.0)
        post = 1.0 + p["post_slope"] * de / 100.0 + wiggle
        return pre + (1.0 - p["pre"]) * step * post + (1.0 - p["pre"]) * white * step


def _random_spectrum(rng: np.random.Generator) -> dict[str, float]:
    return {
        "edge": EDGE_CENTRE_EV + float(rng.uniform(-3.0, 3.0)),
        "pre": float(rng.uniform(0.25, 0.5)),
        "pre_slope": float(rng.uniform(-0.03, 0.04)),
        "width": float(rng.uniform(1.5, 3.0)),
        "white_amp": float(rng.uniform(0.3, 0.9)),
        "white_offset": float(rng.uniform(6.0, 12.0)),
        "white_width": float(rng.uniform(3.0, 6.0)),
        "post_slope": float(rng.uniform(-0.06, 0.02)),
        "osc_amp": float(rng.uniform(0.0, 0.08)),
        "osc_period": float(rng.uniform(25.0, 45.0)),
    }


def _random_particle(rng: np.random.Generator, centre: np.ndarray, radius: float) -> _Particle:
    rim = float(np.clip(0.12 * radius, 2.0, 8.0))
    thickness = float(rng.uniform(0.35, 1.4) * (0.55 + 0.45 * min(1.0, radius / 40.0)))
    if rng.random() < 0.6:
        n_h = int(rng.integers(2, 5))
        orders = rng.choice(np.arange(2, 6), size=n_h, replace=False)
        amps = rng.uniform(0.02, 0.12, size=n_h) / np.sqrt(orders / 2.0)
        harmonics = np.column_stack([orders, amps, rng.uniform(0, 2 * np.pi, n_h)])
        stretch = float(rng.uniform(1.0, 1.8)) if rng.random() < 0.4 else 1.0
        extent = radius * (1.0 + amps.sum()) * np.sqrt(stretch)
        kind, lobes = "star", np.zeros((0, 5))
    else:
        n_l = int(rng.integers(2, 5))
        rows = []
        for k in range(n_l):
            a = radius * rng.uniform(0.55, 0.9)
            b = a * rng.uniform(0.5, 1.0)
            off = np.zeros(2) if k == 0 else rng.normal(0.0, 0.35 * radius, 2)
            rows.append([off[0], off[1], a, b, rng.uniform(0, np.pi)])
        lobes = np.array(rows)
        extent = float(np.max(np.hypot(lobes[:, 0], lobes[:, 1]) + lobes[:, 2]))
        kind, harmonics, stretch = "lobes", np.zeros((0, 3)), 1.0
    grains = gain = None
    if radius >= 20 and rng.random() < 0.5:
        spacing = rng.uniform(5.0, 10.0)
        n_g = int(np.clip((2 * extent / spacing) ** 2, 4, 4000))
        grains = rng.uniform(-extent - 2, extent + 2, size=(n_g, 2))
        gain = rng.uniform(0.85, 1.15, size=n_g)
    return _Particle(
        centre=centre,
        radius=radius,
        kind=kind,
        harmonics=harmonics,
        stretch=stretch,
        angle=float(rng.uniform(0, np.pi)),
        lobes=lobes,
        thickness=thickness,
        rim=rim,
        grains=grains,
        grain_gain=gain,
        extent=float(extent + 1.0),
        spectrum=_random_spectrum(rng),
    )


def _place_particles(rng: np.random.Generator, shape: tuple[int, int]) -> list[_Particle]:
    """Random sequential placement, sparse to dense, some touching, some past the border."""
    h, w = shape
    side = min(h, w)
    fill = rng.uniform(0.15, 0.6)
    r_max = side / 4.0
    n_large = int(rng.integers(2, 15))
    n_small = int(rng.integers(2, 16))
    small_max = min(28.0, r_max / 2.0)  # large from here to r_max, small from 8 px to here
    radii = np.concatenate(
        [
            np.exp(rng.uniform(np.log(small_max), np.log(r_max), n_large)),
            np.exp(rng.uniform(np.log(min(8.0, small_max)), np.log(small_max), n_small)),
        ]
    )
    radii = np.sort(radii)[::-1]
    particles: list[_Particle] = []
    area = 0.0
    for radius in radii:
        if radius >= small_max and area > fill * h * w and len(particles) >= 2:
            continue  # the large ones fill up to ``fill``; the small ones always come
        for _attempt in range(60):
            if particles and rng.random() < 0.45:
                host = particles[int(rng.integers(len(particles)))]
                direction = rng.uniform(0, 2 * np.pi)
                dist = (host.radius + radius) * rng.uniform(0.88, 1.02)
                centre = host.centre + dist * np.array([np.sin(direction), np.cos(direction)])
            else:
                margin = 0.5 * radius
                centre = np.array(
                    [rng.uniform(-margin, h + margin), rng.uniform(-margin, w + margin)]
                )
            if not (-0.6 * radius < centre[0] < h + 0.6 * radius):
                continue
            if not (-0.6 * radius < centre[1] < w + 0.6 * radius):
                continue
            gaps = [np.hypot(*(centre - p.centre)) / (p.radius + radius) for p in particles]
            if gaps and min(gaps) < 0.85:
                continue
            particles.append(_random_particle(rng, centre, float(radius)))
            area += np.pi * radius**2
            break
    return particles


@dataclass
class _Beam:
    """Open-beam intensity in the detector frame and how it changes frame to frame."""

    counts: float
    vignette_centre: np.ndarray
    vignette_depth: float
    gradient: np.ndarray  # (2,) relative change per px
    ring_centre: np.ndarray
    ring_k: float  # chirp: phase = ring_k * r^2
    ring_amp: float
    speckle: np.ndarray  # (H, W) relative modulation
    grid_period: float
    grid_angle: float
    grid_amp: float
    intensity: np.ndarray  # (N,) relative intensity per frame
    jitter: np.ndarray  # (N, 2) pattern displacement per frame (px)

    def static_pattern(self, shape: tuple[int, int]) -> np.ndarray:
        """Relative modulation of the zone-plate rings, condenser grid and speckle (mean ~1)."""
        h, w = shape
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        r2 = (y - self.ring_centre[0]) ** 2 + (x - self.ring_centre[1]) ** 2
        rings = 1.0 + self.ring_amp * np.cos(self.ring_k * r2) * np.exp(-r2 / (1.5 * h * w))
        c, s = np.cos(self.grid_angle), np.sin(self.grid_angle)
        grid = 1.0 + self.grid_amp * (
            np.cos(2 * np.pi * (c * x + s * y) / self.grid_period)
            * np.cos(2 * np.pi * (-s * x + c * y) / self.grid_period)
        )
        return rings * grid * (1.0 + self.speckle)

    def envelope(self, shape: tuple[int, int]) -> np.ndarray:
        """Smooth open-beam counts: vignetting about an off-centre point and a linear gradient."""
        h, w = shape
        y = np.arange(h, dtype=np.float64)[:, None]
        x = np.arange(w, dtype=np.float64)[None, :]
        rv2 = ((y - self.vignette_centre[0]) ** 2 + (x - self.vignette_centre[1]) ** 2) / (
            h * h + w * w
        )
        gradient = 1.0 + self.gradient[0] * (y - h / 2) + self.gradient[1] * (x - w / 2)
        return self.counts * (1.0 - self.vignette_depth * rv2) * gradient

    def frame_pattern(self, envelope: np.ndarray, spline: np.ndarray, index: int) -> np.ndarray:
        """Open-beam counts (noise-free, before blur) of frame ``index``.

        ``spline`` is ``ndimage.spline_filter`` of :meth:`static_pattern`; the pattern moves by
        the frame's jitter, the envelope stays.
        """
        moved = ndimage.shift(spline, self.jitter[index], order=3, mode="reflect", prefilter=False)
        return envelope * self.intensity[index] * moved


def _random_beam(rng: np.random.Generator, shape: tuple[int, int], n_frames: int) -> _Beam:
    h, w = shape
    speckle = ndimage.gaussian_filter(rng.normal(size=shape), rng.uniform(1.5, 4.0))
    speckle *= rng.uniform(0.02, 0.06) / max(float(speckle.std()), 1e-12)
    trend = np.linspace(0.0, -rng.uniform(0.0, 0.03), n_frames)
    wander = np.cumsum(rng.normal(0.0, 0.004, n_frames))
    jitter = np.cumsum(rng.normal(0.0, 0.06, (n_frames, 2)), axis=0)
    jitter -= jitter[0]
    return _Beam(
        counts=float(rng.uniform(500.0, 3000.0)),
        vignette_centre=np.array([rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w]),
        vignette_depth=float(rng.uniform(0.2, 0.6)),
        gradient=rng.uniform(-0.25, 0.25, 2) / np.array([h, w]),
        ring_centre=np.array([rng.uniform(-0.3, 1.3) * h, rng.uniform(-0.3, 1.3) * w]),
        ring_k=float(rng.uniform(4.0, 14.0) * np.pi / (h * w)),
        ring_amp=float(rng.uniform(0.03, 0.1)),
        speckle=speckle,
        grid_period=float(rng.uniform(18.0, 40.0)),
        grid_angle=float(rng.uniform(0, np.pi / 2)),
        grid_amp=float(rng.uniform(0.005, 0.02)),
        intensity=1.0 + trend + wander - wander[0],
        jitter=jitter,
    )


@dataclass
class HoldoutXanesScan:
    """A hold-out operando XANES scan and its ground truth.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(N, H, W)`` uint16 detector counts.
    energies : numpy.ndarray
        ``(N,)`` float64 eV, ascending.
    flat : numpy.ndarray
        ``(H, W)`` float32 reference flat: mean of 10 noisy open-beam exposures at frame 0's beam.
    drift : numpy.ndarray
        ``(N, 2)`` float64 sample displacement (row, col) in px against frame 0 (``drift[0]`` is 0).
    labels : numpy.ndarray
        ``(H, W)`` int32 frame-0 footprint, particle j -> j + 1 (the thicker one where they
        overlap).
    wholly_visible : numpy.ndarray
        ``(P,)`` bool: the particle's outline lies inside the frame, off its outer pixel ring, in
        every frame.
    edge_energy : numpy.ndarray
        ``(P,)`` float64 edge energy parameter of each particle's spectrum (eV).
    radii : numpy.ndarray
        ``(P,)`` float64 nominal radius (px).
    counts : float
        Mean open-beam counts per pixel.
    """

    frames: np.ndarray
    energies: np.ndarray
    flat: np.ndarray
    drift: np.ndarray
    labels: np.ndarray
    wholly_visible: np.ndarray
    edge_energy: np.ndarray
    radii: np.ndarray
    counts: float
    particles: list[_Particle] = field(repr=False, default_factory=list)
    film: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        repr=False, default_factory=lambda: (np.zeros(0), np.zeros((0, 2)), np.zeros(0))
    )

    @property
    def n_particles(self) -> int:
        """Number of particles drawn (in or partly in the frame)."""
        return len(self.particles)

    def thickness(self, drift: np.ndarray | tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """``(P, H, W)`` float32 post-edge thickness of each particle, the sample at ``drift``."""
        return _thickness_stack(self.particles, self.labels.shape, np.asarray(drift, float))

    def clean_od(
        self, energy: float, drift: np.ndarray | tuple[float, float] = (0.0, 0.0)
    ) -> np.ndarray:
        """Noise-free sample optical density at ``energy`` with the sample at ``drift``."""
        mu = np.array([p.absorption(np.array([energy]))[0] for p in self.particles])
        shape = self.labels.shape
        return _sample_od(self.particles, mu, self.film, shape, np.asarray(drift, float)).astype(
            np.float32
        )

    def truth_edge_map(self) -> np.ndarray:
        """``(H, W)`` edge-energy parameter of each labelled pixel's particle, NaN elsewhere."""
        out = np.full(self.labels.shape, np.nan)
        inside = self.labels > 0
        out[inside] = self.edge_energy[self.labels[inside] - 1]
        return out


def _box(
    p: _Particle, shape: tuple[int, int], drift: np.ndarray
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """The particle's box in the frame (y0, y1, x0, x1) and its pixels' offsets from the
    drifted centre; None when the box lies outside the frame."""
    h, w = shape
    cy, cx = p.centre + drift
    r = p.extent + 1.0
    y0, y1 = max(0, int(np.floor(cy - r))), min(h, int(np.ceil(cy + r)) + 1)
    x0, x1 = max(0, int(np.floor(cx - r))), min(w, int(np.ceil(cx + r)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    return (y0, y1, x0, x1), yy - cy, xx - cx


def _per_particle(
    particles: list[_Particle],
    shape: tuple[int, int],
    drift: np.ndarray,
    value: Callable[[_Particle, np.ndarray, np.ndarray], np.ndarray],
    dtype: type,
) -> np.ndarray:
    """``(P, H, W)``: ``value(particle, dy, dx)`` over each particle's box, zero elsewhere
    (``dy``, ``dx`` the pixel offsets from its drifted centre)."""
    h, w = shape
    out: np.ndarray = np.zeros((len(particles), h, w), dtype)
    for j, p in enumerate(particles):
        box = _box(p, shape, drift)
        if box is not None:
            (y0, y1, x0, x1), dy, dx = box
            out[j, y0:y1, x0:x1] = value(p, dy, dx)
    return out


def _thickness_stack(
    particles: list[_Particle], shape: tuple[int, int], drift: np.ndarray
) -> np.ndarray:
    """``(P, H, W)`` float32: each particle's thickness."""
    return _per_particle(
        particles, shape, drift, lambda p, dy, dx: p.thickness_map(dy, dx), np.float32
    )


def _footprints(
    particles: list[_Particle], shape: tuple[int, int], drift: np.ndarray
) -> np.ndarray:
    """``(P, H, W)`` bool: inside each outline (signed distance > 0)."""
    return _per_particle(
        particles, shape, drift, lambda p, dy, dx: p.signed_distance(dy, dx) > 0, bool
    )


def _wholly_visible(
    particles: list[_Particle], shape: tuple[int, int], drift: np.ndarray
) -> np.ndarray:
    """In frame 0 and in every frame, the outline has pixels in the frame, none on its edge."""
    ring = np.zeros(shape, bool)
    ring[0], ring[-1], ring[:, 0], ring[:, -1] = True, True, True, True
    visible = _footprints(particles, shape, drift[0]).any(axis=(1, 2))
    for d in drift:
        visible &= ~(_footprints(particles, shape, d) & ring).any(axis=(1, 2))
    return np.asarray(visible, dtype=bool)


def _film(
    film: tuple[np.ndarray, np.ndarray, np.ndarray], shape: tuple[int, int], drift: np.ndarray
) -> np.ndarray:
    """Faint support film in the sample frame: a sum of a few plane waves (OD)."""
    amps, waves, phases = film
    h, w = shape
    y = np.arange(h, dtype=np.float64) - drift[0]
    x = np.arange(w, dtype=np.float64) - drift[1]
    out = np.zeros(shape)
    for a, (ky, kx), ph in zip(amps, waves, phases, strict=True):
        # cos(p + q) = cos p cos q - sin p sin q, as outer products of rows and columns
        p, q = ky * y + ph, kx * x
        out += a * (1.0 + np.outer(np.cos(p), np.cos(q)) - np.outer(np.sin(p), np.sin(q)))
    return out


def _sample_od(
    particles: list[_Particle],
    mu: np.ndarray,
    film: tuple[np.ndarray, np.ndarray, np.ndarray],
    shape: tuple[int, int],
    drift: np.ndarray,
) -> np.ndarray:
    """Noise-free optical density of the sample at ``drift`` (``mu``: (P,) absorptions)."""
    od = _film(film, shape, drift)
    for p, m in zip(particles, mu, strict=True):
        box = _box(p, shape, drift)
        if box is not None:
            (y0, y1, x0, x1), dy, dx = box
            od[y0:y1, x0:x1] += m * p.thickness_map(dy, dx)
    return od


def make_holdout_xanes_scan(
    seed: int,
    *,
    shape: tuple[int, int] = (512, 512),
    n_frames: int = 36,
    counts: float | None = None,
) -> HoldoutXanesScan:
    """Draw one hold-out XANES scan (seeded, deterministic).

    Parameters
    ----------
    seed : int
        Random seed; the same seed gives the same scan.
    shape : tuple of int
        Frame shape (rows, cols), each >= 64.
    n_frames : int
        Number of energies (:func:`holdout_energies`).
    counts : float, optional
        Open-beam counts per pixel; drawn in 500-3000 when None.

    Returns
    -------
    HoldoutXanesScan
    """
    if min(shape) < 64:
        raise ValueError(f"shape must be at least 64 x 64, got {shape}")
    if counts is not None and counts <= 0:
        raise ValueError(f"counts must be > 0, got {counts}")
    rng = np.random.default_rng(seed)
    energies = holdout_energies(n_frames)
    particles = _place_particles(rng, shape)
    beam = _random_beam(rng, shape, n_frames)
    if counts is not None:
        beam.counts = float(counts)
    step = rng.uniform(0.15, 0.6)
    trend = rng.normal(0.0, 0.08, 2)
    drift = np.cumsum(rng.normal(0.0, step, (n_frames, 2)) + trend, axis=0)
    drift -= drift[0]
    n_waves = 3
    film = (
        rng.uniform(0.003, 0.012, n_waves),
        rng.normal(0.0, 0.04, (n_waves, 2)),
        rng.uniform(0, 2 * np.pi, n_waves),
    )
    blur = float(rng.uniform(0.6, 1.3))
    n_px = shape[0] * shape[1]
    dead = rng.choice(n_px, size=max(1, int(n_px * rng.uniform(2e-4, 1e-3))), replace=False)
    hot = rng.choice(n_px, size=max(1, int(n_px * rng.uniform(5e-5, 3e-4))), replace=False)
    hot_gain = rng.uniform(3.0, 20.0, hot.size)

    def expose(intensity: np.ndarray) -> np.ndarray:
        img = rng.poisson(np.clip(ndimage.gaussian_filter(intensity, blur), 0, None)).astype(
            np.float64
        )
        flat_view = img.reshape(-1)
        flat_view[dead] = 0.0
        flat_view[hot] = beam.counts * hot_gain
        return img

    envelope = beam.envelope(shape)
    spline = ndimage.spline_filter(beam.static_pattern(shape), order=3, mode="reflect")
    open_beam = beam.frame_pattern(envelope, spline, 0)
    flat = np.mean([expose(open_beam) for _ in range(10)], axis=0).astype(np.float32)
    mu = np.stack([p.absorption(energies) for p in particles], axis=1)  # (N, P)
    frames = np.empty((n_frames, *shape), np.uint16)
    for i in range(n_frames):
        od = _sample_od(particles, mu[i], film, shape, drift[i])
        img = expose(beam.frame_pattern(envelope, spline, i) * np.exp(-od))
        zingers = rng.choice(n_px, size=int(rng.integers(0, 6)), replace=False)
        img.reshape(-1)[zingers] = beam.counts * rng.uniform(5.0, 30.0, zingers.size)
        frames[i] = np.clip(img, 0, 65535).astype(np.uint16)
    t0 = _thickness_stack(particles, shape, np.zeros(2))
    feet = _footprints(particles, shape, np.zeros(2))
    labels = np.where(feet.any(axis=0), np.argmax(np.where(feet, t0, -1.0), axis=0) + 1, 0)
    return HoldoutXanesScan(
        frames=frames,
        energies=energies,
        flat=flat,
        drift=drift,
        labels=labels.astype(np.int32),
        wholly_visible=_wholly_visible(particles, shape, drift),
        edge_energy=np.array([p.spectrum["edge"] for p in particles]),
        radii=np.array([p.radius for p in particles]),
        counts=beam.counts,
        particles=particles,
        film=film,
    )
