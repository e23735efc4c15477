"""Damage quantification as in the crack-detection seed paper (its Figures 4 and 5).

Definitions (per slice, z = 0 is the separator side):

* damage density map: share of crack pixels in a moving ``window x window`` box centred on each
  pixel (0..1; "crack area in a 50 x 50 window" divided by the window area);
* particle density map: share of particle pixels (cracks included) in the same box;
* depth profile: crack area / particle area of each slice;
* damage distribution: histogram of the damage density over the particle pixels of each slice,
  normalised to probabilities;
* correlation of particle density with damage density: least-squares line and Pearson r on
  both maps sampled every ``stride`` pixels where the particle density is positive, over the
  whole volume and layer by layer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from scipy import ndimage


class QuantifyParams(BaseModel):
    """Parameters of :func:`quantify_damage`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: PositiveInt = Field(default=50, description="Side of the moving window, pixels.")
    stride: PositiveInt | None = Field(
        default=None, description="Sampling step of the correlation; None = window // 2."
    )
    histogram_bins: PositiveInt = 20
    n_layers: PositiveInt = Field(
        default=8,
        description="Slabs of equal thickness along z for the layer-by-layer fit and the "
        "top/bottom damage distributions (pipelines.cracks.layers); at most the slice count.",
    )
    histogram_max: float | None = Field(
        default=None,
        gt=0.0,
        description="Upper edge of the damage histogram; None = volume maximum.",
    )


@dataclass
class LineFit:
    """Least-squares line ``damage = slope * particle + intercept`` with Pearson r and n."""

    slope: float
    intercept: float
    pearson_r: float
    n_samples: int


@dataclass
class DamageQuantification:
    """Damage maps and statistics of a crack mask.

    Attributes
    ----------
    damage_density : numpy.ndarray
        float32 (Z, Y, X) crack share of the moving window.
    particle_density : numpy.ndarray
        float32 (Z, Y, X) particle share of the moving window.
    crack_area, particle_area : numpy.ndarray
        int64 (Z,) pixel counts per slice.
    depth_profile : numpy.ndarray
        float64 (Z,) crack area / particle area (NaN where a slice has no particle).
    damage_histogram : numpy.ndarray
        float64 (Z, bins) distribution of damage density over particle pixels per slice.
    histogram_edges : numpy.ndarray
        float64 (bins + 1,) bin edges.
    volume_fit : LineFit
        Particle density vs damage density over the whole volume.
    layer_slope, layer_intercept, layer_pearson_r : numpy.ndarray
        float64 (Z,) the same fit layer by layer (NaN when undefined).
    window : int
        Window side used.
    """

    damage_density: np.ndarray
    particle_density: np.ndarray
    crack_area: np.ndarray
    particle_area: np.ndarray
    depth_profile: np.ndarray
    damage_histogram: np.ndarray
    histogram_edges: np.ndarray
    volume_fit: LineFit
    layer_slope: np.ndarray
    layer_intercept: np.ndarray
    layer_pearson_r: np.ndarray
    window: int


