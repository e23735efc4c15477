"""Reconstructed synthetic cathode volumes with ground truth, for the particle models.

A :class:`~synthetic.cathode.CathodeVolume` is projected, turned into noisy
phase-contrast-like frames and reconstructed by filtered back projection
(:func:`synthetic.scan.reconstruct_synthetic`), then normalised exactly as the
inference pipelines normalise a reconstructed volume
(:func:`models.crack_unet.reference_levels` and :func:`models.crack_unet.normalize_slices`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.crack_unet import normalize_slices, reference_levels
from synthetic.cathode import (
    CathodeParams,
    CathodeVolume,
    DetectorParams,
)
from synthetic.damage import DAMAGE, damaged_cathode_volume
from synthetic.scan import quantize_8bit, reconstruct_synthetic


@dataclass
class ReconstructedCathode:
    """A synthetic cathode, its reconstruction and the normalised reconstruction.

    Attributes
    ----------
    truth : CathodeVolume
        Ground-truth phases and particle instances.
    recon : numpy.ndarray
        float32 (Z, Y, X) filtered back projection of the simulated scan.
    normalized : numpy.ndarray
        float32 (Z, Y, X) ``recon`` mapped with its 1st and 99.5th percentiles to 0 and 1.
    """

    truth: CathodeVolume
    recon: np.ndarray
    normalized: np.ndarray


def random_cathode_params(
    rng: np.random.Generator, diameter_px: tuple[float, float] = (18.0, 34.0)
) -> CathodeParams:
    """The training family's microstructure drawn from ``rng``: mean particle diameter in
    ``diameter_px``, shape irregularity, binder share and crack widths."""
    return CathodeParams(
        particle_diameter_px=float(rng.uniform(*diameter_px)),
        shape_irregularity=float(rng.uniform(0.08, 0.22)),
        binder_fraction=float(rng.uniform(0.35, 0.7)),
        crack_width_px=(float(rng.uniform(1.0, 1.6)), float(rng.uniform(2.2, 3.4))),
    )


def make_reconstructed_cathode(
    shape: tuple[int, int, int],
    *,
    seed: int,
    crack_density: float = 1.0,
    randomize: bool = True,
    diameter_px: tuple[float, float] = (18.0, 34.0),
    damage_share: float = 0.0,
    damage_width_px: tuple[float, float] = (1.0, 2.6),
    damage_kinds: tuple[str, ...] = DAMAGE,
    quantize: bool = False,
) -> ReconstructedCathode:
    """Generate, scan and reconstruct a synthetic cathode volume.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` with ``Y == X``.
    seed : int
        Seed of the microstructure, the imaging conditions and the noise.
    crack_density : float, optional
        Crack frequency scale (0 = crack-free).
    randomize : bool, optional
        Draw particle size, shape irregularity, binder share and the imaging conditions
        (photons, fringes, blur, rings, number of angles) at random from ``seed``; False
        uses the defaults of :class:`CathodeParams` and :class:`DetectorParams`.
    diameter_px : tuple of float, optional
        Range of the mean particle diameter drawn when ``randomize``.
    damage_share : float, optional
        Share of the particles given a through-crack, a hollow core with radial cracks or
        fragmentation (:func:`synthetic.damage.add_damage`); 0 = none.
    damage_width_px : tuple of float, optional
        Range of the widths of those cracks.
    damage_kinds : tuple of str, optional
        Which of those kinds of damage are drawn.
    quantize : bool, optional
        Render the reconstruction as an 8-bit display image
        (:func:`synthetic.scan.quantize_8bit`).

    Returns
    -------
    ReconstructedCathode
        Ground truth, reconstruction and normalised reconstruction.
    """
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"shape must be (Z, N, N), got {shape!r}")
    rng = np.random.default_rng(seed)
    n = int(shape[2])
    if randomize:
        params = random_cathode_params(rng, diameter_px)
        detector = DetectorParams(
            photons=float(10 ** rng.uniform(3.8, 4.7)),
            phase_fringe=float(rng.uniform(0.0, 1.2)),
            blur_sigma_px=float(rng.uniform(0.4, 1.0)),
            ring_fraction=float(rng.uniform(0.0, 0.08)),
        )
        n_angles = int(rng.choice([n, int(n * 1.4), int(n * 1.6)]))
    else:
        params, detector, n_angles = CathodeParams(), DetectorParams(), int(n * 1.4)
    truth = damaged_cathode_volume(
        tuple(int(s) for s in shape),  # type: ignore[arg-type]
        rng,
        seed=seed,
        crack_density=crack_density,
        depth_gradient=bool(rng.random() < 0.5) if randomize else True,
        params=params,
        damage_share=damage_share,
        width_px=damage_width_px,
        kinds=damage_kinds,
    )
    recon = reconstruct_synthetic(
        truth.attenuation, seed=seed + 1, n_angles=n_angles, detector=detector
    )
    if quantize:
        recon = quantize_8bit(recon, rng)
    low, high = reference_levels(recon)
    return ReconstructedCathode(
        truth=truth, recon=recon, normalized=normalize_slices(recon, low, high)
    )
