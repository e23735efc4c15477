"""Electrode deformation across an operando series: per-particle kinematics, rigid vs non-rigid.

Positions are particle displacements (pixels, (row, col)) relative to the reference, one per time
point: per frame within a scan (as the seed's Fig. 3) or per scan (see :func:`per_scan_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Deformation",
    "RigidSplit",
    "deformation_rows",
    "deformation_series",
    "per_scan_positions",
    "rigid_split",
]


@dataclass(frozen=True)
class Deformation:
    """Kinematics of P particles over T time points.

    Attributes
    ----------
    times : numpy.ndarray
        ``(T,)`` time of each point (frame or scan number unless given).
    displacement : numpy.ndarray
        ``(P, T, 2)`` displacement of each particle.
    global_drift : numpy.ndarray
        ``(T, 2)`` rigid component: median over the particles found at that time.
    nonrigid : numpy.ndarray
        ``(P, T, 2)`` ``displacement - global_drift``.
    cumulative_distance : numpy.ndarray
        ``(P, T)`` path length travelled since the first point (missing steps add nothing).
    velocity, acceleration : numpy.ndarray
        ``(P, T, 2)`` backward differences per unit time; NaN at the first one / two points.
    global_velocity : numpy.ndarray
        ``(T, 2)`` velocity of the rigid component.
    """

    times: np.ndarray
    displacement: np.ndarray
    global_drift: np.ndarray
    nonrigid: np.ndarray
    cumulative_distance: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    global_velocity: np.ndarray


def _backward_difference(values: np.ndarray, times: np.ndarray) -> np.ndarray:
    out = np.full(values.shape, np.nan)
    dt = np.diff(times)
    shape = (1,) * (values.ndim - 2) + (dt.size, 1)
    out[..., 1:, :] = np.diff(values, axis=-2) / dt.reshape(shape)
    return out


def deformation_series(displacement: np.ndarray, *, times: np.ndarray | None = None) -> Deformation:
    """Split particle motion into rigid drift and non-rigid motion and derive its kinematics.

    Parameters
    ----------
    displacement : numpy.ndarray
        ``(P, T, 2)`` displacements (pixels), NaN where a particle was not found.
    times : numpy.ndarray, optional
        ``(T,)`` strictly increasing times; default ``0, 1, ..., T - 1``.

    Returns
    -------
    Deformation
    """
    displacement = np.asarray(displacement, dtype=np.float64)
    if displacement.ndim != 3 or displacement.shape[2] != 2:
        raise ValueError(f"displacement must have shape (P, T, 2), got {displacement.shape}")
    n_t = displacement.shape[1]
    if times is None:
        times = np.arange(n_t, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (n_t,):
        raise ValueError(f"times must have shape ({n_t},), got {times.shape}")
    if n_t > 1 and not np.all(np.diff(times) > 0):
        raise ValueError("times must be strictly increasing")
    found = np.all(np.isfinite(displacement), axis=2)
    global_drift = np.full((n_t, 2), np.nan)
    for t in range(n_t):
        if found[:, t].any():
            global_drift[t] = np.median(displacement[found[:, t], t], axis=0)
    steps = np.linalg.norm(np.diff(displacement, axis=1), axis=2)
    steps = np.where(np.isfinite(steps), steps, 0.0)
    cumulative = np.concatenate([np.zeros((displacement.shape[0], 1)), np.cumsum(steps, axis=1)], 1)
    velocity = _backward_difference(displacement, times)
    return Deformation(
        times=times,
        displacement=displacement,
        global_drift=global_drift,
        nonrigid=displacement - global_drift[None],
        cumulative_distance=cumulative,
        velocity=velocity,
        acceleration=_backward_difference(velocity, times),
        global_velocity=_backward_difference(global_drift, times),
    )


def per_scan_positions(particle_shift: np.ndarray, scan_of_frame: np.ndarray) -> np.ndarray:
    """Mean displacement of every particle over the frames of each scan.

    Parameters
    ----------
    particle_shift : numpy.ndarray
        ``(P, N, 2)`` per-frame displacements over the whole series.
    scan_of_frame : numpy.ndarray
        ``(N,)`` integer scan number of every frame (0, 1, ...).

    Returns
    -------
    numpy.ndarray
        ``(P, S, 2)`` with ``S = max(scan_of_frame) + 1``; NaN for a scan without detections.
    """
    particle_shift = np.asarray(particle_shift, dtype=np.float64)
    scan_of_frame = np.asarray(scan_of_frame)
    if particle_shift.ndim != 3 or particle_shift.shape[2] != 2:
        raise ValueError(f"particle_shift must have shape (P, N, 2), got {particle_shift.shape}")
    if scan_of_frame.shape != (particle_shift.shape[1],):
        raise ValueError(
            f"scan_of_frame must have shape ({particle_shift.shape[1]},), got {scan_of_frame.shape}"
        )
    if scan_of_frame.size and scan_of_frame.min() < 0:
        raise ValueError("scan_of_frame must be >= 0")
    n_scans = int(scan_of_frame.max()) + 1 if scan_of_frame.size else 0
    out = np.full((particle_shift.shape[0], n_scans, 2), np.nan)
    for s in range(n_scans):
        block = particle_shift[:, scan_of_frame == s]
        ok = np.all(np.isfinite(block), axis=2)
        counts = ok.sum(axis=1)
        sums = np.where(ok[..., None], block, 0.0).sum(axis=1)
        has = counts > 0
        out[has, s] = sums[has] / counts[has, None]
    return out


def deformation_rows(deformation: Deformation) -> list[dict[str, float | int]]:
    """Flatten a :class:`Deformation` into table rows, one per particle and time point.

    Parameters
    ----------
    deformation : Deformation

    Returns
    -------
    list of dict
        Keys: particle, time, dy, dx, nonrigid_dy, nonrigid_dx, cumulative_distance, vy, vx,
        ay, ax (pixels and pixels per unit time).
    """
    rows: list[dict[str, float | int]] = []
    d = deformation
    for p in range(d.displacement.shape[0]):
        for t in range(d.displacement.shape[1]):
            rows.append(
                {
                    "particle": p,
                    "time": float(d.times[t]),
                    "dy": float(d.displacement[p, t, 0]),
                    "dx": float(d.displacement[p, t, 1]),
                    "nonrigid_dy": float(d.nonrigid[p, t, 0]),
                    "nonrigid_dx": float(d.nonrigid[p, t, 1]),
                    "cumulative_distance": float(d.cumulative_distance[p, t]),
                    "vy": float(d.velocity[p, t, 0]),
                    "vx": float(d.velocity[p, t, 1]),
                    "ay": float(d.acceleration[p, t, 0]),
                    "ax": float(d.acceleration[p, t, 1]),
                }
            )
    return rows


@dataclass(frozen=True)
class RigidSplit:
    """Particles that only follow the global drift (rigid) and those that move on their own.

    Attributes
    ----------
    rigid : numpy.ndarray
        ``(P,)`` bool: the non-rigid displacement stays within the tolerance at every point.
    known : numpy.ndarray
        ``(P,)`` bool: the particle was found at least once (``rigid`` means nothing otherwise).
    nonrigid_peak : numpy.ndarray
        ``(P,)`` largest length of the non-rigid displacement; NaN when never found.
    tolerance : float
        Largest non-rigid displacement a rigid particle may show (the registration noise).
    peak_speed_rigid, peak_speed_nonrigid : numpy.ndarray
        ``(2,)`` largest absolute velocity component (row, col) over the rigid / non-rigid
        particles; NaN for an empty group.
    peak_ratio : numpy.ndarray
        ``(2,)`` ``peak_speed_nonrigid / peak_speed_rigid`` (the seed paper reports 4.37
        vertically and 2.14 horizontally); NaN when either is unknown or the rigid one is 0.
    """

    rigid: np.ndarray
    known: np.ndarray
    nonrigid_peak: np.ndarray
    tolerance: float
    peak_speed_rigid: np.ndarray
    peak_speed_nonrigid: np.ndarray
    peak_ratio: np.ndarray


def _peak_abs(values: np.ndarray) -> np.ndarray:
    """Largest finite absolute value per component of ``(..., 2)`` values; NaN when none."""
    flat = np.abs(values.reshape(-1, 2))
    out = np.full(2, np.nan)
    for axis in range(2):
        finite = flat[np.isfinite(flat[:, axis]), axis]
        if finite.size:
            out[axis] = finite.max()
    return out


def rigid_split(deformation: Deformation, *, tolerance: float = 1.0) -> RigidSplit:
    """Split particles into rigid (drift only) and non-rigid movers, as the seed's Fig. 3c.

    Parameters
    ----------
    deformation : Deformation
        Result of :func:`deformation_series` (per frame within a scan, or per scan).
    tolerance : float, optional
        Largest non-rigid displacement (pixels) still counted as rigid (> 0).

    Returns
    -------
    RigidSplit
    """
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive length, got {tolerance}")
    lengths = np.linalg.norm(deformation.nonrigid, axis=2)
    known = np.isfinite(lengths).any(axis=1)
    peak = np.full(lengths.shape[0], np.nan)
    for p in np.flatnonzero(known):
        peak[p] = lengths[p][np.isfinite(lengths[p])].max()
    rigid = known & (np.nan_to_num(peak, nan=np.inf) <= tolerance)
    moving = known & ~rigid
    speed_rigid = _peak_abs(deformation.velocity[rigid])
    speed_nonrigid = _peak_abs(deformation.velocity[moving])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(speed_rigid > 0, speed_nonrigid / speed_rigid, np.nan)
    return RigidSplit(
        rigid=rigid,
        known=known,
        nonrigid_peak=peak,
        tolerance=float(tolerance),
        peak_speed_rigid=speed_rigid,
        peak_speed_nonrigid=speed_nonrigid,
        peak_ratio=ratio,
    )
