"""Dense, real-looking TXM-XANES fields of view with ground truth (issue 12).

Written separately from :mod:`synthetic.txm` (different shapes, edge model, background and
noise code) so that a pipeline tuned on that generator is checked on scenes it was not tuned on:

- many secondary particles, radius 15 px to a quarter of the frame (log-uniform), lumpy outlines
  (a few low-order harmonics of the radius) built of primary grains, allowed to touch and to be
  cut by the frame border;
- each particle has its own Ni K-edge position (logistic step plus a Lorentzian white line) and a
  per-grain offset, so the contrast inside a particle changes across the edge;
- a zone-plate / condenser pattern (a chirped ring system centred outside the frame plus radial
  streaks) and an illumination gradient, of which the flat field removes only 60 %;
- low counts (Poisson, about 1500 per pixel), a few dead pixels, a small detector blur;
- a rigid random-walk drift plus a slow, small per-particle wobble; frames are rendered
  analytically at the shifted positions (no interpolation), so the shifts are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["DenseTxmScene", "dense_energies"]


def dense_energies(n: int = 40) -> np.ndarray:
    """Energies of a short XANES scan: a third below 8325 eV, half through the edge, the rest above.

    Parameters
    ----------
    n : int
        Number of energies (at least 10).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` increasing energies (eV).
    """
    if n < 10:
        raise ValueError(f"n must be at least 10, got {n}")
    n_pre = n // 3
    n_post = max(3, n // 6)
    n_edge = n - n_pre - n_post
    return np.concatenate(
        [
            np.linspace(8240.0, 8322.0, n_pre),
            np.linspace(8328.0, 8372.0, n_edge),
            np.linspace(8385.0, 8480.0, n_post),
        ]
    )


@dataclass(frozen=True)
class _Grain:
    offset: np.ndarray  # (2,) from the particle centre
    radius: float
    edge_shift: float  # eV


@dataclass(frozen=True)
class _Lump:
    centre: np.ndarray  # (2,) frame 0
    radius: float
    harmonics: np.ndarray  # (K, 3): order, amplitude, phase
    edge_ev: float
    density: float
    grains: tuple[_Grain, ...]
    wobble: np.ndarray  # (2, 2): amplitude (px) and phase per axis


def _mu(energy: float, edge_ev: float) -> float:
    """Normalised absorption: logistic step plus a Lorentzian white line 7 eV above the edge."""
    step = 1.0 / (1.0 + np.exp(-(energy - edge_ev) / 1.3))
    line = 0.45 / (1.0 + ((energy - edge_ev - 7.0) / 3.0) ** 2)
    return float(step + line * step)


@dataclass
class DenseTxmScene:
    """One dense field of view: particles, beam pattern and drift of a scan.

    Build with :meth:`random`; render frames with :meth:`frame`, the flat with :meth:`flat`.
    """

    shape: tuple[int, int]
    lumps: list[_Lump]
    drift: np.ndarray  # (n_scans * n_frames, 2), time t = scan * n_frames + index
    counts: float
    pattern: np.ndarray  # (H, W) incident-beam modulation not in the flat
    dead: tuple[np.ndarray, np.ndarray]
    seed: int
    n_frames: int = 0

    @classmethod
    def random(
        cls,
        seed: int,
        *,
        shape: tuple[int, int] = (512, 512),
        n_particles: int = 14,
        n_frames: int = 40,
        n_scans: int = 1,
        counts: float = 1500.0,
        drift_step_px: float = 0.5,
    ) -> DenseTxmScene:
        """A random dense scene.

        Parameters
        ----------
        seed : int
            Random seed (the whole scene follows from it).
        shape : tuple of int
            Frame shape.
        n_particles : int
            Number of particles placed (some end up cut by the border).
        n_frames : int
            Frames per scan.
        n_scans : int
            Scans of an operando series (the drift goes on from one scan to the next).
        counts : float
            Mean incident counts per pixel.
        drift_step_px : float
            Standard deviation of the rigid drift step per frame and axis.

        Returns
        -------
        DenseTxmScene
        """
        rng = np.random.default_rng(seed)
        h, w = shape
        big = min(h, w) / 4.0
        lumps: list[_Lump] = []
        tries = 0
        while len(lumps) < n_particles and tries < 5000:
            tries += 1
            radius = float(np.exp(rng.uniform(np.log(7.5), np.log(big))))
            centre = rng.uniform(
                [-0.3 * radius, -0.3 * radius], [h + 0.3 * radius, w + 0.3 * radius]
            )
            # touching allowed, overlapping by at most 15 % of the smaller radius
            if any(
                np.linalg.norm(centre - o.centre)
                < 0.85 * (radius + o.radius) - 0.15 * min(radius, o.radius)
                for o in lumps
            ):
                continue
            k = rng.integers(2, 5)
            harmonics = np.column_stack(
                [
                    np.arange(2, 2 + k),
                    rng.uniform(0.02, 0.08, k) / np.arange(1, k + 1),
                    rng.uniform(0, 2 * np.pi, k),
                ]
            )
            n_grains = int(rng.integers(4, 12))
            grains = tuple(
                _Grain(
                    offset=rng.normal(0, 0.45 * radius, 2),
                    radius=float(rng.uniform(0.15, 0.35) * radius),
                    edge_shift=float(rng.normal(0, 2.0)),
                )
                for _ in range(n_grains)
            )
            lumps.append(
                _Lump(
                    centre=centre,
                    radius=radius,
                    harmonics=harmonics,
                    edge_ev=float(rng.uniform(8336.0, 8348.0)),
                    density=float(rng.uniform(0.6, 1.4)),
                    grains=grains,
                    wobble=np.column_stack(
                        [rng.uniform(0.0, 0.4, 2), rng.uniform(0, 2 * np.pi, 2)]
                    ),
                )
            )
        steps = rng.normal(0.0, drift_step_px, (n_scans * n_frames, 2))
        steps[0] = 0.0
        drift = np.cumsum(steps, axis=0)
        pattern = _beam_pattern(rng, shape)
        n_dead = int(rng.integers(3, 12))
        dead = (rng.integers(0, h, n_dead), rng.integers(0, w, n_dead))
        return cls(shape, lumps, drift, counts, pattern, dead, seed, n_frames)

    @property
    def n_particles(self) -> int:
        return len(self.lumps)

    def _time(self, scan: int, index: int) -> int:
        t = scan * max(1, self.n_frames) + index
        if not 0 <= t < self.drift.shape[0]:
            raise ValueError(
                f"scan {scan}, index {index} is outside the scene's {self.drift.shape[0]} frames"
            )
        return t

    def truth_shift(self, index: int, scan: int = 0) -> np.ndarray:
        """``(P, 2)`` shift of every particle in frame ``index`` of ``scan`` vs scan 0, frame 0."""
        t = self._time(scan, index)
        return np.array([self._offset(lump, t) - self._offset(lump, 0) for lump in self.lumps])

    def truth_global_shift(self, index: int, scan: int = 0) -> np.ndarray:
        """``(2,)`` rigid drift of frame ``index`` of ``scan``."""
        return self.drift[self._time(scan, index)].copy()

    def _offset(self, lump: _Lump, index: int) -> np.ndarray:
        t = index / max(1, self.drift.shape[0] - 1)
        wobble = lump.wobble[:, 0] * np.sin(2 * np.pi * 0.7 * t + lump.wobble[:, 1])
        return self.drift[index] + wobble

    def _footprints(
        self, t: int, stage_offset_px=(0.0, 0.0)
    ) -> list[tuple[tuple[slice, slice], np.ndarray, np.ndarray]]:
        """Per particle at time ``t``: box, normalised radius rho (< 1 inside), (dy, dx)."""
        h, w = self.shape
        out = []
        for lump in self.lumps:
            centre = lump.centre + self._offset(lump, t) + np.asarray(stage_offset_px, float)
            reach = lump.radius * 1.3 + 2
            r0, r1 = (
                int(max(0, np.floor(centre[0] - reach))),
                int(min(h, np.ceil(centre[0] + reach))),
            )
            c0, c1 = (
                int(max(0, np.floor(centre[1] - reach))),
                int(min(w, np.ceil(centre[1] + reach))),
            )
            if r0 >= r1 or c0 >= c1:
                out.append(((slice(0, 0), slice(0, 0)), np.zeros((0, 0)), np.zeros((0, 0))))
                continue
            rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64)
            dy, dx = rr - centre[0], cc - centre[1]
            angle = np.arctan2(dy, dx)
            outline = np.ones_like(angle)
            for order, amplitude, phase in lump.harmonics:
                outline += amplitude * np.cos(order * angle + phase)
            rho = np.hypot(dy, dx) / (lump.radius * outline)
            out.append(((slice(r0, r1), slice(c0, c1)), rho, np.stack([dy, dx])))
        return out

    def truth_labels(self, index: int = 0) -> np.ndarray:
        """``(H, W)`` int32, particle k has label k + 1 (touching: the relatively nearer one)."""
        labels = np.zeros(self.shape, dtype=np.int32)
        best = np.full(self.shape, np.inf)
        for k, (box, rho, _) in enumerate(self._footprints(index)):
            if rho.size == 0:
                continue
            inside = rho < 1.0
            region = best[box]
            take = inside & (rho < region)
            region[take] = rho[take]
            labels[box][take] = k + 1
        return labels

    def wholly_visible(self, margin: int = 2) -> np.ndarray:
        """``(P,)`` bool: the outline lies ``margin`` px inside the frame at start and end."""
        h, w = self.shape
        out = np.ones(self.n_particles, dtype=bool)
        for index in (0, self.drift.shape[0] - 1):
            for k, lump in enumerate(self.lumps):
                centre = lump.centre + self._offset(lump, index)
                reach = lump.radius * (1.0 + float(np.sum(lump.harmonics[:, 1])))
                if (
                    centre[0] - reach < margin
                    or centre[1] - reach < margin
                    or centre[0] + reach > h - margin
                    or centre[1] + reach > w - margin
                ):
                    out[k] = False
        return out

    def optical_density(
        self, energy: float, index: int, *, scan: int = 0, stage_offset_px=(0.0, 0.0)
    ) -> np.ndarray:
        """Noise-free OD of the sample (no beam pattern) in frame ``index`` of ``scan``.

        ``stage_offset_px`` (dy, dx) is a commanded stage correction, added to the drift.
        """
        od = np.full(self.shape, 0.05)
        footprints = self._footprints(self._time(scan, index), stage_offset_px)
        for lump, (box, rho, delta) in zip(self.lumps, footprints, strict=True):
            if rho.size == 0:
                continue
            # a rounded thickness profile with a soft (sub-pixel) rim
            inside = np.clip(1.0 - rho * rho, 0.0, None)
            thickness = np.sqrt(inside) * np.clip((1.0 - rho) * lump.radius + 0.5, 0.0, 1.0)
            mu = np.full(rho.shape, _mu(energy, lump.edge_ev))
            for grain in lump.grains:
                d2 = (delta[0] - grain.offset[0]) ** 2 + (delta[1] - grain.offset[1]) ** 2
                weight = np.exp(-d2 / (2 * grain.radius**2))
                mu += weight * (_mu(energy, lump.edge_ev + grain.edge_shift) - mu)
            pre, jump = 0.10, 0.25
            od[box] += (
                lump.density * thickness * (pre + jump * mu) * min(1.0, lump.radius / 40.0 + 0.5)
            )
        return od

    def flat(self, energy: float, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """Flat field (sample out), float32 counts.

        It holds 60 % of the beam pattern (its illumination gradient and zone-plate rings
        changed between the flat and the scan): 40 % stays in the OD as structured background.
        It is the mean of 10 exposures, as beamlines average their reference frames (the SSRL
        set has 10 per energy); its remaining noise is the same in every frame of the scan.
        """
        if rng is None:
            rng = np.random.default_rng([self.seed, int(energy * 10), 7])
        expected = self.counts * (1.0 + 0.6 * (self.pattern - 1.0))
        return (rng.poisson(10.0 * expected) / 10.0).astype(np.float32)

    def dark(self, *, rng: np.random.Generator | None = None) -> np.ndarray:
        """Dark counts (float32): a photon-counting detector, zero."""
        del rng
        return np.zeros(self.shape, dtype=np.float32)

    def frame(
        self,
        energy: float,
        index: int,
        *,
        scan: int = 0,
        stage_offset_px=(0.0, 0.0),
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Counts of frame ``index`` of ``scan`` at ``energy`` (float32).

        The interface of :class:`synthetic.txm.TxmScene`: ``stage_offset_px`` is a
        commanded stage correction (dy, dx) in pixels, added to the drift.
        """
        if rng is None:
            rng = np.random.default_rng([self.seed, scan, index, 11])
        od = self.optical_density(energy, index, scan=scan, stage_offset_px=stage_offset_px)
        expected = self.counts * self.pattern * np.exp(-od)
        expected = ndimage.gaussian_filter(expected, 0.7)
        counts = rng.poisson(expected).astype(np.float32)
        counts[self.dead] = 0.0
        return counts

    def truth_edge_energy(self) -> np.ndarray:
        """``(P,)`` edge parameter (eV) of every particle."""
        return np.array([lump.edge_ev for lump in self.lumps])


def _beam_pattern(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Zone-plate rings, condenser streaks and an illumination gradient (mean 1)."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    centre = rng.uniform([-0.5 * h, -0.5 * w], [1.5 * h, 1.5 * w])
    radius = np.hypot(rr - centre[0], cc - centre[1])
    rings = 0.06 * np.sin(radius**2 / rng.uniform(800.0, 3000.0) + rng.uniform(0, 2 * np.pi))
    angle = np.arctan2(rr - centre[0], cc - centre[1])
    streaks = 0.04 * np.sin(rng.integers(20, 60) * angle) * np.exp(-radius / (2.0 * max(h, w)))
    gradient = 0.25 * ((rr / h - 0.5) * rng.normal() + (cc / w - 0.5) * rng.normal())
    pattern = 1.0 + ndimage.gaussian_filter(rings + streaks, 1.0) + gradient
    return np.clip(pattern / pattern.mean(), 0.3, None)
