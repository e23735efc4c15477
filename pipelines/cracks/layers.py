"""Layer-by-layer analysis of the damage maps, as in the crack-detection seed paper.

Its Fig. 5f fits damage density against particle density layer by layer from the current
collector to the separator and finds a positive slope near the collector and a negative one
near the separator; its Fig. 4f overlays the damage distributions of a layer near each surface.
Here the volume is cut into ``n_layers`` slabs of equal thickness along z (z = 0 is the
separator side); each slab pools the samples of its slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.cracks.quantify import fit_line


@dataclass
class LayerCorrelation:
    """Damage against particle density, fitted per slab of slices.

    Attributes
    ----------
    z_start, z_stop : numpy.ndarray
        int64 (L,) first and one-past-last slice of each layer.
    slope, intercept, pearson_r : numpy.ndarray
        float64 (L,) least-squares line ``damage = slope * packing + intercept`` and Pearson r
        (NaN where undefined: fewer than 3 samples or constant packing).
    n_samples : numpy.ndarray
        int64 (L,) samples behind each fit.
    """

    z_start: np.ndarray
    z_stop: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray
    pearson_r: np.ndarray
    n_samples: np.ndarray


def layer_bounds(n_slices: int, n_layers: int) -> np.ndarray:
    """Boundaries (L + 1,) of ``n_layers`` slabs of (nearly) equal thickness over ``n_slices``.

    Parameters
    ----------
    n_slices : int
        Number of slices (Z).
    n_layers : int
        Number of layers, 1 to ``n_slices``.

    Returns
    -------
    numpy.ndarray
        int64 increasing boundaries, first 0, last ``n_slices``.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if not 1 <= n_layers <= n_slices:
        raise ValueError(f"n_layers must be between 1 and n_slices={n_slices}, got {n_layers}")
    return np.round(np.linspace(0, n_slices, n_layers + 1)).astype(np.int64)


def layer_correlation(
    particle_density: np.ndarray,
    damage_density: np.ndarray,
    *,
    n_layers: int,
    stride: int = 1,
) -> LayerCorrelation:
    """Fit damage density against particle density in each of ``n_layers`` slabs.

    Parameters
    ----------
    particle_density, damage_density : numpy.ndarray
        (Z, Y, X) maps of the same shape (see :func:`pipelines.cracks.quantify.density_map`).
    n_layers : int
        Number of slabs of equal thickness along z (1 to Z).
    stride : int, optional
        Sampling step in y and x (the maps are smooth over their window); only samples with a
        positive particle density count, as in :func:`~pipelines.cracks.quantify.quantify_damage`.

    Returns
    -------
    LayerCorrelation
    """
    packing = np.asarray(particle_density)
    damage = np.asarray(damage_density)
    if packing.ndim != 3:
        raise ValueError(f"particle_density must be 3-D (Z, Y, X), got shape {packing.shape}")
    if damage.shape != packing.shape:
        raise ValueError(
            f"damage_density shape {damage.shape} != particle_density shape {packing.shape}"
        )
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    bounds = layer_bounds(packing.shape[0], n_layers)
    slopes, intercepts, rs = (np.full(n_layers, np.nan) for _ in range(3))
    counts = np.zeros(n_layers, dtype=np.int64)
    for i in range(n_layers):
        a, b = int(bounds[i]), int(bounds[i + 1])
        x = packing[a:b, ::stride, ::stride]
        y = damage[a:b, ::stride, ::stride]
        keep = x > 0
        fit = fit_line(x[keep], y[keep])
        slopes[i], intercepts[i], rs[i], counts[i] = (
            fit.slope,
            fit.intercept,
            fit.pearson_r,
            fit.n_samples,
        )
    return LayerCorrelation(
        z_start=bounds[:-1].copy(),
        z_stop=bounds[1:].copy(),
        slope=slopes,
        intercept=intercepts,
        pearson_r=rs,
        n_samples=counts,
    )


def pooled_distribution(
    histogram: np.ndarray, particle_area: np.ndarray, z_start: int, z_stop: int
) -> np.ndarray:
    """Damage distribution of a slab, pooled from the per-slice distributions.

    Parameters
    ----------
    histogram : numpy.ndarray
        (Z, bins) per-slice probabilities over the particle pixels
        (:attr:`~pipelines.cracks.quantify.DamageQuantification.damage_histogram`).
    particle_area : numpy.ndarray
        (Z,) particle pixels of each slice (the weights).
    z_start, z_stop : int
        Slab ``[z_start, z_stop)``.

    Returns
    -------
    numpy.ndarray
        float64 (bins,) probabilities over all particle pixels of the slab; NaN when the slab
        holds no particle pixel.
    """
    hist = np.asarray(histogram, dtype=np.float64)
    area = np.asarray(particle_area, dtype=np.float64)
    if hist.ndim != 2:
        raise ValueError(f"histogram must be 2-D (Z, bins), got shape {hist.shape}")
    if area.shape != (hist.shape[0],):
        raise ValueError(f"particle_area must have shape ({hist.shape[0]},), got {area.shape}")
    if not 0 <= z_start < z_stop <= hist.shape[0]:
        raise ValueError(f"need 0 <= z_start < z_stop <= {hist.shape[0]}, got {z_start}, {z_stop}")
    weights = area[z_start:z_stop]
    total = float(weights.sum())
    if total <= 0:
        return np.full(hist.shape[1], np.nan)
    return (hist[z_start:z_stop] * weights[:, None]).sum(axis=0) / total
