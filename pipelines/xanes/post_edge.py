"""Post-edge second pass of the XANES tracker: is the background still, and re-anchored shifts.

On an instrument whose sample drifts under a still illumination (zone-plate rings, condenser
streaks, a flat field that does not remove them), the rings stay in the detector frame. Below
the absorption edge a particle is faint against them: its outline template, a picture of
frame 0, carries the rings, and every registration against it is pulled towards zero shift
(0.5-0.7 of the true shift on ``synthetic.txm_dense``); the error then carries into the
post-edge frames through the template renewal. Past the edge the particle is 2-4 times
clearer: a template taken there, against which every frame of the scan (frame 0 included) is
registered again, re-anchored at frame 0, is pulled much less.

Where the background moves with the sample (no still pattern) the frame-0 template is the
better reference, so the pass is applied only when :func:`background_stays_still` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["BackgroundMotion", "background_stays_still", "reanchored_shifts"]


@dataclass(frozen=True)
class BackgroundMotion:
    """How the background away from the particles moved between two frames.

    Attributes
    ----------
    still_corr : float
        Correlation of the band-passed background of the two frames at the same detector
        pixels (NaN when too few pixels).
    moving_corr : float
        The same where the drift took them (the second frame sampled at ``x + drift``).
    drift : numpy.ndarray
        ``(2,)`` drift (px) of the second frame against the first.
    n_pixels : int
        Background pixels compared.
    """

    still_corr: float
    moving_corr: float
    drift: np.ndarray
    n_pixels: int


def _band_pass(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    return ndimage.gaussian_filter(image, 1.0) - ndimage.gaussian_filter(image, 4.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / denominator) if denominator > 0 else float("nan")


def background_stays_still(
    first: np.ndarray,
    second: np.ndarray,
    particles: np.ndarray,
    drift: np.ndarray,
    *,
    margin_px: int = 12,
) -> BackgroundMotion:
    """Compare a frame's background with another frame's, still and moved by the drift.

    Both frames are band-passed (difference of Gaussians, sd 1 and 4 px: rings and streaks,
    not the illumination gradient); the pixels farther than ``margin_px`` from every particle
    in both frames (and from the frame border) are compared at the same detector place and at
    the place the drift moved them to.

    Parameters
    ----------
    first, second : numpy.ndarray
        ``(H, W)`` optical density of two frames of a scan.
    particles : numpy.ndarray
        ``(H, W)`` bool, the particles in ``first``'s geometry.
    drift : numpy.ndarray
        ``(2,)`` shift (px) of the sample in ``second`` against ``first``.
    margin_px : int
        Distance kept from particles and from the frame border.

    Returns
    -------
    BackgroundMotion
    """
    first = np.asarray(first)
    second = np.asarray(second)
    particles = np.asarray(particles, dtype=bool)
    if first.ndim != 2 or first.shape != second.shape or particles.shape != first.shape:
        raise ValueError(
            f"first {first.shape}, second {second.shape} and particles {particles.shape} "
            "must be one (H, W) shape"
        )
    drift = np.asarray(drift, dtype=np.float64)
    if drift.shape != (2,) or not np.all(np.isfinite(drift)):
        raise ValueError(f"drift must be 2 finite numbers, got {drift}")
    if margin_px < 0:
        raise ValueError(f"margin_px must be >= 0, got {margin_px}")
    far = ~ndimage.binary_dilation(particles, iterations=margin_px) if margin_px else ~particles
    step = np.round(drift).astype(int)
    # a background pixel x of the first frame is at x + drift in the second frame when it moves
    # with the sample; x - drift in the first frame's geometry must be away from particles too
    # for the still comparison
    usable = far & ndimage.shift(far, step, order=0, cval=False)
    edge = margin_px + int(np.max(np.abs(step)))
    usable[:edge] = usable[-edge:] = False
    usable[:, :edge] = usable[:, -edge:] = False
    n = int(np.count_nonzero(usable))
    if n < 64:
        return BackgroundMotion(float("nan"), float("nan"), drift, n)
    a = _band_pass(first)
    b = _band_pass(second)
    moved = ndimage.shift(b, -drift, order=1, mode="nearest")
    return BackgroundMotion(
        _correlation(a[usable], b[usable]), _correlation(a[usable], moved[usable]), drift, n
    )


def reanchored_shifts(registered: np.ndarray) -> np.ndarray | None:
    """Shifts against a later template, re-anchored so that frame 0 is at zero shift.

    Parameters
    ----------
    registered : numpy.ndarray
        ``(N, 2)`` shifts of a particle in every frame against a template of a later frame
        (in the reference geometry of that template; NaN rows where not registered).

    Returns
    -------
    numpy.ndarray or None
        ``(N, 2)`` shifts relative to frame 0 (NaN where not registered); None when frame 0
        was not registered (nothing to anchor on).
    """
    registered = np.asarray(registered, dtype=np.float64)
    if registered.ndim != 2 or registered.shape[1] != 2 or registered.shape[0] == 0:
        raise ValueError(f"registered must have shape (N, 2), got {registered.shape}")
    if not np.all(np.isfinite(registered[0])):
        return None
    return registered - registered[0]
