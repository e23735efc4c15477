"""Simulated parallel-beam scans of synthetic volumes (for the simulated station and tests)."""

from __future__ import annotations

import numpy as np

from models.synthetic.cathode import DetectorFrames, DetectorParams, simulate_detector
from pipelines.tomo.project import forward_project


def simulate_scan(
    attenuation: np.ndarray,
    angles_deg: np.ndarray,
    *,
    seed: int,
    detector: DetectorParams | None = None,
) -> DetectorFrames:
    """Raw projections, flats and darks of a volume rotating about its z axis.

    Parameters
    ----------
    attenuation : numpy.ndarray
        float (Z, Y, X) linear attenuation per voxel in 1/pixel (Y == X), e.g.
        ``make_cathode_volume(...).attenuation``.
    angles_deg : numpy.ndarray
        (N,) projection angles in degrees.
    seed : int
        Seed of the detector noise.
    detector : DetectorParams, optional
        Camera and beam settings (phase fringes, blur, noise, ring-causing column gains).

    Returns
    -------
    DetectorFrames
        uint16 projections (N, Z, X), flats and darks, ready for
        :func:`pipelines.tomo.fbp.reconstruct`.
    """
    line_integrals = forward_project(attenuation, angles_deg)
    return simulate_detector(line_integrals, seed=seed, params=detector)
