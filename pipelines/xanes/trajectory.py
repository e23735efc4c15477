"""State-of-charge trajectory of every particle across an operando series of XANES scans.

Each scan's alignment gives, in its own frame-0 geometry, a label image and per-pixel maps (edge
energy, LCF fractions). Particles are followed from scan to scan: the drift of the sample
between two scans is the phase-correlation displacement of their particle masks, and the
particles are then paired by position after that drift (Hungarian assignment with a distance
gate and an area gate, :func:`pipelines.xanes.match.match_labels`). For every particle and scan
the mean and spread (standard deviation) of each map over the particle's pixels are reported;
pixels without a value (NaN) are left out and counted, a particle not found in a scan has NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.xanes.match import match_labels
from pipelines.xanes.params import MatchParams
from pipelines.xanes.register import phase_correlation_displacement

__all__ = ["ScanMaps", "Trajectory", "particle_statistics", "scan_drift", "trajectory"]


@dataclass(frozen=True)
class ScanMaps:
    """One scan of the series.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(H, W)`` int labels of the scan's frame 0 (particle k has label k + 1, 0 background).
    maps : mapping of str to numpy.ndarray
        ``(H, W)`` per-pixel quantities (NaN where unknown), e.g. ``edge_energy_eV``.
    """

    labels: np.ndarray
    maps: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Trajectory:
    """Per-particle statistics scan by scan.

    Attributes
    ----------
    label : numpy.ndarray
        ``(T, S)`` int label of track t in scan s, 0 where the particle was not found.
    drift : numpy.ndarray
        ``(S, 2)`` position (row, col) of each scan's frame 0 relative to scan 0 (pixels).
    centre : numpy.ndarray
        ``(T, S, 2)`` particle centre in the scan's own pixels; NaN where not found.
    n_pixels : numpy.ndarray
        ``(T, S)`` pixels of the particle (0 where not found).
    mean, spread, n_valid : dict of str to numpy.ndarray
        ``(T, S)`` mean and standard deviation of each map over the particle's pixels with a
        value, and the number of such pixels; NaN (0) where not found or no pixel has a value.
    """

    label: np.ndarray
    drift: np.ndarray
    centre: np.ndarray
    n_pixels: np.ndarray
    mean: dict[str, np.ndarray]
    spread: dict[str, np.ndarray]
    n_valid: dict[str, np.ndarray]


def scan_drift(ref_labels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Displacement (row, col) of a scan's particles relative to a reference scan.

    Parameters
    ----------
    ref_labels, labels : numpy.ndarray
        ``(H, W)`` label images of the same shape.

    Returns
    -------
    numpy.ndarray
        ``(2,)``: a particle at ``x`` in the reference is at ``x + drift`` in the other scan;
        ``(0, 0)`` when either scan has no particle.
    """
    ref_labels, labels = np.asarray(ref_labels), np.asarray(labels)
    if ref_labels.shape != labels.shape or ref_labels.ndim != 2:
        raise ValueError(
            f"label images must be 2-D of one shape, got {ref_labels.shape} and {labels.shape}"
        )
    if not (ref_labels > 0).any() or not (labels > 0).any():
        return np.zeros(2)
    return np.asarray(
        phase_correlation_displacement(
            (ref_labels > 0).astype(np.float64), (labels > 0).astype(np.float64)
        ),
        dtype=np.float64,
    )


