"""Frame preparation: flat/dark correction to optical density and background removal."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.xanes.params import PrepareParams

__all__ = [
    "average_frames",
    "incident_counts",
    "optical_density",
    "estimate_background",
    "remove_background",
]


def _check_image(name: str, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"{name} must be a 2-D image, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{name} must have an integer or float dtype, got {image.dtype}")
    return image


def average_frames(name: str, frames: np.ndarray | None) -> np.ndarray | None:
    """Mean of a stack (M, H, W) or a single frame (H, W) as float32; None passes through.

    Parameters
    ----------
    name : str
        Name used in error messages (``"flat"``, ``"dark"``).
    frames : numpy.ndarray or None
        One frame or a stack of frames.

    Returns
    -------
    numpy.ndarray or None
        ``(H, W)`` float32 mean frame.
    """
    if frames is None:
        return None
    frames = np.asarray(frames)
    if frames.ndim == 3:
        if frames.shape[0] == 0:
            raise ValueError(f"{name} stack is empty")
        return frames.astype(np.float32).mean(axis=0, dtype=np.float64).astype(np.float32)
    return _check_image(name, frames).astype(np.float32)


def incident_counts(
    flat: np.ndarray, dark: np.ndarray | None = None, *, params: PrepareParams = PrepareParams()
) -> np.ndarray:
    """Incident counts ``flat - dark`` floored at ``min_counts``: the reference of the OD.

    Computed once, it can be passed to :func:`optical_density` (``incident=``) for every frame
    of a series with the same flat and dark.

    Parameters
    ----------
    flat : numpy.ndarray
        ``(H, W)`` counts with the sample out of the beam.
    dark : numpy.ndarray, optional
        ``(H, W)`` dark counts.
    params : PrepareParams
        ``min_counts`` is the floor.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32.
    """
    flat = _check_image("flat", flat)
    incident = flat.astype(np.float32)
    if dark is not None:
        dark = _check_image("dark", dark)
        if dark.shape != flat.shape:
            raise ValueError(f"dark shape {dark.shape} differs from flat shape {flat.shape}")
        incident = incident - np.asarray(dark, dtype=np.float32)
    return np.maximum(incident, np.float32(params.min_counts))


def optical_density(
    frame: np.ndarray,
    flat: np.ndarray | None = None,
    dark: np.ndarray | None = None,
    *,
    params: PrepareParams = PrepareParams(),
    incident: np.ndarray | None = None,
) -> np.ndarray:
    """Optical density ``-ln((I - dark) / (flat - dark))`` of a transmission frame.

    Parameters
    ----------
    frame : numpy.ndarray
        ``(H, W)`` transmitted counts, any integer or float dtype.
    flat : numpy.ndarray, optional
        ``(H, W)`` counts with the sample out of the beam. Without it (and without
        ``incident``) the 99.5th percentile of the frame stands for the incident intensity,
        and the beam profile stays in the result as a slow background (remove it with
        :func:`remove_background`).
    dark : numpy.ndarray, optional
        ``(H, W)`` dark counts, subtracted from frame and flat.
    params : PrepareParams
        ``min_counts`` floors the dark-subtracted counts so faint pixels stay finite.
    incident : numpy.ndarray, optional
        ``incident_counts(flat, dark)`` computed beforehand (a series of frames with the same
        flat and dark); used instead of ``flat``, which must then be None.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 optical density (dimensionless).
    """
    frame = _check_image("frame", frame)
    intensity = frame.astype(np.float32)
    if dark is not None:
        dark = _check_image("dark", dark)
        if dark.shape != frame.shape:
            raise ValueError(f"dark shape {dark.shape} differs from frame shape {frame.shape}")
        np.subtract(intensity, dark.astype(np.float32, copy=False), out=intensity)
    np.maximum(intensity, np.float32(params.min_counts), out=intensity)
    if incident is not None:
        if flat is not None:
            raise ValueError("give flat or incident, not both")
        incident = _check_image("incident", incident)
        if incident.shape != frame.shape:
            raise ValueError(
                f"incident shape {incident.shape} differs from frame shape {frame.shape}"
            )
    elif flat is not None:
        flat = _check_image("flat", flat)
        if flat.shape != frame.shape:
            raise ValueError(f"flat shape {flat.shape} differs from frame shape {frame.shape}")
        incident = incident_counts(flat, dark, params=params)
    if incident is not None:
        np.divide(incident.astype(np.float32, copy=False), intensity, out=intensity)
        return np.log(intensity, out=intensity)
    incident_level = np.float32(np.percentile(intensity[::4, ::4], 99.5))
    np.divide(incident_level, intensity, out=intensity)
    return np.log(intensity, out=intensity)


def _background_scale_px(shape: tuple[int, ...], scale: float) -> float:
    return scale * min(shape) if scale <= 1.0 else scale


def estimate_background(od: np.ndarray, *, params: PrepareParams = PrepareParams()) -> np.ndarray:
    """Slowly varying background of an optical-density image.

    A low percentile over blocks much larger than a particle, smoothed and interpolated back
    to full size; particles (positive OD bumps) do not pull it up while they cover less than
    ``100 - background_percentile`` percent of a block neighbourhood.

    Parameters
    ----------
    od : numpy.ndarray
        ``(H, W)`` optical density.
    params : PrepareParams
        ``background_scale`` (fraction of the frame size when <= 1, else pixels) and
        ``background_percentile``.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 background.
    """
    od = _check_image("od", od)
    scale = _background_scale_px(od.shape, params.background_scale)
    block = max(1, int(round(scale / 6)))
    h, w = od.shape
    hb, wb = max(1, h // block), max(1, w // block)
    trimmed = np.asarray(od[: hb * block, : wb * block], dtype=np.float32)
    blocks = trimmed.reshape(hb, block, wb, block).transpose(0, 2, 1, 3).reshape(hb, wb, -1)
    coarse = np.percentile(blocks, 50.0, axis=-1)
    coarse = ndimage.percentile_filter(coarse, params.background_percentile, size=7, mode="nearest")
    coarse = ndimage.gaussian_filter(coarse, 1.5, mode="nearest")
    rows = (np.arange(h) + 0.5) / block - 0.5
    cols = (np.arange(w) + 0.5) / block - 0.5
    grid = np.meshgrid(np.clip(rows, 0, hb - 1), np.clip(cols, 0, wb - 1), indexing="ij")
    return ndimage.map_coordinates(coarse, grid, order=1, mode="nearest").astype(np.float32)


def remove_background(od: np.ndarray, *, params: PrepareParams = PrepareParams()) -> np.ndarray:
    """Optical density minus its slowly varying background (float32, same shape).

    Parameters
    ----------
    od : numpy.ndarray
        ``(H, W)`` optical density.
    params : PrepareParams
        See :func:`estimate_background`.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32; the background is about zero.
    """
    od = _check_image("od", od)
    return (od.astype(np.float32) - estimate_background(od, params=params)).astype(np.float32)
