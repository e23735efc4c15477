"""Shifts of one particle refined against a pattern that stays still in the detector frame.

Zone-plate rings, condenser streaks and what the flat field leaves of the illumination do not
move with the sample. Registered on its own, a particle drags that pattern along in its
template, and every frame is pulled towards the template frame's position. Over a whole scan the
two separate: in a window fixed in the detector frame, frame ``t`` is modelled as

``W_t(x) = g_t [P_1 + y_t P_2](x - d_t) + Q(x) + c_t``

with a moving particle image of two components (``y_t`` is the particle's mean OD in frame ``t``,
so the model spans a contrast change and one change of texture across the absorption edge), a
static pattern ``Q`` and per-frame gain ``g_t``, offset ``c_t`` and shift ``d_t``. Given the
shifts, ``P_1``, ``P_2`` and ``Q`` are a least-squares problem that decouples by spatial
frequency (three unknowns per frequency, solved in closed form; a small ridge on ``Q`` leaves
what the drift cannot separate with the moving part); given them, each frame's shift, gain and
offset follow by Gauss-Newton on the particle's support. A few alternations, vectorised over
the frames, start from the live tracker's shifts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import fft as sfft
from scipy import ndimage
from scipy.fft import next_fast_len

from pipelines.xanes.kernels import extract_crop
from pipelines.xanes.params import TrackParams
from pipelines.xanes.post_edge import edge_binning_of
from pipelines.xanes.results import ParticleRoi
from pipelines.xanes.window import bin_mask

__all__ = ["refine_shifts_static", "static_refined_shifts", "window_support"]


def _wavenumbers(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    kr = (2 * np.pi * np.fft.fftfreq(h)).astype(np.float32)[:, None]
    kc = (2 * np.pi * np.fft.rfftfreq(w)).astype(np.float32)[None, :]
    return kr, kc


def _phases(kr: np.ndarray, kc: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Separable factors of ``exp(-i k . d_t)``: ``(T, h, 1)`` and ``(T, 1, w')``."""
    er = np.exp(-1j * kr[None] * d[:, 0, None, None].astype(np.float32)).astype(np.complex64)
    ec = np.exp(-1j * kc[None] * d[:, 1, None, None].astype(np.float32)).astype(np.complex64)
    return er, ec


