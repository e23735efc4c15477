"""Registration primitives: moments, sub-pixel phase correlation, robust global drift, shifts.

Sign convention everywhere: a *displacement* ``d`` (row, col) means the content of the moving
image sits at ``x + d`` when it sat at ``x`` in the reference.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "centre_of_mass",
    "phase_correlation_displacement",
    "PhaseCorrelator",
    "robust_global_shift",
    "shift_image",
    "roi_ssim",
    "ssim_from_moments",
]


def centre_of_mass(weights: np.ndarray) -> np.ndarray:
    """Centre of mass from the zeroth and first moments, ``(M01 / M00, M10 / M00)``.

    Parameters
    ----------
    weights : numpy.ndarray
        2-D mask or non-negative intensity image of one particle.

    Returns
    -------
    numpy.ndarray
        ``(2,)`` float64 (row, col); NaN when the zeroth moment is 0.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(f"weights must be 2-D, got shape {weights.shape}")
    m00 = weights.sum()
    if m00 <= 0:
        return np.full(2, np.nan)
    rows = np.arange(weights.shape[0], dtype=np.float64)
    cols = np.arange(weights.shape[1], dtype=np.float64)
    m01 = rows @ weights.sum(axis=1)
    m10 = cols @ weights.sum(axis=0)
    return np.array([m01 / m00, m10 / m00])


def _upsampled_dft(data: np.ndarray, region: int, factor: int, offsets: np.ndarray) -> np.ndarray:
    """Matrix-multiply DFT of ``data`` on a ``region``-sized grid upsampled by ``factor``."""
    out = data
    for axis in (1, 0):
        n = data.shape[axis]
        kernel = (np.arange(region) - offsets[axis])[:, None] * np.fft.fftfreq(n, factor)
        kernel = np.exp(-2j * np.pi * kernel)
        out = np.tensordot(kernel, out, axes=(1, axis))
        if axis == 1:
            out = np.moveaxis(out, 0, 1)
    return out


def _parabolic_offset(corr: np.ndarray, peak_at: tuple[int, ...]) -> np.ndarray:
    """Sub-pixel offset of a correlation peak from a parabola through it and its neighbours."""
    offset = np.zeros(2)
    for axis in (0, 1):
        n = corr.shape[axis]
        before = list(peak_at)
        after = list(peak_at)
        before[axis] = (peak_at[axis] - 1) % n
        after[axis] = (peak_at[axis] + 1) % n
        lo, mid, hi = corr[tuple(before)], corr[peak_at], corr[tuple(after)]
        denom = lo - 2 * mid + hi
        if denom < 0:
            offset[axis] = np.clip(0.5 * (lo - hi) / denom, -0.5, 0.5)
    return offset