def particle_statistics(
    labels: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard deviation and count of the finite values of every label.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` labels 1..P (0 background).
    values : numpy.ndarray
        ``(H, W)`` map, NaN where unknown.

    Returns
    -------
    tuple of numpy.ndarray
        ``(P,)`` mean, spread (population sd) and number of finite pixels; NaN mean and spread
        for a label without a finite pixel.
    """
    labels = np.asarray(labels)
    values = np.asarray(values, dtype=np.float64)
    if labels.shape != values.shape:
        raise ValueError(f"values shape {values.shape} differs from labels {labels.shape}")
    n = int(labels.max()) if labels.size else 0
    ok = (labels > 0) & np.isfinite(values)
    idx = labels[ok].astype(np.int64)
    count = np.bincount(idx, minlength=n + 1)[1:].astype(np.int64)
    total = np.bincount(idx, weights=values[ok], minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        centred = values[ok] - mean[idx - 1]
        var = np.bincount(idx, weights=centred**2, minlength=n + 1)[1:] / np.maximum(count, 1)
    spread = np.where(count > 0, np.sqrt(var), np.nan)
    return mean, spread, count


def _centres(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = int(labels.max()) if labels.size else 0
    rows, cols = np.nonzero(labels > 0)
    idx = labels[rows, cols].astype(np.int64)
    count = np.bincount(idx, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.bincount(idx, weights=rows, minlength=n + 1)[1:] / count
        c = np.bincount(idx, weights=cols, minlength=n + 1)[1:] / count
    return np.stack([r, c], axis=1), count


def trajectory(scans: Sequence[ScanMaps], *, params: MatchParams = MatchParams()) -> Trajectory:
    """Follow the particles through a series of scans and summarise their maps.

    Parameters
    ----------
    scans : sequence of ScanMaps
        The series in time order; all label images of one shape, the same map names in each
        scan (a name missing in a scan gives NaN there).
    params : MatchParams
        Distance and area gates of the scan-to-scan matching (after the drift).

    Returns
    -------
    Trajectory
        Tracks are the particles of scan 0 in label order, then particles that appear later
        (entering the field), in order of appearance.
    """
    if not scans:
        raise ValueError("scans: at least one scan is needed")
    shape = np.asarray(scans[0].labels).shape
    for s, scan in enumerate(scans):
        if np.asarray(scan.labels).shape != shape:
            raise ValueError(
                f"scans[{s}].labels has shape {np.asarray(scan.labels).shape}, scan 0 has {shape}"
            )
    names = sorted({name for scan in scans for name in scan.maps})
    n_scans = len(scans)
    first = np.asarray(scans[0].labels)
    # track_of[s][k]: track index of particle k (label k + 1) of scan s
    track_of: list[np.ndarray] = [np.arange(int(first.max()) if first.size else 0)]
    n_tracks = track_of[0].size
    drift = np.zeros((n_scans, 2))
    for s in range(1, n_scans):
        prev, cur = np.asarray(scans[s - 1].labels), np.asarray(scans[s].labels)
        step = scan_drift(prev, cur)
        drift[s] = drift[s - 1] + step
        matching = match_labels(
            prev,
            (prev > 0).astype(np.float64),
            cur,
            (cur > 0).astype(np.float64),
            expected_shift=(float(step[0]), float(step[1])),
            params=params,
        )
        n_cur = int(cur.max()) if cur.size else 0
        tracks = np.full(n_cur, -1, dtype=np.int64)
        for k_prev, k_cur in enumerate(matching.assignment):
            if k_cur >= 0:
                tracks[k_cur] = track_of[s - 1][k_prev]
        for k in np.nonzero(tracks < 0)[0]:
            tracks[k] = n_tracks
            n_tracks += 1
        track_of.append(tracks)
    label = np.zeros((n_tracks, n_scans), dtype=np.int64)
    centre = np.full((n_tracks, n_scans, 2), np.nan)
    n_pixels = np.zeros((n_tracks, n_scans), dtype=np.int64)
    mean = {name: np.full((n_tracks, n_scans), np.nan) for name in names}
    spread = {name: np.full((n_tracks, n_scans), np.nan) for name in names}
    n_valid = {name: np.zeros((n_tracks, n_scans), dtype=np.int64) for name in names}
    for s, scan in enumerate(scans):
        labels = np.asarray(scan.labels)
        tracks = track_of[s]
        if tracks.size == 0:
            continue
        label[tracks, s] = np.arange(1, tracks.size + 1)
        c, count = _centres(labels)
        centre[tracks, s] = c[: tracks.size]
        n_pixels[tracks, s] = count[: tracks.size]
        for name, values in scan.maps.items():
            m, sd, nv = particle_statistics(labels, values)
            mean[name][tracks, s] = m[: tracks.size]
            spread[name][tracks, s] = sd[: tracks.size]
            n_valid[name][tracks, s] = nv[: tracks.size]
    return Trajectory(
        label=label,
        drift=drift,
        centre=centre,
        n_pixels=n_pixels,
        mean=mean,
        spread=spread,
        n_valid=n_valid,
    )
