"""Synthetic TXM frames with particle masks, for training and scoring particle detectors.

A sample is one optical-density frame of a still :class:`synthetic.txm.TxmScene` with
1-14 particles of a random typical size (5-48 px radius per 256 px of field; they may nearly
touch or be cut by the border), at any energy across the Ni K-edge (faint below-edge frames
included) and dose, and its ground-truth particle labels. On top of the
scene's own mild background, :func:`perturb_background` adds what real TXM frames show and the
scene does not: flatter or more peaked particle profiles, faint unlabelled blobs (out-of-focus
or thin particles behind the sample), slow gradients across the field as large as the particle
contrast, broad bumps, a band of different level along one edge of the field (real SSRL frames
have one), mid-scale haze, particle texture and extra noise. Amplitudes are relative to the
frame's particle contrast, so the same perturbation is as hard at every energy.

Training draws seeds from ``[0, HELD_OUT_SEED_START)``; scores are measured on seeds from
:data:`HELD_OUT_SEED_START` on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from synthetic.txm import TxmScene, _make_particle

__all__ = [
    "HELD_OUT_SEED_START",
    "DetectionSample",
    "detection_sample",
    "optical_density_from_counts",
    "perturb_background",
]

HELD_OUT_SEED_START = 1_000_000
"""Seeds at or above this are never used for training."""


@dataclass(frozen=True)
class DetectionSample:
    """A synthetic optical-density frame and its particles.

    Attributes
    ----------
    od : numpy.ndarray
        float32 (H, W) optical density, particles positive.
    labels : numpy.ndarray
        int32 (H, W) particle footprints, 0 background, particles 1..P.
    seed : int
        Seed the sample was drawn from.
    """

    od: np.ndarray
    labels: np.ndarray
    seed: int


def optical_density_from_counts(
    frame: np.ndarray, flat: np.ndarray, dark: np.ndarray
) -> np.ndarray:
    """``-ln((frame - dark) / (flat - dark))`` with counts floored at 1, float32."""
    sample = np.maximum(np.asarray(frame, np.float64) - dark, 1.0)
    beam = np.maximum(np.asarray(flat, np.float64) - dark, 1.0)
    return (-np.log(sample / beam)).astype(np.float32)


def _place(
    rng: np.random.Generator, shape: tuple[int, int], n_target: int, radius_px: float
) -> list[tuple[np.ndarray, float]]:
    """Up to ``n_target`` centres and radii; particles may nearly touch or be cut by the border."""
    h, w = shape
    placed: list[tuple[np.ndarray, float]] = []
    for _try in range(40 * n_target):
        if len(placed) == n_target:
            break
        radius = radius_px * float(rng.uniform(0.6, 1.4))
        margin = radius * (-0.3 if rng.random() < 0.25 else 1.2)
        if min(h, w) - 2 * margin < 2:
            continue
        centre = np.array([rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)])
        gap = float(rng.uniform(0.0, 0.25))
        if all(np.hypot(*(centre - c)) > (1.0 + gap) * 1.25 * (radius + r) for c, r in placed):
            placed.append((centre, radius))
    return placed


def _random_scene(seed: int, shape: tuple[int, int], rng: np.random.Generator) -> TxmScene:
    """A still scene (frame 0 of scan 0) with a random number and size of particles."""
    counts = float(10 ** rng.uniform(2.8, 4.3))
    base = TxmScene.random(
        seed,
        shape=shape,
        n_particles=1,
        n_frames=1,
        nonrigid_px=0.0,
        drift_px=0.0,
        jitter_px=0.0,
        incident_counts=counts,
    )
    radius_px = float(np.exp(rng.uniform(np.log(5.0), np.log(48.0)))) * min(shape) / 256
    placed = _place(rng, shape, int(rng.integers(1, 15)), radius_px)
    particles = [_make_particle(rng, centre, radius) for centre, radius in placed]
    return replace(base, particles=particles, particle_motion=np.zeros((1, len(particles), 2)))


def detection_sample(seed: int, *, size: int = 256, augment: bool = True) -> DetectionSample:
    """Draw one synthetic detection sample, deterministic from ``seed``.

    Parameters
    ----------
    seed : int
        Seed of every random choice (scene, particle sizes, energy, dose, perturbation).
    size : int
        Side of the square frame (px), at least 64. Particle radii are log-uniform between
        5 and 48 px per 256 px of frame (times 0.6-1.4 per particle), so the particles of a
        1024 px frame binned by 4 (about 15-40 px radius for the real SSRL frames) are covered.
    augment : bool
        Apply :func:`perturb_background`.

    Returns
    -------
    DetectionSample
    """
    if size < 64:
        raise ValueError(f"size must be at least 64, got {size}")
    rng = np.random.default_rng([seed, 7301])
    scene = _random_scene(seed, (size, size), rng)
    energy = float(rng.uniform(8250.0, 8500.0))
    od = optical_density_from_counts(
        scene.frame(energy, scan=0, index=0), scene.flat(energy), scene.dark()
    )
    labels = scene.truth_labels()
    if augment:
        od = perturb_background(od, labels > 0, rng)
    return DetectionSample(od=od.astype(np.float32), labels=labels.astype(np.int32), seed=seed)


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def perturb_background(
    od: np.ndarray, particles: np.ndarray, rng: np.random.Generator, *, strength: float = 1.0
) -> np.ndarray:
    """Add real-frame background structure to a synthetic optical-density frame.

    Parameters
    ----------
    od : numpy.ndarray
        (H, W) optical density.
    particles : numpy.ndarray
        bool (H, W) particle footprints (sets the contrast scale and the texture).
    rng : numpy.random.Generator
        Source of every random choice.
    strength : float
        Multiplies every amplitude (0 = no change).

    Returns
    -------
    numpy.ndarray
        float32 (H, W) perturbed optical density.
    """
    od = np.asarray(od, dtype=np.float64)
    h, w = od.shape
    size = float(max(h, w))
    inside = np.asarray(particles, dtype=bool)
    base = float(np.median(od[~inside])) if np.any(~inside) else float(np.median(od))
    top = float(np.percentile(od[inside], 90)) if np.any(inside) else base + 0.3
    contrast = max(top - base, 0.05) * strength
    rows = np.arange(h, dtype=np.float64)[:, None] / size
    cols = np.arange(w, dtype=np.float64)[None, :] / size
    out = od.copy()
    # particle profile: flatter or more peaked than the scene's dome
    if rng.random() < 0.7:
        excess = np.maximum(od - base, 0.0) / contrast
        reshaped = contrast * excess ** rng.uniform(0.35, 1.4)
        weight = ndimage.gaussian_filter(inside.astype(np.float64), 1.5)
        out += weight * (reshaped - contrast * excess)
    # faint unlabelled blobs: out-of-focus or thin particles of the background
    n_blobs = int(rng.integers(0, 9))
    if n_blobs:
        blobs = np.zeros((h, w))
        for _ in range(n_blobs):
            cy, cx = rng.uniform(0.0, 1.0, 2)
            radius = rng.uniform(0.02, 0.15)
            rho2 = ((rows - cy) ** 2 + (cols - cx) ** 2) / radius**2
            disc = np.sqrt(np.clip(1.0 - rho2, 0.0, None)) ** rng.uniform(0.3, 1.5)
            blobs += rng.uniform(0.08, 0.4) * contrast * disc
        out += ndimage.gaussian_filter(blobs, rng.uniform(1.0, 6.0))
    # particle texture (grains, cracks) proportional to the particle's own density
    if rng.random() < 0.8:
        texture = _unit_noise(rng, (h, w), float(rng.uniform(0.7, 2.5)))
        out += rng.uniform(0.0, 0.25) * strength * np.maximum(od - base, 0.0) * texture
    # slow linear gradient across the field, up to about the particle contrast
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (rows - 0.5) + np.sin(angle) * (cols - 0.5)
    out += rng.uniform(-1.2, 1.2) * contrast * ramp
    # broad bumps and dips
    for _ in range(int(rng.integers(0, 5))):
        cy, cx = rng.uniform(-0.2, 1.2, 2)
        sigma = rng.uniform(0.15, 0.6)
        bump = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * sigma**2))
        out += rng.uniform(-0.6, 0.6) * contrast * bump
    # bands of different level along edges of the field, wide or a few px, soft or sharp
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        depth = float(np.exp(rng.uniform(np.log(0.005), np.log(0.3)))) * size
        soft = float(np.exp(rng.uniform(np.log(0.3), np.log(12.0))))
        side = int(rng.integers(4))
        coord = [np.arange(h)[:, None], np.arange(h)[::-1, None], np.arange(w)[None, :]]
        coord.append(np.arange(w)[None, ::-1])
        band = 0.5 * (1.0 - np.tanh((coord[side] - depth) / soft))
        out += rng.uniform(-1.5, 0.8) * contrast * band
    # mid-scale haze
    if rng.random() < 0.7:
        haze = _unit_noise(rng, (h, w), float(rng.uniform(4.0, 24.0)))
        out += rng.uniform(0.0, 0.12) * contrast * haze
    # extra white noise
    if rng.random() < 0.5:
        out += rng.uniform(0.0, 0.12) * contrast * rng.standard_normal((h, w))
    return out.astype(np.float32)
