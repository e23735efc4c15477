"""Particle statistics: size and detachment distributions, flawed fraction, by size and depth."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class StatsParams(BaseModel):
    """Parameters of :func:`particle_statistics`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voxel_size_um: PositiveFloat = Field(default=1.0, description="Edge length of a voxel (um).")
    size_threshold_um: PositiveFloat = Field(
        default=11.0, description="Equivalent diameter separating small from large particles."
    )
    n_depth_bins: PositiveInt = Field(default=4, description="Equal-thickness layers along z.")
    n_size_bins: PositiveInt = 20
    n_detachment_bins: PositiveInt = 10
    exclude_border: bool = Field(
        default=True, description="Leave particles touching the volume border out."
    )


@dataclass
class GroupStats:
    """Summary of one group of particles (NaN where the group is empty)."""

    count: int
    mean_diameter_um: float
    mean_detachment: float
    std_detachment: float
    flawed_fraction: float


@dataclass
class ParticleStatistics:
    """Distributions and group summaries of a particle table.

    Attributes
    ----------
    size_counts, size_edges_um : numpy.ndarray
        Histogram of the equivalent diameter (um).
    detachment_counts, detachment_edges : numpy.ndarray
        Histogram of the degree of detachment on [0, 1] (particles with a value only).
    overall, small, large : GroupStats
        All particles, and those below / at or above ``size_threshold_um``.
    depth_edges : numpy.ndarray
        (n_depth_bins + 1,) layer boundaries in slices (z = 0 first).
    by_depth : list of GroupStats
        One summary per layer (by centroid z).
    n_excluded_border : int
        Particles left out because they touch the volume border.
    """

    size_counts: np.ndarray
    size_edges_um: np.ndarray
    detachment_counts: np.ndarray
    detachment_edges: np.ndarray
    overall: GroupStats
    small: GroupStats
    large: GroupStats
    depth_edges: np.ndarray
    by_depth: list[GroupStats] = field(default_factory=list)
    n_excluded_border: int = 0


def _group(diameter_um: np.ndarray, detachment: np.ndarray, flawed: np.ndarray) -> GroupStats:
    valid = detachment[np.isfinite(detachment)]
    return GroupStats(
        count=int(diameter_um.size),
        mean_diameter_um=float(diameter_um.mean()) if diameter_um.size else float("nan"),
        mean_detachment=float(valid.mean()) if valid.size else float("nan"),
        std_detachment=float(valid.std()) if valid.size else float("nan"),
        flawed_fraction=float(flawed.mean()) if flawed.size else float("nan"),
    )


