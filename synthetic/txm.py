"""Synthetic TXM-XANES scenes with ground truth, following the seed's synthetic protocol.

A scene is a field of view with a few irregular cathode particles. Every pixel of a particle has
its own Ni K-edge energy (8333-8350 eV) and a white line; the sample drifts rigidly with the
stage (slow drift plus per-frame jitter) and every particle also moves on its own smooth random
path (non-rigid deformation). Frames are rendered analytically at sub-pixel positions (no
interpolation), seen through a non-uniform beam whose intensity fluctuates, over a slowly
varying absorbing background, then blurred and given Poisson and read noise.

The time line of a scene is ``t = scan * n_frames + index``; all ground-truth displacements are
relative to scan 0, frame 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["TxmScene", "default_energies", "normalised_edge_model", "EDGE_MODEL"]

#: Shape constants of the per-pixel normalised Ni K-edge model (eV).
EDGE_MODEL = {
    "step_width": 1.6,  # arctan step half width
    "whiteline_offset": 8.0,  # white-line peak above the edge parameter
    "whiteline_sigma": 2.6,
    "whiteline_height": 0.55,
}

_PRE_EDGE_MU = 0.32  # below-edge absorption relative to a unit edge jump
_EDGE_JUMP = 0.62
_DARK_LEVEL = 100.0
_READ_NOISE = 4.0


def default_energies(n: int = 143) -> np.ndarray:
    """Energies of a Ni K-edge XANES scan, dense around the edge.

    Parameters
    ----------
    n : int
        Number of energies (at least 8).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64, increasing, from 8250 eV to 8500 eV: about 15 % of the points below
        8320 eV, 60 % between 8320 and 8380 eV and the rest up to 8500 eV.
    """
    if n < 8:
        raise ValueError(f"n must be at least 8, got {n}")
    n_pre = max(2, round(0.15 * n))
    n_edge = max(2, round(0.6 * n))
    n_post = n - n_pre - n_edge
    pre = np.linspace(8250.0, 8320.0, n_pre, endpoint=False)
    edge = np.linspace(8320.0, 8380.0, n_edge, endpoint=False)
    post = np.linspace(8380.0, 8500.0, n_post)
    return np.concatenate([pre, edge, post])


def normalised_edge_model(energy_ev: np.ndarray | float, edge_ev: np.ndarray) -> np.ndarray:
    """Normalised absorption (0 below the edge, 1 far above) of the synthetic Ni K-edge.

    Parameters
    ----------
    energy_ev : float or numpy.ndarray
        Energy or energies in eV (broadcast against ``edge_ev``).
    edge_ev : numpy.ndarray
        Edge parameter (eV) per pixel.

    Returns
    -------
    numpy.ndarray
        Normalised absorption, float64.
    """
    d = np.asarray(energy_ev, dtype=np.float64) - edge_ev
    step = 0.5 + np.arctan(d / EDGE_MODEL["step_width"]) / np.pi
    wl_d = d - EDGE_MODEL["whiteline_offset"]
    whiteline = EDGE_MODEL["whiteline_height"] * np.exp(
        -0.5 * (wl_d / EDGE_MODEL["whiteline_sigma"]) ** 2
    )
    return step + whiteline


def _model_offsets() -> tuple[float, float]:
    """Offsets (50 %-crossing and white-line peak) of the normalised model from its parameter."""
    e = np.arange(-20.0, 30.0, 0.001)
    norm = normalised_edge_model(e, np.zeros(1))
    peak = float(e[np.argmax(norm)])
    below = np.nonzero((norm < 0.5) & (e < peak))[0][-1]
    e0, e1, n0, n1 = e[below], e[below + 1], norm[below], norm[below + 1]
    crossing = float(e0 + (0.5 - n0) * (e1 - e0) / (n1 - n0))
    return crossing, peak


_CROSSING_OFFSET, _WHITELINE_OFFSET = _model_offsets()


@dataclass(frozen=True)
class _Particle:
    centre: np.ndarray  # (2,) reference (row, col)
    radius: float
    harmonics: np.ndarray  # (K, 3): order, amplitude, phase of the radial outline
    texture: np.ndarray  # (M, 4): ky, kx, phase, amplitude of internal thickness texture
    edge_base: float
    edge_gradient: np.ndarray  # (2,) eV per radius
    edge_core: float  # eV added at the centre, radial profile
    thickness: float


def _smooth_paths(
    rng: np.random.Generator, n_time: int, n_frames: int, amplitude: np.ndarray, n_modes: int = 4
) -> np.ndarray:
    """Smooth random 2-D paths, one per amplitude, zero at t=0: shape (n_time, len(amp), 2)."""
    t = np.arange(n_time, dtype=np.float64)[:, None, None, None]
    n_paths = amplitude.shape[0]
    freq = rng.uniform(0.15, 1.5, size=(1, n_paths, 2, n_modes)) / n_frames
    phase = rng.uniform(0, 2 * np.pi, size=(1, n_paths, 2, n_modes))
    weight = rng.uniform(0.3, 1.0, size=(1, n_paths, 2, n_modes))
    weight /= weight.sum(axis=-1, keepdims=True)
    path = (weight * np.sin(2 * np.pi * freq * t + phase)).sum(axis=-1)
    path -= path[:1]
    return path * amplitude[None, :, None]


@dataclass
class TxmScene:
    """A synthetic TXM field of view with drifting, deforming cathode particles.

    Build one with :meth:`TxmScene.random`. All positions are in pixels, (row, col) order.
    """

    seed: int
    shape: tuple[int, int]
    n_scans: int
    n_frames: int
    particles: list[_Particle]
    particle_motion: np.ndarray  # (T, P, 2) non-rigid part
    global_motion: np.ndarray  # (T, 2) rigid part
    beam_intensity: np.ndarray  # (T,) relative fluctuation
    background_modes: np.ndarray  # (B, 4): ky, kx, phase, amplitude
    beam_profile: np.ndarray  # (H, W) relative illumination
    incident_counts: float

    @classmethod
    def random(
        cls,
        seed: int,
        shape: tuple[int, int] = (256, 256),
        n_particles: int = 9,
        n_scans: int = 1,
        n_frames: int = 143,
        *,
        nonrigid_px: float = 3.0,
        drift_px: float = 4.0,
        jitter_px: float = 0.5,
        incident_counts: float = 1500.0,
    ) -> TxmScene:
        """Draw a random scene, deterministic from ``seed``.

        Parameters
        ----------
        seed : int
            Seed of every random choice.
        shape : tuple of int
            Field of view (rows, cols), at least 64 x 64.
        n_particles : int
            Number of particles (at least 1).
        n_scans, n_frames : int
            Scans in the operando series and frames (energies) per scan.
        nonrigid_px : float
            Typical amplitude (px) of each particle's own smooth motion.
        drift_px : float
            Amplitude (px) of the slow rigid stage drift.
        jitter_px : float
            Standard deviation (px) of the per-frame rigid stage jitter.
        incident_counts : float
            Counts per pixel at the centre of the beam.

        Returns
        -------
        TxmScene
        """
        if len(shape) != 2 or min(shape) < 64:
            raise ValueError(f"shape must be 2-D and at least 64 x 64, got {shape}")
        if n_particles < 1:
            raise ValueError(f"n_particles must be >= 1, got {n_particles}")
        if n_scans < 1 or n_frames < 1:
            raise ValueError(f"n_scans and n_frames must be >= 1, got {n_scans}, {n_frames}")
        if min(nonrigid_px, drift_px, jitter_px) < 0 or incident_counts <= 0:
            raise ValueError("motion amplitudes must be >= 0 and incident_counts > 0")
        rng = np.random.default_rng(seed)
        h, w = shape
        n_time = n_scans * n_frames
        amp_nr = rng.uniform(0.4, 1.3, n_particles) * nonrigid_px
        motion_reach = float(amp_nr.max() + drift_px + 3 * jitter_px)
        particles = _place_particles(rng, shape, n_particles, motion_reach)
        particle_motion = _smooth_paths(rng, n_time, n_frames, amp_nr)
        global_motion = _smooth_paths(rng, n_time, n_frames, np.array([drift_px]))[:, 0]
        jitter = rng.normal(0.0, jitter_px, size=(n_time, 2))
        jitter[0] = 0.0
        global_motion = global_motion + jitter
        beam_intensity = 1.0 + 0.03 * np.sin(
            2 * np.pi * np.arange(n_time) / rng.uniform(40, 90) + rng.uniform(0, 6)
        )
        beam_intensity *= 1.0 + rng.normal(0.0, 0.01, n_time)
        n_bg = 6
        background_modes = np.column_stack(
            [
                rng.uniform(-1.5, 1.5, n_bg) * 2 * np.pi / h,
                rng.uniform(-1.5, 1.5, n_bg) * 2 * np.pi / w,
                rng.uniform(0, 2 * np.pi, n_bg),
                rng.uniform(0.004, 0.015, n_bg),
            ]
        )
        beam_profile = _beam_profile(rng, shape)
        return cls(
            seed=seed,
            shape=(h, w),
            n_scans=n_scans,
            n_frames=n_frames,
            particles=particles,
            particle_motion=particle_motion,
            global_motion=global_motion,
            beam_intensity=beam_intensity,
            background_modes=background_modes,
            beam_profile=beam_profile,
            incident_counts=float(incident_counts),
        )

    @property
    def n_particles(self) -> int:
        """Number of particles."""
        return len(self.particles)

    def _time(self, scan: int, index: int) -> int:
        if not 0 <= scan < self.n_scans:
            raise ValueError(f"scan must be in [0, {self.n_scans}), got {scan}")
        if not 0 <= index < self.n_frames:
            raise ValueError(f"index must be in [0, {self.n_frames}), got {index}")
        return scan * self.n_frames + index

    # ----------------------------------------------------------------- ground truth
    def truth_global_shift(self, scan: int, index: int) -> np.ndarray:
        """Rigid stage displacement (2,) (row, col) relative to scan 0 frame 0."""
        return self.global_motion[self._time(scan, index)].copy()

    def truth_shift(self, scan: int, index: int) -> np.ndarray:
        """True displacement (P, 2) of every particle relative to scan 0 frame 0."""
        t = self._time(scan, index)
        return self.particle_motion[t] + self.global_motion[t][None, :]

    def truth_centres(self, scan: int, index: int) -> np.ndarray:
        """True centres of mass (P, 2) of the particle footprints at a frame."""
        return self._reference_centres() + self.truth_shift(scan, index)

    def _reference_centres(self) -> np.ndarray:
        labels = self.truth_labels()
        idx = np.arange(1, self.n_particles + 1)
        return np.asarray(ndimage.center_of_mass(labels > 0, labels, idx), dtype=np.float64)

    def truth_labels(self) -> np.ndarray:
        """Particle footprints (H, W) int32 in the reference geometry, particle k -> k + 1."""
        labels = np.zeros(self.shape, dtype=np.int32)
        for k, particle in enumerate(self.particles):
            sl, rr, cc = _patch(particle, self.shape, np.zeros(2))
            inside, _ = _outline(particle, rr, cc)
            labels[sl][inside] = k + 1
        return labels

    def truth_edge_energy(self, scan: int) -> np.ndarray:
        """Edge energy (50 % of the edge jump) map (H, W) float32 in eV, NaN outside particles."""
        return self._truth_map(scan, _CROSSING_OFFSET)

    def truth_whiteline_energy(self, scan: int) -> np.ndarray:
        """White-line peak energy map (H, W) float32 in eV, NaN outside particles."""
        return self._truth_map(scan, _WHITELINE_OFFSET)

    def _truth_map(self, scan: int, offset: float) -> np.ndarray:
        self._time(scan, 0)
        out = np.full(self.shape, np.nan, dtype=np.float32)
        for particle in self.particles:
            sl, rr, cc = _patch(particle, self.shape, np.zeros(2))
            inside, _ = _outline(particle, rr, cc)
            edge = _edge_parameter(particle, rr, cc, scan, self.n_scans)
            out[sl][inside] = (edge + offset)[inside]
        return out

    # ----------------------------------------------------------------- rendering
    def optical_density(
        self, energy_ev: float, *, scan: int, index: int, stage_offset_px=(0.0, 0.0)
    ) -> np.ndarray:
        """Noise-free optical density (H, W) float64 of the sample at a frame, before blur."""
        t = self._time(scan, index)
        offset = np.asarray(stage_offset_px, dtype=np.float64).reshape(2)
        glob = self.global_motion[t] + offset
        od = self._background(energy_ev, glob)
        for k, particle in enumerate(self.particles):
            shift = self.particle_motion[t, k] + glob
            sl, rr, cc = _patch(particle, self.shape, shift)
            if rr.size == 0:
                continue
            inside, rho = _outline(particle, rr, cc)
            thick = _thickness(particle, rr, cc, rho) * inside
            edge = _edge_parameter(particle, rr, cc, scan, self.n_scans)
            mu = _PRE_EDGE_MU * (1.0 - 2e-4 * (energy_ev - 8250.0)) + _EDGE_JUMP * (
                normalised_edge_model(energy_ev, edge)
            )
            od[sl] += thick * mu
        return od

    def _background(self, energy_ev: float, shift: np.ndarray) -> np.ndarray:
        h, w = self.shape
        rows = np.arange(h, dtype=np.float64)[:, None] - shift[0]
        cols = np.arange(w, dtype=np.float64)[None, :] - shift[1]
        od = np.full(self.shape, 0.15 * (1.0 - 1e-4 * (energy_ev - 8250.0)))
        for ky, kx, phase, amp in self.background_modes:
            od = od + amp * np.cos(ky * rows + kx * cols + phase)
        return od

    def _flux(self, energy_ev: float) -> float:
        return self.incident_counts * (1.0 - 0.25 * (energy_ev - 8250.0) / 250.0)

    def frame(
        self,
        energy_ev: float,
        *,
        scan: int,
        index: int,
        stage_offset_px=(0.0, 0.0),
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Transmitted counts (H, W) float32 with the sample in the beam.

        Parameters
        ----------
        energy_ev : float
            X-ray energy (eV).
        scan, index : int
            Scan number and frame index in the scan (selects the sample's motion).
        stage_offset_px : tuple of float
            Commanded stage correction (dy, dx) in pixels, added to the drift.
        rng : numpy.random.Generator, optional
            Noise source; by default one seeded from (seed, scan, index).

        Returns
        -------
        numpy.ndarray
            float32 counts including the dark level.
        """
        t = self._time(scan, index)
        if rng is None:
            rng = np.random.default_rng([self.seed, scan, index, 1])
        od = self.optical_density(
            energy_ev, scan=scan, index=index, stage_offset_px=stage_offset_px
        )
        od = ndimage.gaussian_filter(od, 0.7)
        expected = self._flux(energy_ev) * self.beam_intensity[t] * self.beam_profile * np.exp(-od)
        return self._detect(expected, rng)

    def flat(self, energy_ev: float, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """Transmitted counts (H, W) float32 with the sample out of the beam."""
        if rng is None:
            rng = np.random.default_rng([self.seed, int(round(energy_ev * 10)), 2])
        return self._detect(self._flux(energy_ev) * self.beam_profile, rng)

    def dark(self, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """Dark counts (H, W) float32, beam off."""
        if rng is None:
            rng = np.random.default_rng([self.seed, 3])
        return self._detect(np.zeros(self.shape), rng)

    def _detect(self, expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        counts = rng.poisson(expected).astype(np.float64)
        counts += _DARK_LEVEL + rng.normal(0.0, _READ_NOISE, self.shape)
        return counts.astype(np.float32)


def _beam_profile(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    rows = (np.arange(h)[:, None] - h * rng.uniform(0.4, 0.6)) / h
    cols = (np.arange(w)[None, :] - w * rng.uniform(0.4, 0.6)) / w
    profile = np.exp(-(rows**2 + cols**2) / (2 * 0.45**2))
    structure = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
    structure /= structure.std() + 1e-12
    return profile * (1.0 + 0.04 * structure)


def _place_particles(
    rng: np.random.Generator, shape: tuple[int, int], n: int, reach: float
) -> list[_Particle]:
    h, w = shape
    size = min(h, w)
    scale = 1.0
    for _attempt in range(60):
        radii = rng.uniform(0.055, 0.085, n) * size * scale
        radii = np.sort(radii)[::-1]
        centres: list[np.ndarray] = []
        for r in radii:
            margin = 1.3 * r + reach + 4
            for _try in range(300):
                c = np.array([rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)])
                gaps = [
                    np.hypot(*(c - o)) - 1.3 * (r + ro)
                    for o, ro in zip(centres, radii, strict=False)
                ]
                if all(g > 2 * reach + 6 for g in gaps):
                    centres.append(c)
                    break
            else:
                break
        if len(centres) == n:
            return [_make_particle(rng, c, r) for c, r in zip(centres, radii, strict=True)]
        scale *= 0.95
    raise ValueError(f"cannot place {n} particles in a {shape} field of view; use fewer")


def _make_particle(rng: np.random.Generator, centre: np.ndarray, radius: float) -> _Particle:
    orders = np.arange(2, 6)
    harmonics = np.column_stack(
        [orders, rng.uniform(0.0, 0.08, orders.size) / np.sqrt(orders - 1), rng.uniform(0, 6.3, 4)]
    )
    n_tex = 5
    texture = np.column_stack(
        [
            rng.uniform(-1, 1, n_tex) * 2.5 * np.pi / radius,
            rng.uniform(-1, 1, n_tex) * 2.5 * np.pi / radius,
            rng.uniform(0, 2 * np.pi, n_tex),
            rng.uniform(0.03, 0.08, n_tex),
        ]
    )
    return _Particle(
        centre=centre,
        radius=float(radius),
        harmonics=harmonics,
        texture=texture,
        edge_base=float(rng.uniform(8337.0, 8345.0)),
        edge_gradient=rng.uniform(-1.0, 1.0, 2) * 2.0,
        edge_core=float(rng.uniform(-3.0, 3.0)),
        thickness=float(rng.uniform(0.8, 1.2)),
    )


def _patch(particle: _Particle, shape: tuple[int, int], shift: np.ndarray):
    """Slice of the frame covering a particle and its local coordinates (rows, cols)."""
    h, w = shape
    c = particle.centre + shift
    half = 1.3 * particle.radius + 3
    r0, r1 = max(0, int(np.floor(c[0] - half))), min(h, int(np.ceil(c[0] + half)) + 1)
    c0, c1 = max(0, int(np.floor(c[1] - half))), min(w, int(np.ceil(c[1] + half)) + 1)
    r0, c0 = min(r0, r1), min(c0, c1)
    rr = np.arange(r0, r1, dtype=np.float64)[:, None] - c[0]
    cc = np.arange(c0, c1, dtype=np.float64)[None, :] - c[1]
    rr, cc = np.broadcast_arrays(rr, cc)
    return (slice(r0, r1), slice(c0, c1)), rr, cc


def _outline(particle: _Particle, rr: np.ndarray, cc: np.ndarray):
    theta = np.arctan2(rr, cc)
    outline = np.ones_like(theta)
    for order, amp, phase in particle.harmonics:
        outline += amp * np.cos(order * theta + phase)
    rho = np.hypot(rr, cc) / (particle.radius * outline)
    return rho < 1.0, rho


def _thickness(particle: _Particle, rr: np.ndarray, cc: np.ndarray, rho: np.ndarray) -> np.ndarray:
    dome = np.sqrt(np.clip(1.0 - rho**2, 0.0, None))
    texture = np.ones_like(rr)
    for ky, kx, phase, amp in particle.texture:
        texture += amp * np.cos(ky * rr + kx * cc + phase)
    return particle.thickness * dome * texture


def _edge_parameter(
    particle: _Particle, rr: np.ndarray, cc: np.ndarray, scan: int, n_scans: int
) -> np.ndarray:
    """Edge parameter (eV) in particle-local coordinates; the edge rises with the scan (charge)."""
    r = particle.radius
    radial = np.clip(1.0 - (rr**2 + cc**2) / r**2, 0.0, 1.0)
    charge = 3.0 * scan / max(1, n_scans - 1) * (1.0 - radial)
    edge = (
        particle.edge_base
        + particle.edge_gradient[0] * rr / r
        + particle.edge_gradient[1] * cc / r
        + particle.edge_core * radial
        + charge
    )
    return np.clip(edge - _CROSSING_OFFSET, 8333.0 - _CROSSING_OFFSET, 8350.0 - _CROSSING_OFFSET)
