"""Alignment quality of a XANES scan from the per-particle similarity scores (SSIM).

The tracking seed paper judges an alignment by the mean and variance of the SSIM between a
particle's aligned ROIs; this summarises the tracker's ``ssim`` (P, N) array per particle and
per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SsimSummary:
    """SSIM per particle and per frame (NaN scores, i.e. not found, are left out).

    Attributes
    ----------
    particle_mean, particle_std, particle_min : numpy.ndarray
        ``(P,)`` over the frames where the particle was found; NaN when never found.
    particle_low_fraction : numpy.ndarray
        ``(P,)`` share of those frames scoring below ``low``; NaN when never found.
    particle_found : numpy.ndarray
        ``(P,)`` int frames with a score.
    frame_mean : numpy.ndarray
        ``(N,)`` mean over the particles found in each frame; NaN when none.
    overall_mean, overall_median : float
        Over every score; NaN when there is none.
    low : float
        Threshold of a poorly aligned frame.
    """

    particle_mean: np.ndarray
    particle_std: np.ndarray
    particle_min: np.ndarray
    particle_low_fraction: np.ndarray
    particle_found: np.ndarray
    frame_mean: np.ndarray
    overall_mean: float
    overall_median: float
    low: float


def _masked_mean(values: np.ndarray, ok: np.ndarray, axis: int) -> np.ndarray:
    count = ok.sum(axis=axis)
    total = np.where(ok, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def ssim_summary(ssim: np.ndarray, *, low: float = 0.5) -> SsimSummary:
    """Summarise the similarity scores of a scan.

    Parameters
    ----------
    ssim : numpy.ndarray
        ``(P, N)`` score of particle p in frame n, NaN where it was not found.
    low : float, optional
        Scores below this count as poorly aligned.

    Returns
    -------
    SsimSummary
    """
    scores = np.asarray(ssim, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"ssim must be 2-D (particles, frames), got shape {scores.shape}")
    if not np.isfinite(low):
        raise ValueError(f"low must be finite, got {low}")
    ok = np.isfinite(scores)
    mean = _masked_mean(scores, ok, axis=1)
    spread = np.sqrt(_masked_mean((scores - mean[:, None]) ** 2, ok, axis=1))
    minimum = np.where(ok.any(axis=1), np.where(ok, scores, np.inf).min(axis=1), np.nan)
    low_fraction = _masked_mean((scores < low).astype(np.float64), ok, axis=1)
    every = scores[ok]
    return SsimSummary(
        particle_mean=mean,
        particle_std=spread,
        particle_min=minimum,
        particle_low_fraction=low_fraction,
        particle_found=ok.sum(axis=1).astype(np.int64),
        frame_mean=_masked_mean(scores, ok, axis=0),
        overall_mean=float(every.mean()) if every.size else float("nan"),
        overall_median=float(np.median(every)) if every.size else float("nan"),
        low=float(low),
    )
