"""Optimal assignment of particles between frames or scans (Hungarian algorithm).

The cost of pairing reference particle ``i`` with candidate ``j`` is its centre distance in
units of the gate plus ``ssim_weight * (1 - SSIM)`` of their ROIs. Pairs farther than the gate
(or with areas too different) are forbidden, so a particle that left the field or vanished in
a faint frame stays unmatched instead of stealing a neighbour's identity, and a new particle is
reported as unmatched candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipelines.xanes.params import MatchParams
from pipelines.xanes.register import roi_ssim

__all__ = ["Matching", "assignment_from_cost", "match_labels", "match_particles"]

_FORBIDDEN = 1e6


@dataclass(frozen=True)
class Matching:
    """Result of a particle matching.

    Attributes
    ----------
    assignment : numpy.ndarray
        ``(P_ref,)`` int64: index of the candidate matched to each reference particle, -1 if
        none (left the field, vanished or merged).
    cost : numpy.ndarray
        ``(P_ref,)`` float64 cost of each match, NaN when unmatched.
    new : numpy.ndarray
        Indices of candidates matched to no reference particle (entering particles).
    """

    assignment: np.ndarray
    cost: np.ndarray
    new: np.ndarray


def assignment_from_cost(cost: np.ndarray, *, forbidden: float = _FORBIDDEN) -> Matching:
    """Minimum-cost one-to-one assignment; entries ``>= forbidden`` never match.

    Parameters
    ----------
    cost : numpy.ndarray
        ``(P_ref, P_cand)`` cost matrix, ``inf`` or ``>= forbidden`` where pairing is not allowed.
    forbidden : float
        Cost from which a pair is forbidden.

    Returns
    -------
    Matching
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {cost.shape}")
    n_ref, n_cand = cost.shape
    assignment = np.full(n_ref, -1, dtype=np.int64)
    match_cost = np.full(n_ref, np.nan)
    if n_ref and n_cand:
        finite = np.where(np.isfinite(cost) & (cost < forbidden), cost, forbidden)
        rows, cols = linear_sum_assignment(finite)
        ok = finite[rows, cols] < forbidden
        assignment[rows[ok]] = cols[ok]
        match_cost[rows[ok]] = finite[rows[ok], cols[ok]]
    used = np.zeros(n_cand, dtype=bool)
    used[assignment[assignment >= 0]] = True
    return Matching(assignment=assignment, cost=match_cost, new=np.nonzero(~used)[0])


def match_particles(
    ref_centres: np.ndarray,
    centres: np.ndarray,
    *,
    ref_rois: list[np.ndarray] | None = None,
    rois: list[np.ndarray] | None = None,
    ref_areas: np.ndarray | None = None,
    areas: np.ndarray | None = None,
    params: MatchParams = MatchParams(),
) -> Matching:
    """Match reference particles to candidate detections.

    Parameters
    ----------
    ref_centres : numpy.ndarray
        ``(P_ref, 2)`` reference centres (predicted positions when tracking); NaN rows never match.
    centres : numpy.ndarray
        ``(P_cand, 2)`` candidate centres.
    ref_rois, rois : list of numpy.ndarray, optional
        ROIs of the particles; pairs of equal shape add ``ssim_weight * (1 - SSIM)`` to the cost.
    ref_areas, areas : numpy.ndarray, optional
        Particle areas; pairs whose area ratio exceeds ``max_area_ratio`` are forbidden.
    params : MatchParams
        Gate and weights.

    Returns
    -------
    Matching
    """
    ref_centres = np.asarray(ref_centres, dtype=np.float64).reshape(-1, 2)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if (ref_rois is None) != (rois is None):
        raise ValueError("ref_rois and rois must be given together")
    if ref_rois is not None and rois is not None:
        if len(ref_rois) != len(ref_centres) or len(rois) != len(centres):
            raise ValueError("ref_rois/rois must have one ROI per centre")
    if (ref_areas is None) != (areas is None):
        raise ValueError("ref_areas and areas must be given together")
    dist = np.linalg.norm(ref_centres[:, None, :] - centres[None, :, :], axis=-1)
    cost = dist / params.max_distance_px
    cost[~np.isfinite(cost) | (dist > params.max_distance_px)] = _FORBIDDEN
    if ref_areas is not None and areas is not None:
        ra = np.asarray(ref_areas, dtype=np.float64)[:, None]
        ca = np.asarray(areas, dtype=np.float64)[None, :]
        ratio = np.maximum(ra, ca) / np.maximum(np.minimum(ra, ca), 1e-12)
        cost[ratio > params.max_area_ratio] = _FORBIDDEN
    if ref_rois is not None and rois is not None and params.ssim_weight > 0:
        for i, j in zip(*np.nonzero(cost < _FORBIDDEN), strict=True):
            a, b = ref_rois[i], rois[j]
            if a.shape == b.shape:
                cost[i, j] += params.ssim_weight * (1.0 - roi_ssim(a, b))
    return assignment_from_cost(cost)


