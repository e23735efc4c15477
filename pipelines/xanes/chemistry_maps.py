"""Per-pixel and per-particle chemistry of an aligned XANES scan (LCF and clustering maps).

:func:`pipelines.xanes.tracker.align_stack` keeps, per particle, the aligned optical-density
stack of its ROI (``XanesResult.aligned_stacks``) and the particle's mask in frame-0 geometry
(``XanesResult.rois``); the edge-energy map is computed from the same data. The functions here
normalise those per-pixel spectra particle by particle (:func:`analyse_spectra`, the same
windows as the edge-energy map) and fit or cluster them, writing the results into frame-0 maps.
Pixels outside particles, pixels whose edge jump is too small or too noisy, and frames where a
particle was not found give NaN (cluster label -1), never 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipelines.xanes.chemistry import (
    ClusterParams,
    LcfParams,
    cluster_spectra,
    linear_combination_fit,
)
from pipelines.xanes.params import SpectraParams
from pipelines.xanes.spectra import analyse_spectra

__all__ = [
    "AlignedScan",
    "ClusterMaps",
    "LcfMaps",
    "ParticlePixels",
    "cluster_maps",
    "common_energy_window",
    "lcf_maps",
    "particle_pixel_spectra",
]


class AlignedScan(Protocol):
    """What these functions read of an alignment result
    (:class:`pipelines.xanes.tracker.XanesResult` provides it)."""

    labels: np.ndarray  # (H, W) particle k has label k + 1 in frame 0
    energies: np.ndarray  # (N,) eV, frame order
    spectra: np.ndarray  # (P, N) mean normalised absorbance per particle, NaN if not found
    rois: Sequence[Any]  # per particle: .origin (row, col), .mask (h, w) bool in frame 0
    aligned_stacks: Sequence[np.ndarray]  # per particle (N, h, w) aligned OD, NaN frames


@dataclass(frozen=True)
class ParticlePixels:
    """Normalised spectra of one particle's own pixels.

    Attributes
    ----------
    particle : int
        Particle index k (label k + 1).
    rows, cols : numpy.ndarray
        ``(M,)`` frame-0 pixel coordinates.
    normalised : numpy.ndarray
        ``(M, N)`` float64 normalised absorbance in frame order; NaN in frames where the particle
        was not found and for pixels whose edge jump is masked.
    """

    particle: int
    rows: np.ndarray
    cols: np.ndarray
    normalised: np.ndarray


@dataclass(frozen=True)
class LcfMaps:
    """Linear-combination fit of every particle and every pixel.

    Attributes
    ----------
    particle_weights, particle_fractions : numpy.ndarray
        ``(P, R)`` fit of each particle's mean normalised spectrum; NaN when not fitted.
    particle_r_factor : numpy.ndarray
        ``(P,)``.
    fraction_map : numpy.ndarray
        ``(R, H, W)`` float32 fraction of each reference per pixel; NaN where unknown.
    r_factor_map : numpy.ndarray
        ``(H, W)`` float32 R-factor per pixel; NaN where unknown.
    fit_window_ev : tuple of float
        Energy window of the fit (where every reference is defined).
    """

    particle_weights: np.ndarray
    particle_fractions: np.ndarray
    particle_r_factor: np.ndarray
    fraction_map: np.ndarray
    r_factor_map: np.ndarray
    fit_window_ev: tuple[float, float]


@dataclass(frozen=True)
class ClusterMaps:
    """PCA + k-means clusters of the per-pixel spectra.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(H, W)`` int32 cluster per pixel, -1 outside particles and where the spectrum is not
        complete (a frame where its particle was not found, or a masked edge jump). Frames no
        pixel has are left out of the clustering.
    cluster_spectra : numpy.ndarray
        ``(K, N)`` mean normalised spectrum of each cluster, frame order; NaN in frames left
        out.
    cluster_sizes : numpy.ndarray
        ``(K,)`` pixels per cluster.
    explained_variance_ratio : numpy.ndarray
        Share of variance of the kept principal components.
    """

    labels: np.ndarray
    cluster_spectra: np.ndarray
    cluster_sizes: np.ndarray
    explained_variance_ratio: np.ndarray


def particle_pixel_spectra(
    result: AlignedScan, params: SpectraParams = SpectraParams()
) -> Iterator[ParticlePixels]:
    """Normalised per-pixel spectra of each particle, one particle at a time.

    Parameters
    ----------
    result : AlignedScan
        Alignment result with ``aligned_stacks`` (``XanesParams.keep_aligned_stacks``).
    params : SpectraParams
        Normalisation windows (those of the edge-energy map).

    Yields
    ------
    ParticlePixels
        One per particle that has pixels of its own in frame 0.

    Raises
    ------
    ValueError
        When the result holds no aligned stacks.
    """
    n_particles = len(result.rois)
    if n_particles and len(result.aligned_stacks) != n_particles:
        raise ValueError(
            "result.aligned_stacks is empty: align with XanesParams(keep_aligned_stacks=True)"
        )
    energies = np.asarray(result.energies, dtype=np.float64)
    height, width = result.labels.shape
    for k, (roi, stack) in enumerate(zip(result.rois, result.aligned_stacks, strict=True)):
        local_r, local_c = np.nonzero(roi.mask)
        rows, cols = local_r + roi.origin[0], local_c + roi.origin[1]
        inside = (rows >= 0) & (cols >= 0) & (rows < height) & (cols < width)
        own = np.zeros(rows.shape, dtype=bool)
        own[inside] = result.labels[rows[inside], cols[inside]] == k + 1
        if not own.any():
            continue
        normalised = np.full((int(own.sum()), energies.size), np.nan)
        # a frame where the particle was not found is all NaN (as in the tracker's maps)
        found = np.isfinite(stack.reshape(stack.shape[0], -1)[:, 0])
        if found.any():
            pixels = stack[found][:, local_r[own], local_c[own]].T  # (M, n_found)
            sub_e = energies[found]
            try:
                analysis = analyse_spectra(sub_e, pixels, params=params)
            except ValueError:
                analysis = None
            if analysis is not None:
                order = np.argsort(sub_e, kind="stable")
                columns = np.nonzero(found)[0][order]
                values = np.where(analysis.valid[:, None], analysis.normalised, np.nan)
                normalised[:, columns] = values
        yield ParticlePixels(particle=k, rows=rows[own], cols=cols[own], normalised=normalised)


def common_energy_window(
    references: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[float, float]:
    """Energy range where every reference is defined (eV).

    Parameters
    ----------
    references : sequence of (energies, mu)
        Reference spectra.

    Returns
    -------
    tuple of float
        ``(max of the lowest energies, min of the highest energies)``.
    """
    if not references:
        raise ValueError("references: at least one standard is needed")
    lo = max(float(np.min(e)) for e, _ in references)
    hi = min(float(np.max(e)) for e, _ in references)
    if not lo < hi:
        raise ValueError(f"the references share no energy range (from {lo:.1f} to {hi:.1f} eV)")
    return lo, hi


def _fit_rows(
    energies: np.ndarray,
    spectra: np.ndarray,
    references: Sequence[tuple[np.ndarray, np.ndarray]],
    params: LcfParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LCF of ``(M, N)`` spectra that may miss frames: each group of rows with the same finite
    frames is fitted on those frames; NaN where too few remain inside the window."""
    n_refs = len(references)
    weights = np.full((spectra.shape[0], n_refs), np.nan)
    fractions = np.full((spectra.shape[0], n_refs), np.nan)
    r_factor = np.full(spectra.shape[0], np.nan)
    finite = np.isfinite(spectra)
    patterns, inverse = np.unique(finite, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        if not pattern.any():
            continue
        rows = np.nonzero(inverse.ravel() == p)[0]
        try:
            fit = linear_combination_fit(
                energies[pattern], spectra[np.ix_(rows, pattern)], list(references), params=params
            )
        except ValueError:
            continue
        weights[rows], fractions[rows], r_factor[rows] = fit.weights, fit.fractions, fit.r_factor
    return weights, fractions, r_factor


def lcf_maps(
    result: AlignedScan,
    references: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    spectra_params: SpectraParams = SpectraParams(),
    sum_to_one: bool = False,
    pixels: Sequence[ParticlePixels] | None = None,
) -> LcfMaps:
    """Fit every particle's mean spectrum and every pixel's spectrum against references.

    Parameters
    ----------
    result : AlignedScan
        Alignment result with aligned stacks.
    references : sequence of (energies, normalised mu)
        Normalised standards (same normalisation as the sample spectra), 1 to 8 of them.
    spectra_params : SpectraParams
        Normalisation of the per-pixel spectra.
    sum_to_one : bool
        Constrain the weights to sum to one.
    pixels : sequence of ParticlePixels, optional
        :func:`particle_pixel_spectra` already computed (e.g. shared with
        :func:`cluster_maps`); default: computed here one particle at a time.

    Returns
    -------
    LcfMaps
        The fit uses the scan energies inside :func:`common_energy_window`; a spectrum with fewer
        than ``R + 1`` finite energies there gets NaN.
    """
    window = common_energy_window(references)
    params = LcfParams(fit_window_ev=window, sum_to_one=sum_to_one)
    energies = np.asarray(result.energies, dtype=np.float64)
    n_refs = len(references)
    p_weights, p_fractions, p_r = _fit_rows(
        energies, np.asarray(result.spectra, dtype=np.float64), references, params
    )
    height, width = result.labels.shape
    fraction_map = np.full((n_refs, height, width), np.nan, dtype=np.float32)
    r_map = np.full((height, width), np.nan, dtype=np.float32)
    source = pixels if pixels is not None else particle_pixel_spectra(result, spectra_params)
    for pix in source:
        _, fractions, r_factor = _fit_rows(energies, pix.normalised, references, params)
        fraction_map[:, pix.rows, pix.cols] = fractions.T
        r_map[pix.rows, pix.cols] = r_factor
    return LcfMaps(
        particle_weights=p_weights,
        particle_fractions=p_fractions,
        particle_r_factor=p_r,
        fraction_map=fraction_map,
        r_factor_map=r_map,
        fit_window_ev=window,
    )


def cluster_maps(
    result: AlignedScan,
    *,
    params: ClusterParams = ClusterParams(),
    spectra_params: SpectraParams = SpectraParams(),
    pixels: Sequence[ParticlePixels] | None = None,
) -> ClusterMaps:
    """Cluster the per-pixel normalised spectra of all particles (PCA + k-means).

    Parameters
    ----------
    result : AlignedScan
        Alignment result with aligned stacks.
    params : ClusterParams
        Components, clusters, seed.
    spectra_params : SpectraParams
        Normalisation of the per-pixel spectra.
    pixels : sequence of ParticlePixels, optional
        :func:`particle_pixel_spectra` already computed.

    Returns
    -------
    ClusterMaps

    Raises
    ------
    ValueError
        When fewer complete spectra than clusters exist.
    """
    parts = (
        list(pixels) if pixels is not None else list(particle_pixel_spectra(result, spectra_params))
    )
    height, width = result.labels.shape
    n_energy = np.asarray(result.energies).size
    if parts:
        spectra = np.concatenate([p.normalised for p in parts])
        rows = np.concatenate([p.rows for p in parts])
        cols = np.concatenate([p.cols for p in parts])
    else:
        spectra, rows, cols = np.empty((0, n_energy)), np.empty(0, int), np.empty(0, int)
    del parts
    # a frame no pixel has (no particle found there) is left out rather than every spectrum
    keep = np.isfinite(spectra).any(axis=0)
    n_components = min(params.n_components, int(keep.sum()))
    clusters = cluster_spectra(
        spectra[:, keep], params=params.model_copy(update={"n_components": max(1, n_components)})
    )
    labels = np.full((height, width), -1, dtype=np.int32)
    labels[rows, cols] = clusters.labels
    means = np.full((params.n_clusters, n_energy), np.nan)
    means[:, keep] = clusters.cluster_spectra
    return ClusterMaps(
        labels=labels,
        cluster_spectra=means,
        cluster_sizes=clusters.cluster_sizes,
        explained_variance_ratio=clusters.explained_variance_ratio,
    )