def density_map(mask: np.ndarray, window: int, *, workers: int = 1) -> np.ndarray:
    """Share of True pixels in a moving square window, slice by slice.

    Parameters
    ----------
    mask : numpy.ndarray
        (Y, X) or (Z, Y, X) boolean or 0/1 mask.
    window : int
        Window side in pixels (borders are mirrored).
    workers : int, optional
        Threads; a stack is split into that many runs of slices (same result).

    Returns
    -------
    numpy.ndarray
        float32 map with the shape of ``mask``, values in [0, 1].
    """
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise ValueError(f"mask must be 2-D or 3-D, got shape {arr.shape}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = np.empty(arr.shape, dtype=np.float32)
    if arr.ndim == 2 or workers == 1 or arr.shape[0] < 2:
        _density_into(arr, window, out)
        return out
    bounds = np.linspace(0, arr.shape[0], min(workers, arr.shape[0]) + 1).astype(int)
    with ThreadPoolExecutor(len(bounds) - 1) as pool:
        list(
            pool.map(
                lambda a, b: _density_into(arr[a:b], window, out[a:b]), bounds[:-1], bounds[1:]
            )
        )
    return out


def _density_into(mask: np.ndarray, window: int, out: np.ndarray) -> None:
    size = (window, window) if mask.ndim == 2 else (1, window, window)
    # 0/1 input read directly (bool as uint8); the passes run in float64, written as float32
    source = mask.view(np.uint8) if mask.dtype == bool else mask
    ndimage.uniform_filter(source, size=size, output=out, mode="reflect")
    np.clip(out, 0.0, 1.0, out=out)


def fit_line(x: np.ndarray, y: np.ndarray) -> LineFit:
    """Least-squares line and Pearson correlation of paired samples.

    Parameters
    ----------
    x, y : numpy.ndarray
        Paired samples (flattened).

    Returns
    -------
    LineFit
        NaN slope/intercept/r when fewer than 3 samples or ``x`` is constant; NaN r when ``y``
        is constant.
    """
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same size, got {xs.size} and {ys.size}")
    n = int(xs.size)
    if n < 3:
        return LineFit(np.nan, np.nan, np.nan, n)
    dx, dy = xs - xs.mean(), ys - ys.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    if sxx <= 1e-12 * n:
        return LineFit(np.nan, np.nan, np.nan, n)
    slope = sxy / sxx
    intercept = float(ys.mean() - slope * xs.mean())
    r = sxy / np.sqrt(sxx * syy) if syy > 1e-12 * n else np.nan
    return LineFit(float(slope), intercept, float(r), n)


@dataclass
class SlabDamage:
    """What :func:`slab_damage` finds in one run of slices (the whole volume is one run).

    Attributes
    ----------
    damage_density, particle_density : numpy.ndarray
        float32 (z, Y, X) maps of the run.
    crack_area, particle_area : numpy.ndarray
        int64 (z,) pixel counts.
    particle_samples, damage_samples : numpy.ndarray
        float32 (n,) the correlation samples (every ``stride``-th pixel where the particle
        density is positive), in (z, y, x) order.
    layer_slope, layer_intercept, layer_pearson_r : numpy.ndarray
        float64 (z,) per-slice fits.
    damage_max : float
        Largest damage density of the run (-inf for no voxels).
    """

    damage_density: np.ndarray
    particle_density: np.ndarray
    crack_area: np.ndarray
    particle_area: np.ndarray
    particle_samples: np.ndarray
    damage_samples: np.ndarray
    layer_slope: np.ndarray
    layer_intercept: np.ndarray
    layer_pearson_r: np.ndarray
    damage_max: float


def _check_masks(crack_mask: np.ndarray, particle_mask: np.ndarray) -> tuple[np.ndarray, ...]:
    cracks = np.asarray(crack_mask).astype(bool)
    particles = np.asarray(particle_mask).astype(bool)
    if cracks.ndim != 3:
        raise ValueError(f"crack_mask must be 3-D (Z, Y, X), got shape {cracks.shape}")
    if particles.shape != cracks.shape:
        raise ValueError(
            f"particle_mask shape {particles.shape} != crack_mask shape {cracks.shape}"
        )
    return cracks, particles


def slab_damage(
    crack_mask: np.ndarray,
    particle_mask: np.ndarray,
    params: QuantifyParams | None = None,
    *,
    workers: int = 1,
) -> SlabDamage:
    """Density maps, areas, correlation samples and per-slice fits of a run of slices.

    Every quantity is per slice (the window moves within a slice), so a volume processed run
    by run (slab by slab, no overlap needed) gives exactly the numbers of the whole volume;
    the volume-wide parts (histogram range, volume fit) are combined afterwards
    (:func:`histogram_edges`, :func:`damage_histograms`, :func:`fit_line` of the
    concatenated samples).

    Parameters
    ----------
    crack_mask, particle_mask : numpy.ndarray
        (z, Y, X) masks (bool or 0/1).
    params : QuantifyParams, optional
        Window and correlation stride.
    workers : int, optional
        Threads for the density maps.

    Returns
    -------
    SlabDamage
    """
    p = params if params is not None else QuantifyParams()
    cracks, particles = _check_masks(crack_mask, particle_mask)
    damage = density_map(cracks, p.window, workers=workers)
    packing = density_map(particles, p.window, workers=workers)
    stride = p.stride if p.stride is not None else max(1, p.window // 2)
    pd_samples = packing[:, ::stride, ::stride]
    dd_samples = damage[:, ::stride, ::stride]
    keep = pd_samples > 0
    n_z = cracks.shape[0]
    slopes, intercepts, rs = (np.full(n_z, np.nan) for _ in range(3))
    for z in range(n_z):
        fit = fit_line(pd_samples[z][keep[z]], dd_samples[z][keep[z]])
        slopes[z], intercepts[z], rs[z] = fit.slope, fit.intercept, fit.pearson_r
    return SlabDamage(
        damage_density=damage,
        particle_density=packing,
        crack_area=cracks.sum(axis=(1, 2)).astype(np.int64),
        particle_area=particles.sum(axis=(1, 2)).astype(np.int64),
        particle_samples=pd_samples[keep],
        damage_samples=dd_samples[keep],
        layer_slope=slopes,
        layer_intercept=intercepts,
        layer_pearson_r=rs,
        damage_max=float(damage.max()) if damage.size else float("-inf"),
    )


def histogram_edges(params: QuantifyParams, damage_max: float) -> np.ndarray:
    """Bin edges of the damage histogram: up to ``histogram_max`` or the volume's maximum."""
    top = params.histogram_max if params.histogram_max is not None else damage_max or 1.0
    return np.linspace(0.0, top, params.histogram_bins + 1)


def damage_histograms(
    damage_density: np.ndarray, particle_mask: np.ndarray, edges: np.ndarray, *, workers: int = 1
) -> np.ndarray:
    """Distribution of the damage density over the particle pixels of each slice.

    Parameters
    ----------
    damage_density : numpy.ndarray
        float (z, Y, X) damage density.
    particle_mask : numpy.ndarray
        (z, Y, X) particle mask (bool or 0/1).
    edges : numpy.ndarray
        (bins + 1,) bin edges (:func:`histogram_edges`).
    workers : int, optional
        Threads.

    Returns
    -------
    numpy.ndarray
        float64 (z, bins) probabilities per slice (0 where a slice has no particle pixel).
    """
    damage = np.asarray(damage_density)
    particles = np.asarray(particle_mask).astype(bool)
    top = float(edges[-1])
    hist = np.zeros((damage.shape[0], len(edges) - 1), dtype=np.float64)

    def histogram(z: int) -> None:
        values = damage[z][particles[z]]
        if values.size:
            counts, _ = np.histogram(np.clip(values, 0.0, top), bins=edges)
            hist[z] = counts / values.size

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(histogram, range(damage.shape[0])))
    else:
        for z in range(damage.shape[0]):
            histogram(z)
    return hist


def depth_profile(crack_area: np.ndarray, particle_area: np.ndarray) -> np.ndarray:
    """float64 crack area / particle area per slice, NaN where a slice has no particle."""
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(particle_area > 0, crack_area / np.maximum(particle_area, 1), np.nan)
    return profile.astype(np.float64)


def quantify_damage(
    crack_mask: np.ndarray,
    particle_mask: np.ndarray,
    params: QuantifyParams | None = None,
    *,
    workers: int = 1,
) -> DamageQuantification:
    """Damage density maps, depth profile, damage distribution and packing correlation.

    Parameters
    ----------
    crack_mask : numpy.ndarray
        (Z, Y, X) crack mask (bool or 0/1).
    particle_mask : numpy.ndarray
        (Z, Y, X) particle mask including cracks (bool or 0/1).
    params : QuantifyParams, optional
        Window, correlation stride, histogram settings.
    workers : int, optional
        Threads for the density maps and the per-slice histograms (same result).

    Returns
    -------
    DamageQuantification
        See the module docstring for the definitions.
    """
    p = params if params is not None else QuantifyParams()
    cracks, particles = _check_masks(crack_mask, particle_mask)
    run = slab_damage(cracks, particles, p, workers=workers)
    edges = histogram_edges(p, run.damage_max)
    hist = damage_histograms(run.damage_density, particles, edges, workers=workers)
    return DamageQuantification(
        damage_density=run.damage_density,
        particle_density=run.particle_density,
        crack_area=run.crack_area,
        particle_area=run.particle_area,
        depth_profile=depth_profile(run.crack_area, run.particle_area),
        damage_histogram=hist,
        histogram_edges=edges,
        volume_fit=fit_line(run.particle_samples, run.damage_samples),
        layer_slope=run.layer_slope,
        layer_intercept=run.layer_intercept,
        layer_pearson_r=run.layer_pearson_r,
        window=p.window,
    )
