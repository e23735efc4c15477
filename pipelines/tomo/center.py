"""Rotation-centre estimation from opposite (0/180 degree) projections."""

from __future__ import annotations

import numpy as np


def opposite_pair(angles_deg: np.ndarray, tolerance_deg: float | None = None) -> tuple[int, int]:
    """Indices of the two projections whose angles differ by the closest to 180 degrees.

    Parameters
    ----------
    angles_deg : numpy.ndarray
        (N,) projection angles in degrees.
    tolerance_deg : float, optional
        Largest accepted deviation from 180 degrees; default ``max(1, 1.5 * median step)``.

    Returns
    -------
    tuple of int
        ``(i, j)`` with ``angles[j] - angles[i]`` closest to 180 (modulo 360).

    Raises
    ------
    ValueError
        When no pair is within ``tolerance_deg`` of 180 degrees.
    """
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size < 2:
        raise ValueError("angles_deg must hold at least two angles")
    if tolerance_deg is None:
        steps = np.abs(np.diff(np.sort(angles)))
        steps = steps[steps > 0]
        tolerance_deg = max(1.0, 1.5 * float(np.median(steps))) if steps.size else 1.0
    diff = np.mod(angles[None, :] - angles[:, None], 360.0)
    mismatch = np.abs(diff - 180.0)
    i, j = np.unravel_index(int(np.argmin(mismatch)), mismatch.shape)
    if mismatch[i, j] > tolerance_deg:
        raise ValueError(
            f"angles_deg has no pair of projections 180 +- {tolerance_deg:.2f} degrees apart"
        )
    return int(i), int(j)


def estimate_center(
    line_integrals: np.ndarray,
    angles_deg: np.ndarray,
    *,
    tolerance_deg: float | None = None,
) -> float:
    """Estimate the rotation axis position on the detector.

    The projection at ``theta + 180`` is the mirror image of the one at ``theta`` about the
    rotation axis. The column shift that best aligns one with the mirrored other (FFT
    cross-correlation of the column derivatives, summed over rows, refined with a parabola)
    gives the axis.

    Parameters
    ----------
    line_integrals : numpy.ndarray
        (N, rows, cols) projections after ``-log`` (or (N, cols) sinogram of one slice).
    angles_deg : numpy.ndarray
        (N,) angles in degrees.
    tolerance_deg : float, optional
        See :func:`opposite_pair`.

    Returns
    -------
    float
        Axis position in detector column pixels (``cols // 2`` for a centred sample in the
        :func:`skimage.transform.radon` convention).
    """
    data = np.asarray(line_integrals)
    if data.ndim == 2:
        data = data[:, np.newaxis, :]
    if data.ndim != 3:
        raise ValueError(f"line_integrals must be 2-D or 3-D, got shape {data.shape}")
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size != data.shape[0]:
        raise ValueError(
            f"angles_deg has {angles.size} angles but line_integrals has {data.shape[0]} frames"
        )
    i, j = opposite_pair(angles, tolerance_deg)
    cols = data.shape[2]
    a = np.gradient(data[i].astype(np.float64), axis=1)
    b = np.gradient(data[j, :, ::-1].astype(np.float64), axis=1)
    n_fft = 2 * cols
    spectrum = np.fft.rfft(a, n_fft, axis=1) * np.conj(np.fft.rfft(b, n_fft, axis=1))
    corr = np.fft.irfft(spectrum.sum(axis=0), n_fft)
    lags = np.fft.fftfreq(n_fft, d=1.0 / n_fft)
    k = int(np.argmax(corr))
    left, mid, right = corr[k - 1], corr[k], corr[(k + 1) % n_fft]
    denom = left - 2 * mid + right
    frac = 0.5 * (left - right) / denom if denom != 0 else 0.0
    shift = float(lags[k]) + float(np.clip(frac, -0.5, 0.5))
    # b(x) = p_j(cols - 1 - x) = p_i(x + cols - 1 - 2c): the peak lag is 2c - (cols - 1)
    return (cols - 1 + shift) / 2.0
