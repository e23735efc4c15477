"""Post-edge second pass of the XANES tracker: is the background still, and the pass itself.

On an instrument whose sample drifts under a still illumination (zone-plate rings, condenser
streaks, a flat field that does not remove them), the rings stay in the detector frame. Below
the absorption edge a particle is faint against them: its outline template, a picture of
frame 0, carries the rings, and every registration against it is pulled towards zero shift
(0.5-0.7 of the true shift on ``synthetic.txm_dense``); the error then carries into the
post-edge frames through the template renewal. Past the edge the particle is 2-4 times
clearer: a template taken there, against which every frame of the scan (frame 0 included) is
registered again, re-anchored at frame 0, is pulled much less.

Where the background moves with the sample (no still pattern) the frame-0 template is the
better reference, so the pass is applied only when :func:`background_stays_still` says so
(:func:`post_edge_pass_applies`). :func:`post_edge_shifts` is the pass, run by
:meth:`pipelines.xanes.tracker.XanesTracker.finalize` on the (binned) OD frames it kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.xanes.kernels import block_mean
from pipelines.xanes.params import TrackParams
from pipelines.xanes.window import EdgeTemplate, FrameEdges, ParticleWindow

__all__ = [
    "BackfilledFrames",
    "BackgroundMotion",
    "PostEdgeShifts",
    "background_stays_still",
    "edge_binning_of",
    "moves_rigidly",
    "pass_register",
    "post_edge_anchors",
    "post_edge_pass_applies",
    "post_edge_shifts",
    "reanchored_shifts",
]

#: frames a particle whose frame 0 did not register needs in the pass to be placed by the drift
_MIN_JOINER_FRAMES = 3

#: one particle's pass: ``(N, 2)`` registered shifts against its post-edge template and
#: ``(N,)`` bool faint frames (frame 0 and those whose outline is below 0.6 of its clearest)
Pass = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class BackgroundMotion:
    """How the background away from the particles moved between two frames.

    Attributes
    ----------
    still_corr : float
        Correlation of the band-passed background of the two frames at the same detector
        pixels (NaN when too few pixels).
    moving_corr : float
        The same where the drift took them (the second frame sampled at ``x + drift``).
    drift : numpy.ndarray
        ``(2,)`` drift (px) of the second frame against the first.
    n_pixels : int
        Background pixels compared.
    """

    still_corr: float
    moving_corr: float
    drift: np.ndarray
    n_pixels: int


def _band_pass(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    return ndimage.gaussian_filter(image, 1.0) - ndimage.gaussian_filter(image, 4.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / denominator) if denominator > 0 else float("nan")


def background_stays_still(
    first: np.ndarray,
    second: np.ndarray,
    particles: np.ndarray,
    drift: np.ndarray,
    *,
    margin_px: int = 12,
) -> BackgroundMotion:
    """Compare a frame's background with another frame's, still and moved by the drift.

    Both frames are band-passed (difference of Gaussians, sd 1 and 4 px: rings and streaks,
    not the illumination gradient); the pixels farther than ``margin_px`` from every particle
    in both frames (and from the frame border) are compared at the same detector place and at
    the place the drift moved them to.

    Parameters
    ----------
    first, second : numpy.ndarray
        ``(H, W)`` optical density of two frames of a scan.
    particles : numpy.ndarray
        ``(H, W)`` bool, the particles in ``first``'s geometry.
    drift : numpy.ndarray
        ``(2,)`` shift (px) of the sample in ``second`` against ``first``.
    margin_px : int
        Distance kept from particles and from the frame border.

    Returns
    -------
    BackgroundMotion
    """
    first = np.asarray(first)
    second = np.asarray(second)
    particles = np.asarray(particles, dtype=bool)
    if first.ndim != 2 or first.shape != second.shape or particles.shape != first.shape:
        raise ValueError(
            f"first {first.shape}, second {second.shape} and particles {particles.shape} "
            "must be one (H, W) shape"
        )
    drift = np.asarray(drift, dtype=np.float64)
    if drift.shape != (2,) or not np.all(np.isfinite(drift)):
        raise ValueError(f"drift must be 2 finite numbers, got {drift}")
    if margin_px < 0:
        raise ValueError(f"margin_px must be >= 0, got {margin_px}")
    far = ~ndimage.binary_dilation(particles, iterations=margin_px) if margin_px else ~particles
    step = np.round(drift).astype(int)
    # a background pixel x of the first frame is at x + drift in the second frame when it moves
    # with the sample; x - drift in the first frame's geometry must be away from particles too
    # for the still comparison
    usable = far & ndimage.shift(far, step, order=0, cval=False)
    edge = margin_px + int(np.max(np.abs(step)))
    usable[:edge] = usable[-edge:] = False
    usable[:, :edge] = usable[:, -edge:] = False
    n = int(np.count_nonzero(usable))
    if n < 64:
        return BackgroundMotion(float("nan"), float("nan"), drift, n)
    a = _band_pass(first)
    b = _band_pass(second)
    moved = ndimage.shift(b, -drift, order=1, mode="nearest")
    return BackgroundMotion(
        _correlation(a[usable], b[usable]), _correlation(a[usable], moved[usable]), drift, n
    )


def reanchored_shifts(registered: np.ndarray) -> np.ndarray | None:
    """Shifts against a later template, re-anchored so that frame 0 is at zero shift.

    Parameters
    ----------
    registered : numpy.ndarray
        ``(N, 2)`` shifts of a particle in every frame against a template of a later frame
        (in the reference geometry of that template; NaN rows where not registered).

    Returns
    -------
    numpy.ndarray or None
        ``(N, 2)`` shifts relative to frame 0 (NaN where not registered); None when frame 0
        was not registered (nothing to anchor on).
    """
    registered = np.asarray(registered, dtype=np.float64)
    if registered.ndim != 2 or registered.shape[1] != 2 or registered.shape[0] == 0:
        raise ValueError(f"registered must have shape (N, 2), got {registered.shape}")
    if not np.all(np.isfinite(registered[0])):
        return None
    return registered - registered[0]


def edge_binning_of(shape: tuple[int, int], edge_ods: Sequence[np.ndarray]) -> int:
    """Binning of the kept OD frames against the full frame ``shape``."""
    return max(1, round(shape[0] / edge_ods[0].shape[0]))


def post_edge_pass_applies(
    edge_ods: Sequence[np.ndarray],
    labels: np.ndarray,
    global_shift: np.ndarray,
    *,
    track: TrackParams,
    still_live: bool | None,
) -> tuple[bool, BackgroundMotion | None]:
    """``track.post_edge_pass``: on, off, or auto (the background stays still while the
    sample drifted at least ``post_edge_min_drift_px``, :func:`background_stays_still`).

    Parameters
    ----------
    edge_ods : sequence of numpy.ndarray
        The (binned) OD of every frame of the scan.
    labels : numpy.ndarray
        ``(H, W)`` frame-0 particle labels.
    global_shift : numpy.ndarray
        ``(N, 2)`` global shift per frame (NaN where unknown).
    track : TrackParams
        Tracking parameters.
    still_live : bool or None
        What the live tracker decided about the background (None: not decided).

    Returns
    -------
    tuple of (bool, BackgroundMotion or None)
        Whether the pass runs, and the background motion measured for it (auto only).
    """
    if track.post_edge_pass == "off" or track.registration != "edge":
        return False, None
    if track.post_edge_pass == "on":
        return True, None
    if still_live is False:
        return False, None  # seen live: the background moves with the sample
    magnitude = np.hypot(global_shift[:, 0], global_shift[:, 1])
    magnitude = np.where(np.isfinite(magnitude), magnitude, -1.0)
    farthest = int(np.argmax(magnitude))
    if magnitude[farthest] < track.post_edge_min_drift_px:
        return False, None
    b = edge_binning_of((int(labels.shape[0]), int(labels.shape[1])), edge_ods)
    first = np.asarray(edge_ods[0], dtype=np.float32)
    second = np.asarray(edge_ods[farthest], dtype=np.float32)
    particles = block_mean(labels > 0, b)[: first.shape[0], : first.shape[1]] > 0
    motion = background_stays_still(
        first, second, particles, global_shift[farthest] / b, margin_px=max(2, 12 // b)
    )
    applies = bool(
        motion.still_corr >= track.post_edge_static_corr and motion.still_corr > motion.moving_corr
    )
    return applies, motion


@dataclass(frozen=True)
class BackfilledFrames:
    """Frames of one particle whose shift the pass found where live had none."""

    particle: int
    frames: np.ndarray  # (F,) int frame indices
    shift: np.ndarray  # (N, 2) the particle's anchored shifts of the pass


@dataclass(frozen=True)
class PostEdgeShifts:
    """Outcome of :func:`post_edge_shifts`."""

    shift: np.ndarray  # (P, N, 2)
    backfilled: list[BackfilledFrames]


def post_edge_shifts(
    particles: Sequence[ParticleWindow],
    edge_ods: Sequence[np.ndarray],
    shift: np.ndarray,
    global_shift: np.ndarray,
    *,
    shape: tuple[int, int],
    track: TrackParams,
) -> PostEdgeShifts:
    """Every whole particle registered again in the frames it was found in, against its
    outline in the last of them, re-anchored at frame 0.

    A particle that joined later gets its frame-0 place from the same registration (not
    from its join frame's global shift); with ``track.post_edge_backfill`` the frames
    before the first one it was found in after frame 0 (before it joined or was
    re-acquired) are registered too, predicted by the frame's global shift plus the
    particle's median offset from it, and kept when they pass the same gates (their
    aligned ROIs stay out of the maps: the full frames are gone by then). Particles cut
    by the frame border (unless ``track.post_edge_partial``) keep their live shifts; so does
    any frame the new template does not register. A particle whose frame 0 does not register
    (faint, the outline does not correlate: one lost in the pre-edge frames and re-acquired)
    is placed by the drift (:func:`post_edge_anchors`), or keeps its live shifts. With
    ``track.post_edge_support="outline"`` a whole particle is then registered again on its
    outline in the clear frames (:meth:`EdgeTemplate.outlined`; a frame that does not
    register on it keeps the first registration).

    Parameters
    ----------
    particles : sequence of ParticleWindow
        The tracked particles (their outline templates).
    edge_ods : sequence of numpy.ndarray
        The (binned) OD of every frame.
    shift : numpy.ndarray
        ``(P, N, 2)`` live shifts (NaN where not registered).
    global_shift : numpy.ndarray
        ``(N, 2)`` live global shift.
    shape : tuple of int
        Full frame shape.
    track : TrackParams
        Tracking parameters.

    Returns
    -------
    PostEdgeShifts
    """
    b = edge_binning_of(shape, edge_ods)
    cache: dict[int, FrameEdges] = {}

    def edges_of(i: int) -> FrameEdges:
        if i not in cache:
            cache[i] = FrameEdges.from_binned(edge_ods[i], b)
        return cache[i]

    out = shift.copy()
    passes: dict[int, Pass] = {}
    for k, particle in enumerate(particles):
        edge = particle.edge
        if edge is None or edge.model is None or (edge.partial and not track.post_edge_partial):
            continue
        found = np.nonzero(np.all(np.isfinite(shift[k]), axis=1))[0]
        if found.size < 2:
            continue
        last = int(found[-1])
        template = edge.renewed(edges_of(last), shift[k, last])
        if template.model is None:
            continue
        frames = set(found.tolist()) | {0}
        offset = np.zeros(2)
        later = found[found > 0]
        if track.post_edge_backfill and later.size:
            # the frames before it joined or was re-acquired, predicted by the frame's
            # drift plus its usual offset (a gap inside its track is more likely a
            # neighbour's outline and stays NaN)
            frames |= set(range(int(later[0])))
            offsets = shift[k, found] - global_shift[found]
            offsets = offsets[np.all(np.isfinite(offsets), axis=1)]
            offset = np.median(offsets, axis=0) if offsets.size else offset
        predicted = np.where(
            np.all(np.isfinite(shift[k]), axis=1)[:, None], shift[k], global_shift + offset
        )
        order = sorted(frames)
        registered, strength = _pass_of(edge, template, order, predicted, edges_of, track)
        if track.post_edge_support == "outline" and not edge.partial:
            # a whole particle: register again on its outline in the clear frames (its
            # frame-0 mask lies inside a faint particle's outline)
            chosen = _clear_frames(registered, strength)
            if len(chosen) >= 2:
                outlined = edge.outlined(
                    [edges_of(i) for i in chosen],
                    registered[chosen],
                    level=track.post_edge_outline_level,
                    grow_px=track.post_edge_outline_grow_px,
                )
                # (unchanged when the clear frames show no outline: nothing to retake)
                retaken = (
                    None if outlined is edge else outlined.renewed(edges_of(last), shift[k, last])
                )
                if retaken is not None and retaken.model is not None:
                    again, strength_again = _pass_of(
                        outlined, retaken, order, predicted, edges_of, track
                    )
                    # a frame the outline does not register keeps the first registration
                    # (the same frame's templates at the same shift: the same geometry)
                    done = np.all(np.isfinite(again), axis=1)
                    registered[done] = again[done]
                    strength[done] = strength_again[done]
        if not np.all(np.isfinite(registered[0])) and track.post_edge_anchor != "faint_frames":
            continue  # frame 0 not registered: nothing to anchor on
        valid = np.all(np.isfinite(registered), axis=1)
        top = np.nanmax(np.where(valid, strength, np.nan), initial=0)
        faint = valid & (strength < 0.6 * top)
        faint[0] = True
        passes[k] = (registered.copy(), faint)
    partial = [p.edge is not None and p.edge.partial for p in particles]
    anchors = post_edge_anchors(passes, partial, track=track)
    backfilled = []
    for k, (registered, _) in passes.items():
        if k not in anchors:
            continue  # frame 0 not registered and no drift to place it by: live shifts
        anchored = registered - anchors[k]
        keep = np.all(np.isfinite(anchored), axis=1)
        if not track.post_edge_backfill or not np.all(np.isfinite(registered[0])):
            # placed by the drift (frame 0 did not register): only its live frames move;
            # its faint frames before it was re-acquired stay NaN (as live)
            keep &= np.all(np.isfinite(shift[k]), axis=1)
        out[k, keep] = anchored[keep]
        filled = keep & ~np.all(np.isfinite(shift[k]), axis=1)
        backfilled.append(BackfilledFrames(k, np.nonzero(filled)[0], anchored))
    return PostEdgeShifts(out, backfilled)


def _pass_of(
    edge: EdgeTemplate,
    template: EdgeTemplate,
    order: list[int],
    predicted: np.ndarray,
    edges_of: Callable[[int], FrameEdges],
    track: TrackParams,
) -> Pass:
    """One particle's frames registered against ``template`` (``edge`` renewed at its last
    frame) and, with ``track.post_edge_template="mean"``, again against the mean of the clear
    outlines so found: ``(N, 2)`` shifts and ``(N,)`` outline strengths."""
    registered, strength = pass_register(template, order, predicted, edges_of, track=track)
    if track.post_edge_template == "mean":
        chosen = _clear_frames(registered, strength)
        if len(chosen) >= 2:
            mean = edge.renewed_mean([edges_of(i) for i in chosen], registered[chosen])
            if mean.model is not None:
                registered, strength = pass_register(mean, order, predicted, edges_of, track=track)
    return registered, strength


def _clear_frames(registered: np.ndarray, strength: np.ndarray) -> list[int]:
    """Registered frames whose outline is at least 0.6 of the strongest."""
    clear = np.all(np.isfinite(registered), axis=1)
    clear &= strength >= 0.6 * np.nanmax(np.where(clear, strength, np.nan), initial=0)
    return np.nonzero(clear)[0].tolist()


def moves_rigidly(passes: dict[int, Pass], drift: np.ndarray, *, rigid_px: float) -> bool:
    """Whether the particles move with the drift (the faint-frame anchor assumes it): on
    each particle's clear frames, where registration is accurate, its offset from the
    drift varies by at most ``rigid_px`` (``track.post_edge_rigid_px``; RMS about its mean,
    median over the particles). A sample that deforms during the scan keeps the frame-0
    anchor."""
    spreads = []
    for registered, faint in passes.values():
        relative = registered - registered[0] - drift
        clear = ~faint & np.all(np.isfinite(relative), axis=1)
        if np.count_nonzero(clear) >= 3:
            offset = relative[clear] - relative[clear].mean(axis=0)
            spreads.append(float(np.sqrt(np.mean(np.sum(offset**2, axis=1)))))
    return bool(spreads) and float(np.median(spreads)) <= rigid_px


def pass_register(
    template: EdgeTemplate,
    frames: list[int],
    predicted: np.ndarray,
    edges_of: Callable[[int], FrameEdges],
    *,
    track: TrackParams,
) -> tuple[np.ndarray, np.ndarray]:
    """One particle's frames registered against a post-edge template: ``(N, 2)`` shifts
    (NaN where not registered or failing the live gates) and ``(N,)`` outline strengths."""
    registered = np.full(predicted.shape, np.nan)
    strength = np.full(predicted.shape[0], np.nan)
    iterations = max(4, track.refine_iterations)
    for i in frames:
        if not np.all(np.isfinite(predicted[i])):
            continue
        outcome = template.register(edges_of(i), predicted[i], iterations)
        if outcome is None:
            continue
        s, ncc, strength[i] = outcome
        if ncc >= track.min_edge_ncc and np.all(np.abs(s - predicted[i]) <= track.max_jump_px):
            registered[i] = s
    return registered, strength


def post_edge_anchors(
    passes: dict[int, Pass], partial: Sequence[bool], *, track: TrackParams
) -> dict[int, np.ndarray]:
    """Where each particle's frame 0 sits against its post-edge template.

    ``track.post_edge_anchor="frame0"``: its frame-0 registration. ``"faint_frames"``:
    frame 0 alone is one faint, noisy registration whose error would stay in every frame
    of the particle; instead the particle's faint frames (frame 0 and those whose outline
    is below 0.6 of its clearest) are each compared with the drift of the frame (the
    median over the particles of their frame-0-anchored shifts) and the median of the
    differences is the anchor (with 3 or more particles; else frame 0). ``partial[k]``:
    particle k is cut by the frame border (it votes for the drift only when fewer than 3
    whole particles passed).

    A particle whose frame 0 did not register (NaN row 0: lost in the faint frames and
    re-acquired, or joined later) does not vote; with ``"faint_frames"`` its anchor is the
    median over its clear frames (3 or more) of its registration minus the drift, when that
    offset varies there by at most ``track.post_edge_rigid_px`` (RMS about the median).
    Otherwise it gets no anchor (absent from the result: it keeps its live shifts, which
    place it by the global shift of the frame it was re-acquired in).
    """
    frame0 = {
        k: registered[0].copy()
        for k, (registered, _) in passes.items()
        if np.all(np.isfinite(registered[0]))
    }
    if track.post_edge_anchor == "frame0" or len(frame0) < 3:
        return frame0
    whole = [k for k in frame0 if not partial[k]]
    voters = whole if len(whole) >= 3 else list(frame0)
    relative = np.stack([passes[k][0] - passes[k][0][0] for k in voters])
    counted = np.sum(np.all(np.isfinite(relative), axis=2), axis=0)
    drift = np.full(relative.shape[1:], np.nan)
    enough = counted >= 3
    if enough.any():
        drift[enough] = np.nanmedian(relative[:, enough], axis=0)
    if not moves_rigidly({k: passes[k] for k in frame0}, drift, rigid_px=track.post_edge_rigid_px):
        return frame0
    anchors = {}
    for k, (registered, faint) in passes.items():
        if k not in frame0:
            # frame 0 did not register (a particle lost in the faint frames and re-acquired,
            # or one that joined later): its clear frames against the drift, when its offset
            # from the drift varies there by at most rigid_px as the others' do (else live)
            usable = ~faint & np.all(np.isfinite(registered), axis=1)
            usable &= np.all(np.isfinite(drift), axis=1)
            if np.count_nonzero(usable) >= _MIN_JOINER_FRAMES:
                offsets = registered[usable] - drift[usable]
                anchor = np.median(offsets, axis=0)
                spread = float(np.sqrt(np.mean(np.sum((offsets - anchor) ** 2, axis=1))))
                if spread <= track.post_edge_rigid_px:
                    anchors[k] = anchor
            continue
        usable = faint & np.all(np.isfinite(drift), axis=1)
        usable[0] = True
        anchors[k] = np.median(registered[usable] - drift[usable], axis=0)
    return anchors