def _crop_centred(image: np.ndarray, centre: np.ndarray, half: int) -> np.ndarray:
    rows = np.clip(np.arange(-half, half + 1) + int(round(centre[0])), 0, image.shape[0] - 1)
    cols = np.clip(np.arange(-half, half + 1) + int(round(centre[1])), 0, image.shape[1] - 1)
    return image[np.ix_(rows, cols)]


def match_labels(
    ref_labels: np.ndarray,
    ref_image: np.ndarray,
    labels: np.ndarray,
    image: np.ndarray,
    *,
    expected_shift: tuple[float, float] = (0.0, 0.0),
    params: MatchParams = MatchParams(),
) -> Matching:
    """Match the particles of two label images (e.g. frame 0 of two scans).

    Centres are moment centres of the labels; the cost adds ``ssim_weight * (1 - SSIM)`` of
    square ROIs (side about twice the reference particle's equivalent diameter) cut from the
    two images around the two centres.

    Parameters
    ----------
    ref_labels, labels : numpy.ndarray
        ``(H, W)`` integer labels (particle k -> k + 1) of the reference and the new image.
    ref_image, image : numpy.ndarray
        ``(H, W)`` images the labels were found in (e.g. background-free OD).
    expected_shift : tuple of float
        Expected displacement (row, col) of the new image (e.g. the last global drift).
    params : MatchParams
        Gate and weights.

    Returns
    -------
    Matching
        ``assignment[k]`` is the 0-based index (label - 1) in ``labels`` of reference particle k.
    """
    ref_labels = np.asarray(ref_labels)
    labels = np.asarray(labels)
    for name, a, b in (("ref_image", ref_image, ref_labels), ("image", image, labels)):
        if np.shape(a) != b.shape:
            raise ValueError(f"{name} shape {np.shape(a)} differs from its labels {b.shape}")
    ref_c, ref_a = _centres_areas(ref_labels)
    new_c, new_a = _centres_areas(labels)
    cost_params = params.model_copy(update={"ssim_weight": 0.0})
    base = match_particles(
        ref_c + np.asarray(expected_shift, dtype=np.float64),
        new_c,
        ref_areas=ref_a,
        areas=new_a,
        params=cost_params,
    )
    if params.ssim_weight == 0 or ref_c.size == 0 or new_c.size == 0:
        return base
    shifted = ref_c + np.asarray(expected_shift, dtype=np.float64)
    dist = np.linalg.norm(shifted[:, None] - new_c[None], axis=-1)
    cost = np.where(dist <= params.max_distance_px, dist / params.max_distance_px, _FORBIDDEN)
    ratio = np.maximum(ref_a[:, None], new_a[None]) / np.maximum(
        np.minimum(ref_a[:, None], new_a[None]), 1e-12
    )
    cost[ratio > params.max_area_ratio] = _FORBIDDEN
    for i, j in zip(*np.nonzero(cost < _FORBIDDEN), strict=True):
        half = int(np.ceil(2 * np.sqrt(ref_a[i] / np.pi))) + 2
        a = _crop_centred(np.asarray(ref_image, dtype=np.float64), ref_c[i], half)
        b = _crop_centred(np.asarray(image, dtype=np.float64), new_c[j], half)
        cost[i, j] += params.ssim_weight * (1.0 - roi_ssim(a, b))
    return assignment_from_cost(cost)


def _centres_areas(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    sum_r = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:]
    sum_c = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = np.column_stack([sum_r / areas, sum_c / areas])
    return centres, areas