def particle_statistics(
    table: np.ndarray, *, depth: int, params: StatsParams | None = None
) -> ParticleStatistics:
    """Size distribution, detachment distribution and flawed fraction, split by size and depth.

    Parameters
    ----------
    table : numpy.ndarray
        Structured particle table with at least ``equivalent_diameter_px``, ``centroid_z``,
        ``detachment``, ``flawed`` and ``touches_border`` (see
        :func:`pipelines.particles.analyze.analyze_particles`).
    depth : int
        Number of slices (Z) of the analysed volume.
    params : StatsParams, optional
        Voxel size, size threshold, bins, border handling.

    Returns
    -------
    ParticleStatistics
        Histograms and group summaries.
    """
    p = params if params is not None else StatsParams()
    needed = ("equivalent_diameter_px", "centroid_z", "detachment", "flawed", "touches_border")
    names = table.dtype.names or ()
    missing = [n for n in needed if n not in names]
    if missing:
        raise ValueError(f"table lacks fields {missing}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    border = np.asarray(table["touches_border"], dtype=bool)
    rows = table[~border] if p.exclude_border else table
    diameter = np.asarray(rows["equivalent_diameter_px"], dtype=np.float64) * p.voxel_size_um
    detachment = np.asarray(rows["detachment"], dtype=np.float64)
    flawed = np.asarray(rows["flawed"], dtype=bool)
    z = np.asarray(rows["centroid_z"], dtype=np.float64)
    top = max(float(diameter.max()) if diameter.size else 0.0, p.size_threshold_um) * 1.05
    size_counts, size_edges = np.histogram(diameter, bins=p.n_size_bins, range=(0.0, top))
    finite = detachment[np.isfinite(detachment)]
    det_counts, det_edges = np.histogram(finite, bins=p.n_detachment_bins, range=(0.0, 1.0))
    small = diameter < p.size_threshold_um
    depth_edges = np.linspace(0.0, float(depth), p.n_depth_bins + 1)
    layer = np.clip(np.searchsorted(depth_edges, z, side="right") - 1, 0, p.n_depth_bins - 1)
    return ParticleStatistics(
        size_counts=size_counts,
        size_edges_um=size_edges,
        detachment_counts=det_counts,
        detachment_edges=det_edges,
        overall=_group(diameter, detachment, flawed),
        small=_group(diameter[small], detachment[small], flawed[small]),
        large=_group(diameter[~small], detachment[~small], flawed[~small]),
        depth_edges=depth_edges,
        by_depth=[
            _group(diameter[layer == i], detachment[layer == i], flawed[layer == i])
            for i in range(p.n_depth_bins)
        ],
        n_excluded_border=int(border.sum()) if p.exclude_border else 0,
    )


def flawed_fraction_by_required_slices(flawed_slices: np.ndarray, n_slices: int = 10) -> np.ndarray:
    """Share of particles called flawed when k = 1 .. ``n_slices`` flawed slices are required.

    The flaw-classification seed paper calls a particle flawed from its 10 slice scores; how
    the flawed fraction depends on that rule shows how robust a reported fraction is.

    Parameters
    ----------
    flawed_slices : numpy.ndarray
        (n,) integer number of flawed slices of each particle (0 .. ``n_slices``).
    n_slices : int, optional
        Slices scored per particle.

    Returns
    -------
    numpy.ndarray
        float64 (n_slices,): entry ``k - 1`` is the share of particles with at least ``k``
        flawed slices; NaN when there is no particle.
    """
    counts = np.asarray(flawed_slices)
    if counts.ndim != 1:
        raise ValueError(f"flawed_slices must be 1-D, got shape {counts.shape}")
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if counts.size and (counts.min() < 0 or counts.max() > n_slices):
        raise ValueError(f"flawed_slices must lie in 0..{n_slices}")
    if counts.size == 0:
        return np.full(n_slices, np.nan)
    required = np.arange(1, n_slices + 1)
    return (counts[None, :] >= required[:, None]).mean(axis=1).astype(np.float64)


@dataclass
class DetachmentBySize:
    """Detachment distributions of the small and the large particles (the seed's Fig. 4b, c).

    Attributes
    ----------
    edges : numpy.ndarray
        (bins + 1,) bin edges on [0, 1].
    small_counts, large_counts : numpy.ndarray
        int64 (bins,) particles per bin (particles with a known detachment only).
    small_probability, large_probability : numpy.ndarray
        float64 (bins,) counts / group size; NaN for an empty group.
    threshold : float
        Equivalent diameter separating the groups (small < threshold <= large).
    """

    edges: np.ndarray
    small_counts: np.ndarray
    large_counts: np.ndarray
    small_probability: np.ndarray
    large_probability: np.ndarray
    threshold: float


def detachment_by_size(
    diameter: np.ndarray, detachment: np.ndarray, *, threshold: float, bins: int = 10
) -> DetachmentBySize:
    """Detachment distribution of particles below and at or above a diameter threshold.

    Parameters
    ----------
    diameter : numpy.ndarray
        (n,) equivalent diameters, in the unit of ``threshold``.
    detachment : numpy.ndarray
        (n,) degree of detachment on [0, 1]; NaN (unknown) rows are left out.
    threshold : float
        Diameter separating small from large particles (> 0).
    bins : int, optional
        Equal bins on [0, 1].

    Returns
    -------
    DetachmentBySize
    """
    d = np.asarray(diameter, dtype=np.float64)
    det = np.asarray(detachment, dtype=np.float64)
    if d.ndim != 1 or det.shape != d.shape:
        raise ValueError(
            f"diameter and detachment must be 1-D of one length, got {d.shape}, {det.shape}"
        )
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive length, got {threshold}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    known = np.isfinite(det) & np.isfinite(d)
    small = known & (d < threshold)
    large = known & (d >= threshold)
    small_counts, edges = np.histogram(det[small], bins=bins, range=(0.0, 1.0))
    large_counts, _ = np.histogram(det[large], bins=bins, range=(0.0, 1.0))

    def probability(counts: np.ndarray) -> np.ndarray:
        total = counts.sum()
        return counts / total if total else np.full(bins, np.nan)

    return DetachmentBySize(
        edges=edges,
        small_counts=small_counts.astype(np.int64),
        large_counts=large_counts.astype(np.int64),
        small_probability=probability(small_counts),
        large_probability=probability(large_counts),
        threshold=float(threshold),
    )
