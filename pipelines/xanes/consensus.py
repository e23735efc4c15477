"""The global shift of a frame from its particles' shifts, and the border-cut rule.

Particles cut by the frame border vote only when fewer than 3 whole particles were registered
(their outline changes as the sample drifts across the border); a border-cut particle farther
than ``track.max_partial_deviation_px`` from the global shift of 3 or more whole particles is
dropped. The live tracker applies these per frame, :meth:`XanesTracker.finalize` on the
refined shifts of the whole scan. At finalize, in a sample whose whole particles move rigidly,
a whole particle far from the drift is dropped too (:func:`far_wholes`) and the whole
particles' deviations from the drift are smoothed over the frames
(:func:`smoothed_deviations`). A "particle" that stays put in the detector frame while the
sample drifts (a piece of the zone-plate pattern or a detector blemish) is not part of the
sample (:func:`still_particles`).
"""

from __future__ import annotations

import numpy as np

from pipelines.xanes.register import robust_global_shift

__all__ = [
    "far_partials",
    "far_wholes",
    "frame_consensus",
    "global_from_shifts",
    "inconsistent_partials",
    "partials_from_drift",
    "rigid_spread",
    "smoothed_deviations",
    "still_particles",
]


def frame_consensus(
    found: np.ndarray, shifts: np.ndarray, partial: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """One frame's global shift from its registered particles.

    Parameters
    ----------
    found : numpy.ndarray
        ``(P,)`` bool, particle registered in the frame.
    shifts : numpy.ndarray
        ``(P, 2)`` shifts (NaN where not registered).
    partial : numpy.ndarray
        ``(P,)`` bool, particle cut by the frame border.

    Returns
    -------
    tuple
        ``(2,)`` global shift (NaN when no particle), ``(P,)`` bool voters, their number, and
        their spread (1.4826 x the median absolute deviation; NaN with fewer than 2).
    """
    whole = found & ~partial
    voters = whole if whole.sum() >= 3 else found
    n_used = int(voters.sum())
    if n_used:
        global_shift = robust_global_shift(np.where(voters[:, None], shifts, np.nan))
    else:
        global_shift = np.full(2, np.nan)
    spread = float("nan")
    if n_used >= 2:
        deviation = np.abs(shifts[voters] - global_shift).ravel()
        spread = float(1.4826 * np.median(deviation))
    return global_shift, voters, n_used, spread


def global_from_shifts(
    shift: np.ndarray, partial: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`frame_consensus` of every frame of a ``(P, N, 2)`` shift array: ``(N, 2)`` global
    shift, ``(N,)`` particles behind it and ``(N,)`` their spread."""
    n = shift.shape[1]
    global_shift = np.full((n, 2), np.nan)
    n_found = np.zeros(n, dtype=int)
    spread = np.full(n, np.nan)
    for i in range(n):
        found = np.all(np.isfinite(shift[:, i]), axis=1)
        global_shift[i], _, n_found[i], spread[i] = frame_consensus(found, shift[:, i], partial)
    return global_shift, n_found, spread


def inconsistent_partials(
    found: np.ndarray,
    shifts: np.ndarray,
    global_shift: np.ndarray,
    partial: np.ndarray,
    limit: float | None,
) -> np.ndarray:
    """Border-cut particles of one frame farther than ``limit`` px from its global shift
    (``(P,)`` bool; the caller checks the frame has >= 3 whole particles)."""
    if limit is None or not np.all(np.isfinite(global_shift)):
        return np.zeros(partial.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        deviation = np.hypot(*(shifts - global_shift).T)
        return found & partial & (deviation > limit)


def far_partials(
    shift: np.ndarray, global_shift: np.ndarray, partial: np.ndarray, limit: float | None
) -> np.ndarray:
    """The border-cut rule on a whole scan: ``(P, N)`` bool, border-cut particles farther than
    ``limit`` px from the global shift of a frame with >= 3 whole particles."""
    if limit is None or not partial.any():
        return np.zeros(shift.shape[:2], dtype=bool)
    found = np.all(np.isfinite(shift), axis=2)
    whole = np.sum(found & ~partial[:, None], axis=0) >= 3
    with np.errstate(invalid="ignore"):
        deviation = np.hypot(*np.moveaxis(shift - global_shift[None], 2, 0))
        return found & partial[:, None] & whole[None] & (deviation > limit)


def rigid_spread(shift: np.ndarray, global_shift: np.ndarray, partial: np.ndarray) -> float:
    """How much the whole particles move on their own: per whole particle with >= 3 frames,
    the RMS of its offset from the global shift about its mean; the median over them (inf
    with fewer than 3 such particles)."""
    spreads = []
    for k in np.nonzero(~partial)[0].tolist():
        offset = shift[k] - global_shift
        known = np.all(np.isfinite(offset), axis=1)
        if np.count_nonzero(known) >= 3:
            centred = offset[known] - offset[known].mean(axis=0)
            spreads.append(float(np.sqrt(np.mean(np.sum(centred**2, axis=1)))))
    return float(np.median(spreads)) if len(spreads) >= 3 else float("inf")


def partials_from_drift(
    shift: np.ndarray, global_shift: np.ndarray, partial: np.ndarray, rigid_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Border-cut particles placed by the drift where the sample moves rigidly.

    A particle cut by the frame border is registered on the part of its outline that is
    inside the frame; as the sample drifts, that part changes, and its registration is biased
    (1-2 px on ``synthetic.txm_dense``, more than the whole particles' 0.5). When the whole
    particles move with the drift (:func:`rigid_spread` <= ``rigid_px``), a border-cut
    particle's shift in a frame with >= 3 whole particles is that frame's global shift (its
    offset from the drift is 0 at frame 0, the reference, and stays so in a rigid sample).
    Frames where it was not registered stay NaN.

    Returns
    -------
    tuple
        ``(P, N, 2)`` shifts (a copy when anything changed) and ``(P, N)`` bool, the
        particle-frames placed by the drift.
    """
    placed = np.zeros(shift.shape[:2], dtype=bool)
    if not partial.any() or rigid_spread(shift, global_shift, partial) > rigid_px:
        return shift, placed
    found = np.all(np.isfinite(shift), axis=2)
    whole = np.sum(found & ~partial[:, None], axis=0) >= 3
    whole &= np.all(np.isfinite(global_shift), axis=1)
    placed = found & partial[:, None] & whole[None]
    if not placed.any():
        return shift, placed
    out = shift.copy()
    rows, frames = np.nonzero(placed)
    out[rows, frames] = global_shift[frames]
    return out, placed


def far_wholes(
    shift: np.ndarray, global_shift: np.ndarray, partial: np.ndarray, limit: float | None
) -> np.ndarray:
    """Whole particles farther than ``limit`` px from the global shift of a frame with >= 3
    whole particles: ``(P, N)`` bool (the caller checks that the sample moves rigidly).

    In a sample whose whole particles move with the drift (:func:`rigid_spread` at most
    ``track.post_edge_rigid_px``), a whole particle that leaves it by 2 px is a registration
    that went wrong (a neighbour's outline, a template re-anchored at the wrong place after the
    particle was lost and re-acquired), not the particle's own motion.
    """
    if limit is None:
        return np.zeros(shift.shape[:2], dtype=bool)
    found = np.all(np.isfinite(shift), axis=2)
    whole = np.sum(found & ~partial[:, None], axis=0) >= 3
    with np.errstate(invalid="ignore"):
        deviation = np.hypot(*np.moveaxis(shift - global_shift[None], 2, 0))
        return found & ~partial[:, None] & whole[None] & (deviation > limit)


def still_particles(
    shift: np.ndarray,
    global_shift: np.ndarray,
    *,
    min_drift_px: float,
    min_frames: int = 5,
) -> np.ndarray:
    """Tracked objects that stay in the detector frame while the sample drifts: ``(P,)`` bool.

    Over the frames where the object is registered and the global shift is at least
    ``min_drift_px`` from frame 0, an object of the sample follows the drift, a fixture of the
    detector frame (the zone-plate pattern, a blemish) stays at 0. It is still when, in at least
    ``min_frames`` such frames, its median distance from 0 is at most half its median distance
    from the global shift.

    Parameters
    ----------
    shift : numpy.ndarray
        ``(P, N, 2)`` per-particle shifts (NaN: not registered).
    global_shift : numpy.ndarray
        ``(N, 2)`` global shift (NaN: unknown).
    min_drift_px : float
        Frames with a smaller global shift carry no evidence either way.
    min_frames : int
        Fewer such frames: not judged (False).

    Returns
    -------
    numpy.ndarray
        ``(P,)`` bool.
    """
    shift = np.asarray(shift, dtype=np.float64)
    global_shift = np.asarray(global_shift, dtype=np.float64)
    if shift.ndim != 3 or shift.shape[2] != 2:
        raise ValueError(f"shift must be (P, N, 2), got {shift.shape}")
    if global_shift.shape != shift.shape[1:]:
        raise ValueError(f"global_shift must be {shift.shape[1:]}, got {global_shift.shape}")
    if min_drift_px <= 0:
        raise ValueError(f"min_drift_px must be positive, got {min_drift_px}")
    with np.errstate(invalid="ignore"):
        drifted = np.hypot(global_shift[:, 0], global_shift[:, 1]) >= min_drift_px
    still = np.zeros(shift.shape[0], dtype=bool)
    for k in range(shift.shape[0]):
        frames = drifted & np.all(np.isfinite(shift[k]), axis=1)
        if np.count_nonzero(frames) < min_frames:
            continue
        own = shift[k, frames]
        from_zero = np.median(np.hypot(own[:, 0], own[:, 1]))
        off = own - global_shift[frames]
        from_drift = np.median(np.hypot(off[:, 0], off[:, 1]))
        still[k] = from_zero <= 0.5 * from_drift
    return still


def smoothed_deviations(
    shift: np.ndarray, global_shift: np.ndarray, partial: np.ndarray, half_window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Whole particles at the drift plus their deviation from it smoothed over the frames.

    A whole particle's shift is the frame's global shift plus its own deviation from it (its
    deformation). On faint frames at low counts a single registration of that deviation is
    noisy (0.2-0.4 px on ``synthetic.txm_dense``), while the deviation of a sample whose
    particles move rigidly changes slowly; each registered frame's deviation is replaced by
    the running median of the particle's deviations over the ``2 * half_window + 1``
    frames around it (those registered, with a known global shift). The global shift does not
    change; border-cut particles and frames without a registration or a global shift are left
    as they are. Call it only for a sample that moves rigidly (:func:`rigid_spread`): a
    particle's own fast motion would be smoothed away.

    Parameters
    ----------
    shift : numpy.ndarray
        ``(P, N, 2)`` particle shifts (NaN where not registered).
    global_shift : numpy.ndarray
        ``(N, 2)`` global shift per frame (NaN where unknown).
    partial : numpy.ndarray
        ``(P,)`` bool, particle cut by the frame border.
    half_window : int
        Frames on either side of each frame in the running median (>= 1).

    Returns
    -------
    tuple
        ``(P, N, 2)`` shifts (a copy) and ``(P, N)`` bool, the particle-frames smoothed.
    """
    if half_window < 1:
        raise ValueError(f"half_window must be >= 1, got {half_window}")
    shift = np.asarray(shift, dtype=np.float64)
    deviation = shift - global_shift[None]
    known = np.all(np.isfinite(deviation), axis=2) & ~partial[:, None]
    out = shift.copy()
    if not known.any():
        return out, known
    width = 2 * half_window + 1
    padded = np.full((shift.shape[0], shift.shape[1] + 2 * half_window, 2), np.nan)
    padded[:, half_window:-half_window] = np.where(known[..., None], deviation, np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=1)
    # (P, N, 2, width); every window of a known frame holds at least that frame
    rows, frames = np.nonzero(known)
    smoothed = np.nanmedian(windows[rows, frames], axis=-1)
    out[rows, frames] = global_shift[frames] + smoothed
    return out, known
