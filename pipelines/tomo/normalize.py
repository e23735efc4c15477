"""Dark/flat normalisation of projections and conversion to line integrals."""

from __future__ import annotations

import numpy as np

DEFAULT_MIN_TRANSMISSION = 1e-3
"""Floor of the transmission before ``-log``: non-positive or tiny values (dead pixels, dark
noise, saturation of the sample) are clipped to it, so line integrals stay finite and are at
most ``-log(1e-3) ~= 6.9``."""


def mean_frame(frames: np.ndarray | None, name: str) -> np.ndarray | None:
    """Average a stack of flat or dark frames (a single 2-D frame is returned as float32).

    Parameters
    ----------
    frames : numpy.ndarray or None
        (rows, cols) or (n, rows, cols).
    name : str
        Parameter name used in error messages.

    Returns
    -------
    numpy.ndarray or None
        float32 (rows, cols), or None when ``frames`` is None.
    """
    if frames is None:
        return None
    arr = np.asarray(frames)
    if arr.ndim == 3:
        return arr.astype(np.float32).mean(axis=0)
    if arr.ndim == 2:
        return arr.astype(np.float32)
    raise ValueError(f"{name} must be 2-D (rows, cols) or 3-D (n, rows, cols), got {arr.shape}")


def line_integrals(
    projections: np.ndarray,
    *,
    flat: np.ndarray | None = None,
    dark: np.ndarray | None = None,
    min_transmission: float = DEFAULT_MIN_TRANSMISSION,
) -> np.ndarray:
    """Normalise raw projections by dark and flat fields and take ``-log``.

    Parameters
    ----------
    projections : numpy.ndarray
        (N, rows, cols) or (rows, cols) detector frames, any real dtype.
    flat : numpy.ndarray, optional
        Open-beam frame(s), (rows, cols) or (n, rows, cols), averaged. Without it the
        projections are taken as already flat-corrected transmission (flat = 1).
    dark : numpy.ndarray, optional
        Dark frame(s), same shapes; default 0.
    min_transmission : float, optional
        Floor applied to the transmission before the logarithm; see
        :data:`DEFAULT_MIN_TRANSMISSION`.

    Returns
    -------
    numpy.ndarray
        float32 line integrals ``-log(max((P - D) / (F - D), min_transmission))`` with the
        shape of ``projections``. Pixels whose ``F - D`` is not positive get the floor too.
    """
    if not 0 < min_transmission < 1:
        raise ValueError(f"min_transmission must be in (0, 1), got {min_transmission}")
    proj = np.asarray(projections)
    if proj.ndim not in (2, 3):
        raise ValueError(f"projections must be 2-D or 3-D, got shape {proj.shape}")
    frame_shape = proj.shape[-2:]
    flat_mean = mean_frame(flat, "flat")
    dark_mean = mean_frame(dark, "dark")
    for name, frame in (("flat", flat_mean), ("dark", dark_mean)):
        if frame is not None and frame.shape != frame_shape:
            raise ValueError(f"{name} frame shape {frame.shape} != projection shape {frame_shape}")
    signal = proj.astype(np.float32)
    if dark_mean is not None:
        signal -= dark_mean
    if flat_mean is not None:
        beam = flat_mean - dark_mean if dark_mean is not None else flat_mean.copy()
        good = beam > 0
        transmission = np.divide(signal, beam, out=np.zeros_like(signal), where=good)
    else:
        transmission = signal
    np.maximum(transmission, np.float32(min_transmission), out=transmission)
    np.log(transmission, out=transmission)
    np.negative(transmission, out=transmission)
    return transmission