class PhaseCorrelator:
    """Sub-pixel phase correlation against a fixed reference (its FFT is cached).

    Parameters
    ----------
    reference : numpy.ndarray
        2-D reference image.
    upsample : int
        Sub-pixel factor (precision 1 / upsample px) of the matrix-multiply DFT of
        Guizar-Sicairos et al. (2008); 1 fits a parabola through the peak instead (fast, suited
        to smooth peaks, i.e. small ``whitening``).
    whitening : float
        Exponent of the spectral normalisation: 1 is phase correlation, 0 cross-correlation.
    """

    def __init__(
        self, reference: np.ndarray, *, upsample: int = 20, whitening: float = 1.0
    ) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.ndim != 2:
            raise ValueError(f"reference must be 2-D, got shape {reference.shape}")
        if upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {upsample}")
        self.shape = reference.shape
        if not 0.0 <= whitening <= 1.0:
            raise ValueError(f"whitening must be in [0, 1], got {whitening}")
        self.upsample = int(upsample)
        self.whitening = float(whitening)
        centred = reference - reference.mean()
        if self.upsample > 1:
            self._ref_conj = np.conj(np.fft.fft2(centred))
        else:
            self._ref_conj = np.conj(np.fft.rfft2(centred))

    def displacement(self, moving: np.ndarray) -> tuple[np.ndarray, float]:
        """Displacement of ``moving`` relative to the reference and the correlation peak.

        Parameters
        ----------
        moving : numpy.ndarray
            2-D image with the reference's shape.

        Returns
        -------
        displacement : numpy.ndarray
            ``(2,)`` float64 (row, col), in ``(-n/2, n/2]`` per axis.
        peak : float
            Peak height relative to the root-sum-square of the correlation (at most 1).
        """
        moving = np.asarray(moving, dtype=np.float64)
        if moving.shape != self.shape:
            raise ValueError(f"moving shape {moving.shape} differs from reference {self.shape}")
        centred = moving - moving.mean()
        if self.upsample > 1:
            product = np.fft.fft2(centred) * self._ref_conj
        else:
            product = np.fft.rfft2(centred) * self._ref_conj
        if self.whitening > 0:
            magnitude = np.abs(product)
            magnitude = np.maximum(magnitude, 1e-12 * magnitude.max() + 1e-300)
            product /= magnitude**self.whitening
        if self.upsample > 1:
            corr: np.ndarray = np.abs(np.fft.ifft2(product))
            norm = float(np.sqrt(np.sum(np.abs(product) ** 2))) or 1.0
        else:
            corr = np.fft.irfft2(product, s=self.shape)
            norm = float(np.sqrt(np.sum(corr**2) * corr.size)) or 1.0
        product /= norm
        corr = corr / norm
        peak_at = tuple(int(i) for i in np.unravel_index(int(np.argmax(corr)), corr.shape))
        shape = np.array(self.shape, dtype=np.float64)
        shift = np.array(peak_at, dtype=np.float64)
        shift[shift > shape // 2] -= shape[shift > shape // 2]
        if self.upsample > 1:
            factor = self.upsample
            shift = np.round(shift * factor) / factor
            region = int(np.ceil(factor * 1.5))
            centre = np.fix(region / 2.0)
            offsets = centre - shift * factor
            # conj(product) correlates in the opposite sense; flip back after the upsampled DFT
            up = np.conj(_upsampled_dft(np.conj(product), region, factor, offsets))
            best_up = np.unravel_index(int(np.argmax(np.abs(up))), up.shape)
            shift = shift + (np.array(best_up, dtype=np.float64) - centre) / factor
            peak = float(np.abs(up[best_up]) / np.sqrt(product.size))
        else:
            peak = float(corr[peak_at] * np.sqrt(corr.size))
            shift = shift + _parabolic_offset(corr, peak_at)
        return shift, peak


def phase_correlation_displacement(
    reference: np.ndarray, moving: np.ndarray, *, upsample: int = 20
) -> np.ndarray:
    """Sub-pixel displacement (row, col) of ``moving`` relative to ``reference``.

    Parameters
    ----------
    reference, moving : numpy.ndarray
        2-D images of the same shape.
    upsample : int
        Sub-pixel factor.

    Returns
    -------
    numpy.ndarray
        ``(2,)`` float64; ``moving(x + d) = reference(x)``.
    """
    return PhaseCorrelator(reference, upsample=upsample).displacement(moving)[0]


def robust_global_shift(shifts: np.ndarray) -> np.ndarray:
    """Global rigid drift from per-particle shifts: the median over found particles.

    Parameters
    ----------
    shifts : numpy.ndarray
        ``(P, 2)`` displacements, NaN rows for particles not found.

    Returns
    -------
    numpy.ndarray
        ``(2,)`` float64; NaN when no particle is found.
    """
    shifts = np.asarray(shifts, dtype=np.float64)
    if shifts.ndim != 2 or shifts.shape[1] != 2:
        raise ValueError(f"shifts must have shape (P, 2), got {shifts.shape}")
    found = np.all(np.isfinite(shifts), axis=1)
    if not np.any(found):
        return np.full(2, np.nan)
    return np.median(shifts[found], axis=0)


def _bilinear_shift(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Order-1 shift with edge replication, separable (one blend of two rows/columns per axis).

    Same values as ``ndimage.shift(image, displacement, order=1, mode="nearest")`` up to float
    rounding: a pure translation has the same interpolation weights at every pixel.
    """
    out = image.astype(np.float64)
    for axis, d in enumerate(displacement):
        n = out.shape[axis]
        if n == 0:
            break
        # output[x] = input[x - d]
        source = -float(d)
        whole = np.floor(source)
        weight = source - whole
        positions = np.arange(int(whole), int(whole) + n + 1)
        np.maximum(positions, 0, out=positions)
        np.minimum(positions, n - 1, out=positions)
        lower = np.take(out, positions[:-1], axis=axis)
        if weight == 0.0:
            out = lower
            continue
        upper = np.take(out, positions[1:], axis=axis)
        upper -= lower
        upper *= weight
        upper += lower
        out = upper
    return out.astype(image.dtype, copy=False)


def shift_image(image: np.ndarray, displacement: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Move image content by ``displacement`` (row, col), edges filled by the nearest pixel.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image.
    displacement : array_like
        ``(2,)`` displacement in pixels.
    order : int
        Spline order of the interpolation (1 = bilinear, computed directly as two separable
        blends; higher orders by ``scipy.ndimage.shift``).

    Returns
    -------
    numpy.ndarray
        Shifted image, same dtype as a float input (float64 for integer input).
    """
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float64)
    displacement = np.asarray(displacement, dtype=np.float64)
    if order == 1 and image.ndim == 2 and displacement.shape == (2,):
        return _bilinear_shift(image, displacement)
    return ndimage.shift(
        image,
        displacement,
        order=order,
        mode="nearest",
        prefilter=order > 1,
    )


def roi_ssim(a: np.ndarray, b: np.ndarray, *, data_range: float | None = None) -> float:
    """Structural similarity of two ROIs with whole-ROI statistics (seed's eq. 1).

    ``SSIM = l * c * s`` with alpha = beta = gamma = 1 and ``c3 = c2 / 2``, computed from the
    means, variances and covariance of the two ROIs.

    Parameters
    ----------
    a, b : numpy.ndarray
        ROIs of the same shape.
    data_range : float, optional
        Dynamic range for the stabilising constants; default the joint peak-to-peak range.

    Returns
    -------
    float
        SSIM in ``[-1, 1]``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    if data_range is None:
        data_range = float(max(a.max(), b.max()) - min(a.min(), b.min())) or 1.0
    mu_a, mu_b = a.mean(), b.mean()
    var_a, var_b = a.var(), b.var()
    cov = ((a - mu_a) * (b - mu_b)).mean()
    return ssim_from_moments(mu_a, mu_b, var_a, var_b, cov, data_range=data_range)


def ssim_from_moments(
    mean_a: float,
    mean_b: float,
    var_a: float,
    var_b: float,
    cov: float,
    *,
    data_range: float,
) -> float:
    """SSIM of :func:`roi_ssim` from the two ROIs' means, variances and covariance.

    Lets a caller that compares many ROIs against one reference compute the reference's
    moments once.

    Parameters
    ----------
    mean_a, mean_b, var_a, var_b, cov : float
        Whole-ROI means, (population) variances and covariance.
    data_range : float
        Dynamic range for the stabilising constants.

    Returns
    -------
    float
        SSIM in ``[-1, 1]``.
    """
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    num = (2 * mean_a * mean_b + c1) * (2 * cov + c2)
    den = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    return float(num / den)