def _solve_images(
    spectra: np.ndarray,
    y: np.ndarray,
    gain: np.ndarray,
    er: np.ndarray,
    ec: np.ndarray,
    ridge: float,
    texture_ridge: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frequency least squares for ``P_1``, ``P_2``, ``Q`` given the shifts and gains.

    The rows of frame ``t`` are ``[g_t E_t, g_t y_t E_t, 1]``: the moving block of the normal
    equations is one real 2 x 2 matrix for every frequency, so ``Q`` follows from a scalar
    Schur complement and the moving images from it. ``texture_ridge`` (relative) keeps ``P_2``
    small: a free second component could absorb shift errors that follow the contrast.
    """
    t = float(y.size)
    a = np.stack([gain, gain * y]).astype(np.float32)  # (2, T)
    moving = a @ a.T
    moving[1, 1] += texture_ridge * moving[0, 0]
    inverse = np.linalg.inv(moving)
    u = [np.einsum("t,thx,txw->hw", a[j], er, ec) for j in range(2)]
    conj = np.conj(er) * np.conj(ec)
    b = [np.einsum("t,thw,thw->hw", a[j], conj, spectra) for j in range(2)]
    total = spectra.sum(axis=0)
    # x^H M^-1 z for the 2-vectors of every frequency
    schur = (
        t * (1.0 + ridge)
        - sum(inverse[i, j] * u[i] * np.conj(u[j]) for i in range(2) for j in range(2)).real
    )
    q = (total - sum(inverse[i, j] * u[i] * b[j] for i in range(2) for j in range(2))) / schur
    p = [sum(inverse[i, j] * (b[j] - np.conj(u[j]) * q) for j in range(2)) for i in range(2)]
    return p[0], p[1], q


def refine_shifts_static(
    window: np.ndarray,
    shifts: np.ndarray,
    support: np.ndarray,
    *,
    rounds: int = 3,
    iterations: int = 4,
    ridge: float = 0.05,
    texture_ridge: float = 0.0,
) -> np.ndarray:
    """Shifts of a particle over a scan, with the static pattern of its window fitted out.

    Parameters
    ----------
    window : numpy.ndarray
        ``(T, h, w)`` optical density of a window fixed in the detector frame, one per frame
        in which the particle was registered.
    shifts : numpy.ndarray
        ``(T, 2)`` the particle's shifts in those frames (the starting point), in window pixels.
    support : numpy.ndarray
        ``(h, w)`` bool: the pixels registered, where the particle sits at ``shifts[0]``
        (its footprint with a margin, pixels near the window and frame borders left out); it
        follows the particle by whole pixels.
    rounds : int
        Alternations of the image fit and the registration.
    iterations : int
        Gauss-Newton iterations per round.
    ridge : float
        Ridge on the static pattern, relative to the number of frames; > 0 (the zero frequency
        of the static pattern and of the moving image cannot be told apart, and without a ridge
        its least-squares problem is singular: every shift came back NaN).
    texture_ridge : float
        Ridge on the second moving component, relative (0: free; large: one component scaled
        by the gain, which fails on particles whose texture changes across the edge).

    Returns
    -------
    numpy.ndarray
        ``(T, 2)`` refined shifts, expressed so that ``shifts[0]`` is kept (the reference).
    """
    window = np.asarray(window)
    shifts = np.asarray(shifts, dtype=np.float64)
    if window.ndim != 3:
        raise ValueError(f"window must be (T, h, w), got shape {window.shape}")
    n, h, w = window.shape
    if shifts.shape != (n, 2) or not np.all(np.isfinite(shifts)):
        raise ValueError(f"shifts must be finite with shape ({n}, 2), got {shifts.shape}")
    if support.shape != (h, w):
        raise ValueError(f"support must have shape {(h, w)}, got {support.shape}")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    if n < 4 or np.count_nonzero(support) < 16:
        return shifts.copy()
    stack = np.asarray(window, dtype=np.float32)
    stack = stack - stack.mean(axis=(1, 2), keepdims=True)
    spectra = sfft.rfft2(stack, workers=1)
    kr, kc = _wavenumbers((h, w))
    # the contrast basis: the particle's mean OD where it sits in each frame
    moved = [np.roll(support, tuple(np.round(s - shifts[0]).astype(int)), (0, 1)) for s in shifts]
    level = np.array([float(stack[i][m].mean()) for i, m in enumerate(moved)])
    y = level - level.mean()
    y = y / (np.sqrt(np.mean(y * y)) + 1e-12)
    d = shifts.copy()
    gain = np.ones(n)
    offset = np.zeros(n)
    for _ in range(rounds):
        er, ec = _phases(kr, kc, d)
        p1, p2, q = _solve_images(spectra, y, gain, er, ec, ridge, texture_ridge)
        moving = p1[None] + y[:, None, None].astype(np.float32) * p2[None]
        static = sfft.irfft2(q, s=(h, w), workers=1).astype(np.float32)
        target = stack - static[None]
        weights = np.stack(
            [np.roll(support, tuple(np.round(s - shifts[0]).astype(int)), (0, 1)) for s in d]
        ).astype(np.float32)
        for _ in range(iterations):
            er, ec = _phases(kr, kc, d)
            model = moving * er * ec
            image = sfft.irfft2(model, s=(h, w), workers=1)
            grad_r = sfft.irfft2(-1j * kr[None] * model, s=(h, w), workers=1)
            grad_c = sfft.irfft2(-1j * kc[None] * model, s=(h, w), workers=1)
            g = gain[:, None, None].astype(np.float32)
            residual = (target - g * image - offset[:, None, None].astype(np.float32)) * weights
            jac = (g * grad_r, g * grad_c, image, np.ones_like(image))
            normal = np.empty((n, 4, 4))
            rhs = np.empty((n, 4))
            for i in range(4):
                wi = jac[i] * weights
                rhs[:, i] = np.einsum("thw,thw->t", wi, residual)
                for j in range(i, 4):
                    normal[:, i, j] = normal[:, j, i] = np.einsum("thw,thw->t", wi, jac[j])
            normal += 1e-9 * np.eye(4)[None] * np.trace(normal, axis1=1, axis2=2)[:, None, None]
            step = np.linalg.solve(normal, rhs[..., None])[..., 0]
            step[:, :2] = np.clip(step[:, :2], -1.0, 1.0)
            d = d + step[:, :2]
            gain = gain + step[:, 2]
            offset = offset + step[:, 3]
    return d - d[0] + shifts[0]


def window_support(footprint: np.ndarray, margin_px: int, border_px: int) -> np.ndarray:
    """The registered pixels of a window: the footprint dilated by ``margin_px``, without the
    ``border_px`` pixels along the window's edges."""
    support = ndimage.binary_dilation(footprint, iterations=margin_px)
    keep = np.zeros_like(support)
    keep[border_px:-border_px, border_px:-border_px] = True
    return support & keep


def static_refined_shifts(
    rois: Sequence[ParticleRoi],
    ods: Sequence[np.ndarray],
    shift: np.ndarray,
    *,
    shape: tuple[int, int],
    track: TrackParams,
) -> np.ndarray:
    """Every particle's shifts refined with the static pattern of its window fitted out
    (:func:`refine_shifts_static`, ``track.static_refine``), on the binned OD frames.

    Parameters
    ----------
    rois : sequence of ParticleRoi
        The particles' frame-0 ROIs (full-frame geometry).
    ods : sequence of numpy.ndarray
        The (binned) OD of every frame.
    shift : numpy.ndarray
        ``(P, N, 2)`` shifts (NaN where not registered); particles with fewer than 4 keep them.
    shape : tuple of int
        Full frame shape.
    track : TrackParams
        Tracking parameters.

    Returns
    -------
    numpy.ndarray
        ``(P, N, 2)`` refined shifts.
    """
    b = edge_binning_of(shape, ods)
    height, width = ods[0].shape
    out = shift.copy()
    for k, roi in enumerate(rois):
        use = np.nonzero(np.all(np.isfinite(shift[k]), axis=1))[0]
        if use.size < 4:
            continue
        d = shift[k, use] / b
        origin, mask = bin_mask(roi.mask, np.array(roi.origin), b)
        margin = 6
        lo = np.floor(d.min(axis=0)).astype(int)
        hi = np.ceil(d.max(axis=0)).astype(int)
        corner = origin + lo - margin
        size = (
            next_fast_len(mask.shape[0] + hi[0] - lo[0] + 2 * margin),
            next_fast_len(mask.shape[1] + hi[1] - lo[1] + 2 * margin),
        )
        window = np.stack([extract_crop(ods[t], corner, size) for t in use.tolist()])
        footprint = np.zeros(size, dtype=bool)
        rows, cols = np.nonzero(mask)
        first = np.round(d[0]).astype(int) + origin - corner
        footprint[rows + first[0], cols + first[1]] = True
        support = window_support(footprint, track.support_px, 3)
        frame_rows = np.arange(size[0])[:, None] + corner[0]
        frame_cols = np.arange(size[1])[None, :] + corner[1]
        support &= (frame_rows >= 2) & (frame_rows < height - 2)
        support &= (frame_cols >= 2) & (frame_cols < width - 2)
        refined = refine_shifts_static(
            window, d, support, rounds=track.static_refine_rounds, ridge=track.static_refine_ridge
        )
        out[k, use] = refined * b
    return out
