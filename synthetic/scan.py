"""Simulated parallel-beam scans of synthetic volumes: the detector frames of the simulated
station and tests, and the reconstructions the networks train on."""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from skimage.transform import iradon, radon

from pipelines.tomo.project import forward_project
from synthetic.cathode import DetectorFrames, DetectorParams, simulate_detector


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


def reconstruct_synthetic(
    attenuation: np.ndarray,
    *,
    seed: int,
    n_angles: int,
    detector: DetectorParams,
    filter_name: str = "ramp",
    angle_range: float = 180.0,
    method: Literal["iradon", "fbp"] = "iradon",
) -> np.ndarray:
    """Simulate a scan of a volume and reconstruct it slice by slice.

    ``angle_range`` < 180 degrees leaves a missing wedge (the projections span
    ``[0, angle_range)``); few ``n_angles`` give sparse-angle streaks. ``method`` "iradon"
    reconstructs with ``skimage.transform.iradon``, "fbp" with the project's own
    :func:`pipelines.tomo.fbp.reconstruct` (what inference reconstructs with).
    """
    if method not in ("iradon", "fbp"):
        raise ValueError(f"method must be 'iradon' or 'fbp', got {method!r}")
    angles = np.linspace(0.0, angle_range, n_angles, endpoint=False)
    with warnings.catch_warnings():
        # the sample fills the square field of view, as in forward_project
        warnings.filterwarnings("ignore", message="Radon transform: image must be zero")
        lint = np.stack([radon(s.astype(np.float64), angles).T for s in attenuation], axis=1)
    frames = simulate_detector(lint.astype(np.float32), seed=seed, params=detector)
    dark = frames.dark.astype(np.float32).mean(axis=0)
    beam = frames.flat.astype(np.float32).mean(axis=0) - dark
    transmission = (frames.projections.astype(np.float32) - dark) / np.maximum(beam, 1e-6)
    sino = -np.log(np.maximum(transmission, 1e-3))
    if method == "fbp":
        from pipelines.tomo.fbp import ReconParams, reconstruct

        params = ReconParams(input_kind="line_integral", center="detector", filter_name=filter_name)
        return reconstruct(sino.astype(np.float32), angles, params=params).astype(np.float32)
    recon = np.stack(
        [iradon(sino[:, z, :].T, angles, filter_name=filter_name) for z in range(sino.shape[1])]
    )
    return recon.astype(np.float32)


def quantize_8bit(recon: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reconstruction as an 8-bit display render (as the real PNG slices are): stretched
    between random low/high percentiles, rounded, exact 0 outside the reconstruction circle."""
    inside = recon != 0
    low, high = np.percentile(recon[inside], [rng.uniform(0.0, 1.0), rng.uniform(99.0, 100.0)])
    out = np.round(np.clip((recon - low) / max(high - low, 1e-12), 0.0, 1.0) * 255.0)
    out[~inside] = 0.0
    return out.astype(np.float32)


def jpeg_roundtrip(image8: np.ndarray, quality: int) -> np.ndarray:
    """8-bit slices (Z, Y, X) compressed and decoded as JPEG, one slice at a time."""
    from PIL import Image

    out = np.empty_like(image8)
    for z, plane in enumerate(image8):
        buffer = io.BytesIO()
        Image.fromarray(plane.astype(np.uint8)).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out[z] = np.asarray(Image.open(buffer), dtype=np.float32)
    return out
