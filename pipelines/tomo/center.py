"""Rotation-centre estimation from opposite (0/180 degree) projections."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

_EXACT_PAIR_FRACTION = 0.02
"""A pair within this fraction of an angular step of 180 degrees counts as exactly opposite."""
_SEAM_SEARCH_PX = 2.0
"""Half-width of the refinement search around the pair estimate, detector columns."""
_MAX_SEAM_ROWS = 32
"""Detector rows (evenly spaced) the seam refinement reads."""


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
        tolerance_deg = max(1.0, 1.5 * _median_step(angles))
    diff = np.mod(angles[None, :] - angles[:, None], 360.0)
    mismatch = np.abs(diff - 180.0)
    i, j = np.unravel_index(int(np.argmin(mismatch)), mismatch.shape)
    if mismatch[i, j] > tolerance_deg:
        raise ValueError(
            f"angles_deg has no pair of projections 180 +- {tolerance_deg:.2f} degrees apart"
        )
    return int(i), int(j)


def seam_indices(angles_deg: np.ndarray) -> tuple[int, int, int, int] | None:
    """Projections on both sides of the 180-degree seam of a scan that stops short of it.

    A scan over ``[a, b]`` with ``b - a < 180`` continues, mirrored about the axis, at
    ``a + 180``: the last two projections and the mirrored first two are four consecutive
    samples of one sinogram across the gap ``a + 180 - b``.

    Parameters
    ----------
    angles_deg : numpy.ndarray
        (N,) angles in degrees, any order.

    Returns
    -------
    tuple of int or None
        Indices ``(second_last, last, first, second)`` in angle order, or None when the scan
        has fewer than four angles, spans 180 degrees or more, or ends within
        :data:`_EXACT_PAIR_FRACTION` of a step of 180 degrees (an exact pair exists).
    """
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size < 4:
        return None
    order = np.argsort(angles, kind="stable")
    gap = angles[order[0]] + 180.0 - angles[order[-1]]
    if gap <= _EXACT_PAIR_FRACTION * _median_step(angles) or gap > 3 * _median_step(angles):
        return None
    return int(order[-2]), int(order[-1]), int(order[0]), int(order[1])


def center_frame_indices(angles_deg: np.ndarray, tolerance_deg: float | None = None) -> list[int]:
    """The projections :func:`estimate_center` reads: the opposite pair and, for a scan that
    stops short of 180 degrees, the first four and last four in angle order.

    Parameters
    ----------
    angles_deg : numpy.ndarray
        (N,) angles in degrees.
    tolerance_deg : float, optional
        See :func:`opposite_pair`.

    Returns
    -------
    list of int
        Sorted indices; pass those frames and their angles to :func:`estimate_center`.
    """
    i, j = opposite_pair(angles_deg, tolerance_deg)
    seam = seam_indices(angles_deg)
    if seam is None:
        return sorted({i, j})
    order = np.argsort(np.asarray(angles_deg, dtype=np.float64).ravel(), kind="stable")
    ends = [int(k) for k in (*order[:4], *order[-4:])]
    return sorted({i, j, *seam, *ends})


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

    A scan that stops one step short of 180 degrees (0 to 179 in 1-degree steps) has no such
    pair: the closest pair is a step apart from opposite, and the sample's rotation over that
    step biases the correlation (0.6 px on the tooth scan of tomopy). There the pair estimate
    is refined by the continuity of the sinogram across its seam: the last two projections and
    the first two mirrored about a candidate axis are four consecutive samples of one
    sinogram, and the axis that minimises their second differences in angle (summed over rows
    and columns, divided differences for unequal steps) is returned.

    Parameters
    ----------
    line_integrals : numpy.ndarray
        (N, rows, cols) projections after ``-log`` (or (N, cols) sinogram of one slice).
        :func:`center_frame_indices` says which N of a scan are needed.
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
    pair_center = _pair_center(data[i], data[j])
    seam = seam_indices(angles)
    if seam is None:
        return pair_center
    return _seam_center(data, angles, seam, pair_center)


def _median_step(angles: np.ndarray) -> float:
    steps = np.abs(np.diff(np.sort(angles)))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def _pair_center(first: np.ndarray, opposite: np.ndarray) -> float:
    """Axis from the shift between a projection and its mirrored opposite (correlation)."""
    cols = first.shape[-1]
    a = np.gradient(first.astype(np.float64), axis=1)
    b = np.gradient(opposite[:, ::-1].astype(np.float64), axis=1)
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


def _smoothest_shift(
    first: np.ndarray,
    second: np.ndarray,
    shifted: np.ndarray,
    nodes: np.ndarray,
    columns: slice,
    start: float,
) -> float:
    """Shift ``s`` of the two ``shifted`` projections (rfft spectra, column ``x`` moved to
    ``x + s``) that makes the four projections ``first, second, shifted`` at angles ``nodes``
    the smoothest sequence: least squared second divided differences over ``columns``."""
    cols = first.shape[-1]
    n_fft = 2 * (shifted.shape[-1] - 1)
    freqs = np.fft.rfftfreq(n_fft)
    steps = np.diff(nodes)
    scale = float(np.mean(steps))

    def roughness(shift: float) -> float:
        moved = np.fft.irfft(shifted * np.exp(-2j * np.pi * freqs * shift), n_fft, axis=-1)
        seq = [first, second, moved[0, ..., :cols], moved[1, ..., :cols]]
        total = 0.0
        for k in range(2):
            slope_out = (seq[k + 2] - seq[k + 1]) / steps[k + 1]
            slope_in = (seq[k + 1] - seq[k]) / steps[k]
            total += float(np.sum(((slope_out - slope_in) * scale)[..., columns] ** 2))
        return total

    grid = np.arange(start - 2 * _SEAM_SEARCH_PX, start + 2 * _SEAM_SEARCH_PX + 1e-9, 0.5)
    best = float(grid[int(np.argmin([roughness(x) for x in grid]))])
    result = minimize_scalar(
        roughness, bounds=(best - 0.5, best + 0.5), method="bounded", options={"xatol": 1e-3}
    )
    return float(result.x)


def _seam_center(
    data: np.ndarray, angles: np.ndarray, seam: tuple[int, int, int, int], start: float
) -> float:
    """Axis making the sinogram smoothest across the 180-degree seam, bias-corrected.

    The smoothest continuation is slightly biased where the sample's features move fast
    between projections (0.1-0.2 px with 1.5-2 degree steps). That bias is measured where the
    answer is known: four consecutive projections at each end of the scan, the last two
    shifted (true shift 0). The seam joins the scan's end to its mirrored start, so half of
    each end's bias (in shift units, 2 per axis pixel) is removed.
    """
    second_last, last, first, second = seam
    if data.shape[1] > _MAX_SEAM_ROWS:  # evenly spaced rows bound the cost on large detectors
        data = data[:, np.linspace(0, data.shape[1] - 1, _MAX_SEAM_ROWS).round().astype(int)]
    cols = data.shape[2]
    n_fft = 2 * cols
    ends = data[[second_last, last]].astype(np.float64)
    mirrored = np.fft.rfft(data[[first, second], :, ::-1].astype(np.float64), n_fft, axis=2)
    nodes = np.array(
        [angles[second_last], angles[last], angles[first] + 180.0, angles[second] + 180.0]
    )
    # columns valid for every candidate axis of the search, with a margin for the shift ripple
    lowest = 2 * (start - _SEAM_SEARCH_PX) - (cols - 1)
    highest = 2 * (start + _SEAM_SEARCH_PX) - (cols - 1)
    lo = int(np.ceil(max(0.0, highest))) + 4
    hi = int(np.floor(min(float(cols), cols + lowest))) - 4
    if hi - lo < 8:
        return start
    # mirrored about axis c: p(2c - x) is the flipped row moved by 2c - (cols - 1)
    shift = _smoothest_shift(
        ends[0], ends[1], mirrored, nodes, slice(lo, hi), 2 * start - (cols - 1)
    )
    center = (cols - 1 + shift) / 2.0
    order = np.argsort(angles, kind="stable")
    if order.size < 8:
        return center
    inner = slice(4, cols - 4)
    biases = []
    for four in (order[:4], order[-4:]):
        frames = data[four].astype(np.float64)
        spectra = np.fft.rfft(frames[2:], n_fft, axis=2)
        biases.append(_smoothest_shift(frames[0], frames[1], spectra, angles[four], inner, 0.0))
    bias_start, bias_end = biases
    return center - (bias_end - bias_start) / 4.0
