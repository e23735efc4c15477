"""XANES chemistry beyond the edge energy: linear-combination fitting and spectral clustering.

Linear-combination fitting (LCF) writes every spectrum as a non-negative mixture of reference
spectra (standards the user measured, e.g. pristine and charged cathode), as Athena/Larch and
TXM-Sandbox do; its quality is the R-factor ``sum((mu - fit)^2) / sum(mu^2)``. Clustering
projects the spectra on their first principal components and groups them by k-means, as
XMIDAS and xanespy do, to find chemically distinct domains without references.

Spectra are arrays whose last axis is energy, so one spectrum, one per particle and one per
pixel go through the same functions. Spectra that are not finite get NaN results (and the
cluster label -1), never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

__all__ = [
    "ClusterParams",
    "LcfParams",
    "LinearCombinationFit",
    "SpectralClusters",
    "cluster_spectra",
    "linear_combination_fit",
]

MAX_REFERENCES = 8


class LcfParams(BaseModel):
    """Parameters of :func:`linear_combination_fit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fit_window_ev: tuple[float, float] | None = Field(
        default=None,
        description="energy window (eV) of the fit; None = every energy of the spectra",
    )
    sum_to_one: bool = Field(
        default=False,
        description="constrain the weights to sum to 1 (normalised spectra of a closed system)",
    )


class ClusterParams(BaseModel):
    """Parameters of :func:`cluster_spectra`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_components: PositiveInt = Field(default=3, description="principal components kept")
    n_clusters: PositiveInt = Field(default=3, description="k-means clusters")
    max_iterations: PositiveInt = Field(default=100)
    seed: int = Field(default=0, description="seed of the k-means++ initialisation")


@dataclass(frozen=True)
class LinearCombinationFit:
    """Result of :func:`linear_combination_fit` (leading shape of the input).

    Attributes
    ----------
    weights : numpy.ndarray
        ``(..., R)`` non-negative weight of each reference; NaN where the spectrum is not finite.
    fractions : numpy.ndarray
        ``(..., R)`` weights divided by their sum (the phase fractions); NaN where the sum is 0.
    r_factor : numpy.ndarray
        ``sum((mu - fit)^2) / sum(mu^2)`` over the fit window; NaN where not finite.
    fitted : numpy.ndarray
        ``(..., N_window)`` the fitted spectra on the window energies.
    energies : numpy.ndarray
        ``(N_window,)`` energies of the fit (eV), ascending.
    """

    weights: np.ndarray
    fractions: np.ndarray
    r_factor: np.ndarray
    fitted: np.ndarray
    energies: np.ndarray


@dataclass(frozen=True)
class SpectralClusters:
    """Result of :func:`cluster_spectra` (leading shape of the input).

    Attributes
    ----------
    labels : numpy.ndarray
        int32 cluster of each spectrum, ``-1`` where the spectrum is not finite.
    cluster_spectra : numpy.ndarray
        ``(K, N)`` mean spectrum of each cluster (NaN for an empty cluster).
    cluster_sizes : numpy.ndarray
        ``(K,)`` number of spectra per cluster.
    explained_variance_ratio : numpy.ndarray
        ``(n_components,)`` share of the variance carried by each kept component.
    components : numpy.ndarray
        ``(n_components, N)`` principal axes.
    scores : numpy.ndarray
        ``(..., n_components)`` projection of each spectrum; NaN where not finite.
    """

    labels: np.ndarray
    cluster_spectra: np.ndarray
    cluster_sizes: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    scores: np.ndarray


def _references_on(
    energies: np.ndarray, references: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Interpolate ``(energy, mu)`` references onto ``energies``: ``(R, N)``."""
    rows = []
    for k, (ref_e, ref_mu) in enumerate(references):
        ref_e = np.asarray(ref_e, dtype=np.float64)
        ref_mu = np.asarray(ref_mu, dtype=np.float64)
        if ref_e.ndim != 1 or ref_e.shape != ref_mu.shape or ref_e.size < 2:
            raise ValueError(
                f"references[{k}] must be two 1-D arrays of equal length >= 2, "
                f"got shapes {ref_e.shape} and {ref_mu.shape}"
            )
        if not (np.all(np.isfinite(ref_e)) and np.all(np.isfinite(ref_mu))):
            raise ValueError(f"references[{k}] holds NaN or infinite values")
        order = np.argsort(ref_e, kind="stable")
        ref_e, ref_mu = ref_e[order], ref_mu[order]
        if energies[0] < ref_e[0] or energies[-1] > ref_e[-1]:
            raise ValueError(
                f"references[{k}] covers {ref_e[0]:.1f}-{ref_e[-1]:.1f} eV, the fit needs "
                f"{energies[0]:.1f}-{energies[-1]:.1f} eV (narrow fit_window_ev or extend it)"
            )
        rows.append(np.interp(energies, ref_e, ref_mu))
    return np.stack(rows)


def _subset_solutions(
    basis: np.ndarray, spectra: np.ndarray, sum_to_one: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Exact non-negative least squares for a few references, all spectra at once.

    The NNLS optimum is the least-squares solution on its own support, which is feasible; every
    feasible subset solution is a feasible point of the whole problem. So the feasible subset
    solution of least residual is the optimum. ``2^R - 1`` subsets, each one matrix product.
    """
    n_refs = basis.shape[0]
    best_w = np.full((spectra.shape[0], n_refs), np.nan)
    best_res = np.full(spectra.shape[0], np.inf)
    for size in range(1, n_refs + 1):
        for subset in combinations(range(n_refs), size):
            a = basis[list(subset)].T  # (N, s)
            gram = a.T @ a
            if np.linalg.matrix_rank(gram) < size:
                continue
            inv = np.linalg.inv(gram)
            w = spectra @ a @ inv  # unconstrained LS, (M, s)
            if sum_to_one:
                ones = np.ones(size)
                # Lagrange correction onto sum(w) = 1.
                lam = (1.0 - w.sum(axis=1)) / (ones @ inv @ ones)
                w = w + lam[:, None] * (inv @ ones)[None, :]
            feasible = np.all(w >= -1e-12, axis=1)
            res = ((spectra - w @ a.T) ** 2).sum(axis=1)
            better = feasible & (res < best_res)
            if better.any():
                full = np.zeros((int(better.sum()), n_refs))
                full[:, list(subset)] = np.clip(w[better], 0.0, None)
                best_w[better] = full
                best_res[better] = res[better]
    return best_w, best_res


def linear_combination_fit(
    energies: np.ndarray,
    spectra: np.ndarray,
    references: list[tuple[np.ndarray, np.ndarray]],
    *,
    params: LcfParams = LcfParams(),
) -> LinearCombinationFit:
    """Fit spectra as non-negative linear combinations of reference spectra.

    Parameters
    ----------
    energies : numpy.ndarray
        ``(N,)`` energies (eV) of the spectra, any order.
    spectra : numpy.ndarray
        ``(..., N)`` spectra on the same footing as the references (usually both normalised
        with :func:`pipelines.xanes.spectra.analyse_spectra`).
    references : list of (energies, mu) pairs
        Two to eight standards on their own energy grids; interpolated linearly onto the fit
        energies, which they must cover.
    params : LcfParams
        Fit window and the optional sum-to-one constraint.

    Returns
    -------
    LinearCombinationFit
    """
    energies = np.asarray(energies, dtype=np.float64)
    spectra = np.asarray(spectra, dtype=np.float64)
    if energies.ndim != 1 or energies.size < 2:
        raise ValueError(f"energies must be 1-D with >= 2 values, got shape {energies.shape}")
    if spectra.shape[-1:] != energies.shape:
        raise ValueError(
            f"spectra last axis {spectra.shape[-1:]} must match energies {energies.shape}"
        )
    if not 1 <= len(references) <= MAX_REFERENCES:
        raise ValueError(f"references: 1 to {MAX_REFERENCES} standards, got {len(references)}")
    order = np.argsort(energies, kind="stable")
    energies, spectra = energies[order], spectra[..., order]
    if params.fit_window_ev is not None:
        lo, hi = params.fit_window_ev
        keep = (energies >= lo) & (energies <= hi)
        if keep.sum() < len(references) + 1:
            raise ValueError(
                f"fit_window_ev={params.fit_window_ev} holds {int(keep.sum())} energies; "
                f"at least {len(references) + 1} needed for {len(references)} references"
            )
        energies, spectra = energies[keep], spectra[..., keep]
    basis = _references_on(energies, references)
    lead = spectra.shape[:-1]
    flat = spectra.reshape(-1, energies.size)
    finite = np.all(np.isfinite(flat), axis=1)
    weights = np.full((flat.shape[0], basis.shape[0]), np.nan)
    r_factor = np.full(flat.shape[0], np.nan)
    if finite.any():
        w, res = _subset_solutions(basis, flat[finite], params.sum_to_one)
        weights[finite] = w
        norm = (flat[finite] ** 2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r_factor[finite] = np.where(norm > 0, res / norm, np.nan)
    fitted = weights @ basis
    total = weights.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        fractions = np.where(total > 0, weights / total, np.nan)
    n_refs = basis.shape[0]
    return LinearCombinationFit(
        weights=weights.reshape(*lead, n_refs),
        fractions=fractions.reshape(*lead, n_refs),
        r_factor=r_factor.reshape(lead),
        fitted=fitted.reshape(*lead, energies.size),
        energies=energies,
    )


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [points[rng.integers(points.shape[0])]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        pick = (
            rng.integers(points.shape[0])
            if total <= 0
            else rng.choice(points.shape[0], p=d2 / total)
        )
        centres.append(points[pick])
    return np.asarray(centres)


def _kmeans(
    points: np.ndarray, k: int, max_iterations: int, rng: np.random.Generator
) -> np.ndarray:
    centres = _kmeans_plus_plus(points, k, rng)
    labels = np.full(points.shape[0], -1)
    for _ in range(max_iterations):
        d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
        new = np.argmin(d2, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = labels == c
            if members.any():
                centres[c] = points[members].mean(axis=0)
    return labels


def cluster_spectra(
    spectra: np.ndarray, *, params: ClusterParams = ClusterParams()
) -> SpectralClusters:
    """Group spectra by k-means on their first principal components.

    Parameters
    ----------
    spectra : numpy.ndarray
        ``(..., N)`` spectra (usually normalised), e.g. one per pixel of a XANES stack.
    params : ClusterParams
        Number of components and clusters, iterations and seed (results are reproducible).

    Returns
    -------
    SpectralClusters
        Clusters are numbered by ascending mean of their spectra's first principal score, so
        the numbering does not depend on the seed when the clusters are well separated.
    """
    spectra = np.asarray(spectra, dtype=np.float64)
    if spectra.ndim < 1 or spectra.shape[-1] < 2:
        raise ValueError(f"spectra need an energy axis of >= 2 values, got shape {spectra.shape}")
    lead = spectra.shape[:-1]
    n_energy = spectra.shape[-1]
    flat = spectra.reshape(-1, n_energy)
    finite = np.all(np.isfinite(flat), axis=1)
    n_valid = int(finite.sum())
    k, n_comp = params.n_clusters, min(params.n_components, n_energy)
    if n_valid < k:
        raise ValueError(f"{n_valid} finite spectra cannot form n_clusters={k} clusters")
    data = flat[finite]
    mean = data.mean(axis=0)
    _, sing, vt = np.linalg.svd(data - mean, full_matrices=False)
    n_comp = min(n_comp, vt.shape[0])
    components = vt[:n_comp]
    variance = sing**2
    total_variance = variance.sum()
    ratio = variance[:n_comp] / total_variance if total_variance > 0 else np.zeros(n_comp)
    scores_valid = (data - mean) @ components.T
    raw = _kmeans(scores_valid, k, params.max_iterations, np.random.default_rng(params.seed))
    first = np.array(
        [scores_valid[raw == c, 0].mean() if np.any(raw == c) else np.inf for c in range(k)]
    )
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(k)
    labels = np.full(flat.shape[0], -1, dtype=np.int32)
    labels[finite] = rank[raw]
    sizes = np.bincount(labels[finite], minlength=k)
    means = np.full((k, n_energy), np.nan)
    for c in range(k):
        if sizes[c]:
            means[c] = data[labels[finite] == c].mean(axis=0)
    scores = np.full((flat.shape[0], n_comp), np.nan)
    scores[finite] = scores_valid
    return SpectralClusters(
        labels=labels.reshape(lead),
        cluster_spectra=means,
        cluster_sizes=sizes,
        explained_variance_ratio=ratio,
        components=components,
        scores=scores.reshape(*lead, n_comp),
    )
