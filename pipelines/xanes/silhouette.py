"""Silhouette registration of one particle (``track.registration="silhouette"``).

The method before the outline registration: a particle's candidates in its search window are
soft masks (:meth:`pipelines.xanes.window.ParticleWindow.candidates`); the one matched to it
gives a moment estimate of the shift, refined by registering the silhouette to the particle's
running-mean template on a fixed support around its footprint.
"""

from __future__ import annotations

import numpy as np

from pipelines.xanes.kernels import extract_crop
from pipelines.xanes.params import TrackParams
from pipelines.xanes.register import (
    PhaseCorrelator,
    centre_of_mass,
    shift_image,
    ssim_from_moments,
)
from pipelines.xanes.window import Candidate, ParticleWindow

__all__ = ["frame0_silhouette", "silhouette_shift"]


def frame0_silhouette(
    particle: ParticleWindow, od: np.ndarray, threshold_fraction: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """A particle's frame-0 silhouette (its template's first term) and the centre of its
    candidate nearest its label's centre (None when it has no candidate: zero template).

    The reference centre uses the same estimator (soft-mask moments) as later frames.
    """
    origin = np.array(particle.roi.origin)
    w_origin, window = particle.search_window(od, origin)
    candidates = particle.candidates(window, w_origin, threshold_fraction)
    if not candidates:
        return np.zeros(particle.roi.shape, dtype=np.float32), None
    best = min(candidates, key=lambda c: float(np.linalg.norm(c.com - particle.com0)))
    return extract_crop(best.silhouette, origin - best.origin, particle.roi.shape), best.com


def silhouette_shift(
    particle: ParticleWindow,
    candidate: Candidate,
    od: np.ndarray,
    predicted: np.ndarray,
    *,
    track: TrackParams,
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Sub-pixel shift of a particle from its matched candidate, its SSIM and aligned ROI.

    The moment estimate is refined by registering the particle's silhouette (soft mask,
    insensitive to the chemistry-dependent contrast inside the particle) to its template on
    a fixed support around the reference footprint: Gauss-Newton on the squared difference
    (``refine_method="gradient"``) or cross/phase correlation (``"correlation"``). When the
    matched component is much larger than the particle (merged with a neighbour), the
    moments are taken inside the support only. With ``track.template_update`` the aligned
    silhouette is added to the particle's template.

    Returns
    -------
    tuple or None
        ``(2,)`` shift, SSIM of the silhouette against the template, and the particle's
        background-free OD ROI aligned to frame 0 (float32); None when the estimates disagree.
    """
    template = particle.template()
    template_centred, template_mean, template_var = particle.template_stats()
    ratio = candidate.area / max(particle.area, 1.0)
    if 0.67 <= ratio <= 1.5:
        coarse = candidate.com - particle.com0
    else:
        coarse = np.asarray(predicted, dtype=np.float64)
        support_com = centre_of_mass(template * particle.support)
        for _ in range(3):
            base = np.round(coarse).astype(int)
            moving = extract_crop(
                candidate.silhouette,
                np.array(particle.roi.origin) + base - candidate.origin,
                particle.roi.shape,
            )
            coarse = base + centre_of_mass(moving * particle.support) - support_com
        if not np.all(np.isfinite(coarse)):
            return None
    base = np.round(coarse).astype(int)
    moving = extract_crop(
        candidate.silhouette,
        np.array(particle.roi.origin) + base - candidate.origin,
        particle.roi.shape,
    )
    refined: np.ndarray | None
    if track.refine_method == "gradient":
        refined = particle.gradient_model().displacement(
            moving, coarse - base, track.refine_iterations
        )
    else:
        correlator = PhaseCorrelator(template, upsample=track.upsample, whitening=track.whitening)
        refined = correlator.displacement(moving)[0]
    if refined is None or not np.all(
        np.abs(base + refined - coarse) <= track.max_refine_disagreement_px
    ):
        return None
    shift = (1.0 - track.refine_weight) * coarse + track.refine_weight * (base + refined)
    base = np.round(shift).astype(int)
    residual = shift - base
    origin = np.array(particle.roi.origin) + base
    silhouette = extract_crop(candidate.silhouette, origin - candidate.origin, particle.roi.shape)
    if track.template_update:
        silhouette = shift_image(silhouette, -residual).astype(np.float32)
        particle.template_sum += silhouette
        particle.template_count += 1
    # roi_ssim(silhouette, template, data_range=1.0) with the template's moments cached
    values = np.asarray(silhouette, dtype=np.float64)
    mean = values.mean()
    centred = values - mean
    score = ssim_from_moments(
        mean,
        template_mean,
        float((centred * centred).mean()),
        template_var,
        float((centred * template_centred).mean()),
        data_range=1.0,
    )
    crop = np.asarray(extract_crop(od, origin, particle.roi.shape), dtype=np.float32)
    crop = crop - extract_crop(candidate.background, origin - candidate.origin, crop.shape)
    return shift, score, shift_image(crop, -residual).astype(np.float32, copy=False)
