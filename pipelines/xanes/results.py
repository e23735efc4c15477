"""Result types of the XANES tracker: per frame, per particle ROI and per scan."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FrameResult", "ParticleRoi", "XanesResult"]


@dataclass(frozen=True)
class FrameResult:
    """Tracking result of one frame (pixels, (row, col), frame 0 is the reference).

    Attributes
    ----------
    index : int
        Frame index (0-based, order of :meth:`XanesTracker.add_frame` calls).
    energy : float
        Energy of the frame (eV).
    global_shift : numpy.ndarray
        ``(2,)`` rigid drift: median of the found particles' shifts; NaN when no particle was
        registered (the drift is then unknown, never 0.0).
    particle_com : numpy.ndarray
        ``(P, 2)`` centre of every particle, NaN rows when not found.
    particle_shift : numpy.ndarray
        ``(P, 2)`` ``particle_com - particle_com_frame0``.
    ssim : numpy.ndarray
        ``(P,)`` similarity of the aligned particle to its template, NaN when not found: SSIM
        of the silhouettes (``track.registration="silhouette"``) or normalised correlation of
        the outlines (``"edge"``).
    found : numpy.ndarray
        ``(P,)`` bool.
    n_found : int
        Number of particles found.
    n_used : int
        Number of particles behind ``global_shift``: the whole particles registered in the
        frame, or all registered ones (also those cut by the border) when fewer than 3 whole
        ones were.
    spread : float
        Robust spread (1.4826 MAD, px, both axes pooled) of the found particles' shifts around
        ``global_shift``; NaN with fewer than 2 particles.
    partial : numpy.ndarray
        ``(P,)`` bool: the particle is cut by the frame border (registered on its visible
        outline only).
    trusted : bool
        True when ``global_shift`` is backed by at least ``track.min_particles_trusted``
        particles (and, when ``track.max_spread_px`` is set, a spread at most that): only
        then may it drive the drift feedback.
    """

    index: int
    energy: float
    global_shift: np.ndarray
    particle_com: np.ndarray
    particle_shift: np.ndarray
    ssim: np.ndarray
    found: np.ndarray
    n_found: int
    n_used: int = 0
    spread: float = float("nan")
    partial: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    trusted: bool = False


@dataclass(frozen=True)
class ParticleRoi:
    """Box of a particle's ROI in frame-0 geometry and its mask inside the box."""

    origin: tuple[int, int]
    shape: tuple[int, int]
    mask: np.ndarray


@dataclass
class XanesResult:
    """Result of a XANES scan alignment (see the CLI contract in the README).

    Attributes
    ----------
    labels : numpy.ndarray
        ``(H, W)`` int32, particle k has label k + 1 in frame 0.
    energies : numpy.ndarray
        ``(N,)`` float64 energies in frame order.
    particle_com, particle_shift : numpy.ndarray
        ``(P, N, 2)`` float64.
    global_shift : numpy.ndarray
        ``(N, 2)`` float64, NaN rows for frames without a registered particle.
    n_found : numpy.ndarray
        ``(N,)`` int: particles behind every global shift (:attr:`FrameResult.n_used`).
    spread : numpy.ndarray
        ``(N,)`` float64 spread of the particle shifts per frame (NaN below 2 particles).
    trusted : numpy.ndarray
        ``(N,)`` bool: see :attr:`FrameResult.trusted`.
    partial : numpy.ndarray
        ``(P,)`` bool: particles cut by the frame border.
    ssim : numpy.ndarray
        ``(P, N)`` float64 SSIM of the aligned ROI against the template.
    edge_energy, whiteline_energy : numpy.ndarray
        ``(H, W)`` float32 eV in frame-0 geometry, NaN outside particles and where masked.
    edge_jump : numpy.ndarray
        ``(H, W)`` float32 OD edge jump, NaN outside particles.
    spectra : numpy.ndarray
        ``(P, N)`` float64 mean normalised absorbance per particle in frame order.
    spectra_raw : numpy.ndarray
        ``(P, N)`` float64 mean background-free optical density of each particle's pixels in
        frame order, before normalisation: known wherever the particle was found, also when
        the spectrum cannot be normalised (NaN where not found).
    rois : list of ParticleRoi
        ROI box of every particle.
    aligned_stacks : list of numpy.ndarray
        Per particle ``(N, h, w)`` float32 background-free OD aligned to frame 0 (NaN frames
        where the particle was not found); empty when ``keep_aligned_stacks`` is False.
    post_edge_applied : bool
        The finalize-time post-edge pass (``track.post_edge_pass``) re-registered the
        particles on their post-edge outline.
    backfilled : numpy.ndarray
        ``(P, N)`` bool: the particle's shift in that frame comes from the post-edge pass's
        backfill (``track.post_edge_backfill``; not registered live). Its aligned ROI is cut
        from the OD kept for the pass (NaN when that OD was binned, frames over
        ``track.edge_frame_px``).
    smoothed : numpy.ndarray
        ``(P, N)`` bool: the particle's shift in that frame is the global shift plus its
        deviation from it smoothed over the neighbouring frames (``track.smooth_deviation_frames``,
        applied at finalize when the whole particles move rigidly).
    """

    labels: np.ndarray
    energies: np.ndarray
    particle_com: np.ndarray
    particle_shift: np.ndarray
    global_shift: np.ndarray
    ssim: np.ndarray
    edge_energy: np.ndarray
    whiteline_energy: np.ndarray
    edge_jump: np.ndarray
    spectra: np.ndarray
    n_found: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    spread: np.ndarray = field(default_factory=lambda: np.zeros(0))
    trusted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    partial: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    spectra_raw: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    rois: list[ParticleRoi] = field(default_factory=list)
    aligned_stacks: list[np.ndarray] = field(default_factory=list)
    post_edge_applied: bool = False
    backfilled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    smoothed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
