"""Numeric kernels of the XANES tracker: crops, order statistics, background planes,
Gauss-Newton registration and fast binary morphology.

Each kernel computes the same thing as the numpy/scipy call it replaces (see
``tests/pipelines/xanes/test_kernels.py``), only faster on the small windows the tracker uses.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.fft import next_fast_len

try:  # np.einsum's own C routine, without its Python dispatch (numpy >= 2)
    from numpy._core._multiarray_umath import c_einsum as _einsum
except ImportError:  # pragma: no cover - numpy 1.x
    _einsum = np.einsum

__all__ = [
    "CROSS",
    "GradientModel",
    "block_mean",
    "dot",
    "box_dilation",
    "extract_crop",
    "fast_len_below",
    "fill_holes",
    "fit_plane",
    "gaussian_weights",
    "inside_fraction",
    "partition_median",
    "partition_percentile",
    "plane_from_samples",
    "plane_samples",
]


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two vectors by einsum, not BLAS: a multi-threaded BLAS dot of a few
    thousand elements took milliseconds on a busy 2-core node."""
    return float(_einsum("i,i->", a, b))


def extract_crop(image: np.ndarray, origin: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop ``shape`` at integer ``origin``; outside pixels repeat the nearest edge pixel."""
    r0, c0 = int(origin[0]), int(origin[1])
    h, w = shape
    rows_total, cols_total = image.shape
    if r0 >= 0 and c0 >= 0 and r0 + h <= rows_total and c0 + w <= cols_total:
        return image[r0 : r0 + h, c0 : c0 + w]
    rows = np.clip(np.arange(r0, r0 + h), 0, rows_total - 1)
    cols = np.clip(np.arange(c0, c0 + w), 0, cols_total - 1)
    return image[np.ix_(rows, cols)]


def inside_fraction(origin: np.ndarray, shape: tuple[int, int], frame: tuple[int, ...]) -> float:
    """Fraction of a box (integer ``origin``, ``shape``) inside a frame of shape ``frame``."""
    r0, c0 = origin
    h, w = shape
    rows = max(0, min(r0 + h, frame[0]) - max(r0, 0))
    cols = max(0, min(c0 + w, frame[1]) - max(c0, 0))
    return rows * cols / float(h * w)


def partition_median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D float array without NaN, by one partition (scratch reordered)."""
    half = values.size // 2
    if values.size % 2:
        values.partition(half)
        return float(values[half])
    values.partition((half - 1, half))
    return float((values[half - 1] + values[half]) / 2)


def partition_percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) of a 1-D array, by one partition.

    ``values`` is scratch: it is reordered in place.
    """
    virtual = (values.size - 1) * (q / 100)
    previous = int(np.floor(virtual))
    if previous >= values.size - 1:
        return float(values.max())
    values.partition((previous, previous + 1))
    low, high = values[previous], values[previous + 1]
    gamma = virtual - previous
    diff = high - low
    return float(high - diff * (1 - gamma) if gamma >= 0.5 else low + diff * gamma)


def plane_from_samples(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int], dtype
) -> np.ndarray:
    """Least-squares plane of ``shape`` through samples (outliers beyond 3 MAD dropped)."""
    values = values.astype(np.float64)
    median = partition_median(values.copy())
    deviation = np.abs(values - median)
    spread = 1.4826 * partition_median(deviation.copy()) + 1e-12
    keep = deviation <= 3.0 * spread
    if np.count_nonzero(keep) >= 16:
        rows, cols, values = rows[keep], cols[keep], values[keep]
    r_mean, c_mean, v_mean = rows.mean(), cols.mean(), values.mean()
    dr, dc, dv = rows - r_mean, cols - c_mean, values - v_mean
    srr, scc, src = dot(dr, dr), dot(dc, dc), dot(dr, dc)
    srv, scv = dot(dr, dv), dot(dc, dv)
    det = srr * scc - src * src
    if det <= 1e-9:
        return np.full(shape, v_mean, dtype=dtype)
    a = (srv * scc - scv * src) / det
    b = (scv * srr - srv * src) / det
    r = np.arange(shape[0], dtype=np.float64)[:, None] - r_mean
    c = np.arange(shape[1], dtype=np.float64)[None, :] - c_mean
    return (v_mean + a * r + b * c).astype(dtype)


def plane_samples(where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``where`` a plane is fitted on: at most about 1500, evenly subsampled."""
    rows, cols = np.nonzero(where)
    step = max(1, rows.size // 1500)
    return rows[::step], cols[::step]


def fit_plane(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Least-squares plane through ``image[where]`` (outliers beyond 3 MAD dropped)."""
    rows, cols = plane_samples(where)
    return plane_from_samples(rows, cols, image[rows, cols], image.shape, image.dtype)


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The 1-D kernel ``scipy.ndimage.gaussian_filter`` correlates with (same truncation)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return (phi / phi.sum())[::-1]


class GradientModel:
    """Gauss-Newton registration of an image to a fixed template on a support.

    Minimises the squared difference between ``moving(x + d)`` and ``template(x)`` over the
    support pixels, linearised with the template gradient. The moving image is interpolated
    bilinearly (edges repeated, as :func:`shift_image`) at the support pixels only.
    """

    def __init__(self, template: np.ndarray, support: np.ndarray) -> None:
        self.rows, self.cols = np.nonzero(support)
        if self.rows.size:
            self.row_range = (int(self.rows.min()), int(self.rows.max()))
            self.col_range = (int(self.cols.min()), int(self.cols.max()))
        else:
            self.row_range = self.col_range = (0, 0)
        gradients = np.gradient(template.astype(np.float64))
        self.gr, self.gc = gradients[0][support], gradients[1][support]
        gr, gc = self.gr, self.gc
        a = np.array([[dot(gr, gr), dot(gr, gc)], [dot(gr, gc), dot(gc, gc)]])
        self.degenerate = bool(np.linalg.det(a) <= 1e-9 * max(1.0, float(np.trace(a)) ** 2))
        self.inverse = None if self.degenerate else np.linalg.inv(a)
        self.reference = template[support]
        self._flat_index: tuple[int, np.ndarray] | None = None
        self._centred: tuple[np.ndarray, float] | None = None

    def centred_reference(self) -> tuple[np.ndarray, float]:
        """The reference minus its mean and that vector's squared norm (computed once)."""
        if self._centred is None:
            centred = self.reference - self.reference.mean()
            self._centred = (centred, dot(centred, centred))
        return self._centred

    def _warped(self, moving: np.ndarray, d: np.ndarray) -> np.ndarray:
        """``shift_image(moving, -d)`` at the support pixels."""
        h, w = moving.shape
        image = np.asarray(moving, dtype=np.float64)
        row0, col0 = int(np.floor(d[0])), int(np.floor(d[1]))
        fr, fc = float(d[0]) - row0, float(d[1]) - col0
        if (
            row0 + self.row_range[0] >= 0
            and col0 + self.col_range[0] >= 0
            and row0 + self.row_range[1] + 1 < h
            and col0 + self.col_range[1] + 1 < w
        ):
            if self._flat_index is None or self._flat_index[0] != w:
                self._flat_index = (w, self.rows * w + self.cols)
            flat = np.ravel(image)
            index = self._flat_index[1] + (row0 * w + col0)
            top_left, top_right = flat[index], flat[index + 1]
            index += w
            bottom_left, bottom_right = flat[index], flat[index + 1]
        else:
            r, c = self.rows + row0, self.cols + col0
            r_lo, r_hi = np.clip(r, 0, h - 1), np.clip(r + 1, 0, h - 1)
            c_lo, c_hi = np.clip(c, 0, w - 1), np.clip(c + 1, 0, w - 1)
            top_left, top_right = image[r_lo, c_lo], image[r_lo, c_hi]
            bottom_left, bottom_right = image[r_hi, c_lo], image[r_hi, c_hi]
        top = top_left * (1.0 - fc) + top_right * fc
        bottom = bottom_left * (1.0 - fc) + bottom_right * fc
        return (top * (1.0 - fr) + bottom * fr).astype(moving.dtype, copy=False)

    def displacement(self, moving: np.ndarray, start: np.ndarray, iterations: int):
        """Displacement of ``moving`` vs the template; None when the problem is degenerate."""
        if self.inverse is None:
            return None
        d = np.asarray(start, dtype=np.float64).copy()
        for _ in range(iterations):
            residual = self._warped(moving, d) - self.reference
            gradient = np.array([dot(self.gr, residual), dot(self.gc, residual)])
            step = self.inverse @ gradient
            d = d - step
            if np.max(np.abs(step)) < 0.005:
                break
        return d


CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, ndimage's default


def box_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a ``(2 radius + 1)`` square, pixels outside the array ignored.

    Same as ``ndimage.maximum_filter(mask, size=2 * radius + 1)`` on a bool mask.
    """
    rows = mask.copy()
    for step in range(1, radius + 1):
        rows[step:] |= mask[:-step]
        rows[:-step] |= mask[step:]
    out = rows.copy()
    for step in range(1, radius + 1):
        out[:, step:] |= rows[:, :-step]
        out[:, :-step] |= rows[:, step:]
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask)``: background not 4-connected to the border is filled.

    One labelling of the background instead of a dilation iterated to convergence.
    """
    background, n = ndimage.label(~mask, structure=CROSS)
    if n == 0:
        return mask.copy()
    edges = np.concatenate((background[0], background[-1], background[:, 0], background[:, -1]))
    outside = np.zeros(n + 1, dtype=bool)
    outside[edges] = True
    outside[0] = False
    return ~outside[background]


def fast_len_below(n: int) -> int:
    """Largest FFT-friendly length (factors 2, 3, 5) not above n."""
    for m in range(n, 0, -1):
        if next_fast_len(m, real=True) == m:
            return m
    return n


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks (float32), summed by strided slices."""
    if factor == 1:
        return image.astype(np.float32)
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = np.asarray(image[: h * factor, : w * factor], dtype=np.float32)
    # blocks.reshape(h, f, w, f).mean(axis=(1, 3)) up to float rounding, without its slow loop
    cols = blocks[:, 0::factor] + blocks[:, 1::factor]
    for j in range(2, factor):
        cols += blocks[:, j::factor]
    rows = cols[0::factor] + cols[1::factor]
    for i in range(2, factor):
        rows += cols[i::factor]
    rows /= np.float32(factor * factor)
    return rows
