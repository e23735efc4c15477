"""Live, incremental XANES particle tracking and the batch alignment built on it.

Frame 0 is segmented (classical detector, or the U-Net with ``detect.method="learned"``) and is
the reference geometry; particles cut by the frame border are kept and flagged partial. Every
later frame costs a few small operations per particle:

1. optical density of the frame;
2. a coarse whole-frame shift against the previous good frame (binned phase correlation) that
   predicts where every particle went, so stage jumps (e.g. feedback moves) are followed;
3. per particle (``track.registration="edge"``, the default), the outline is registered:
   the normalised gradient magnitude of the smoothed OD on a support around the footprint
   (frame border masked) is matched to the particle's template by Gauss-Newton
   (:class:`pipelines.xanes.window.EdgeTemplate`), which a change of the particle's contrast
   across the edge does not move; the template is renewed when the outline is much clearer.
   Once the background is seen to stay still in the detector frame while the sample drifts
   (zone-plate rings, :func:`pipelines.xanes.post_edge.background_stays_still`), a renewed
   template (or a late joiner's) is placed by registering frame 0 against it, not by the shift
   the rings held back (``track.reanchor_renewal``).
   A particle is "not found" (NaN) when the outlines no longer correlate or it jumped from its
   prediction; ``"silhouette"`` is the previous method (soft-mask moments, Hungarian
   assignment, silhouette refinement);
4. the global drift is the median of the particle shifts (whole particles when 3 or more are
   registered), with their number and spread; NaN and untrusted when none is registered; a
   border-cut particle farther than ``track.max_partial_deviation_px`` from the drift of 3 or
   more whole particles is NaN in that frame;
5. when the frame's contrast has risen 1.3x over the best so far, particles are detected again
   and those not tracked yet join with this frame as their reference; a tracked particle the
   new detection outlines differently (a touching-cluster member whose neighbours brighten at
   the edge) gets a new outline template from it (``track.retemplate_iou``), and so does a
   tracked particle not registered in this frame (``track.reacquire_lost_frames``: a faint frame-0
   outline that stopped matching is re-acquired with its own new reference); an object refused
   for holding a tracked particle is segmented again with size-scaled watershed seeds and a part
   of it off the tracked particles joins (``track.redetect_split_refused``); small fragments cut
   from one frame-0 component that the brighter frame sees in one object are dropped at
   :meth:`finalize` (``track.absorb_fragment_fraction``).

At :meth:`finalize`, when the background stays still (``track.post_edge_pass="auto"``), every
whole particle is registered again in the frames it was found in against its outline in the
last of them (past the edge, the clearest) and re-anchored at frame 0
(:mod:`pipelines.xanes.post_edge`); the frames before it joined or was re-acquired are
registered too (``track.post_edge_backfill``). A whole "particle" that stays in the detector
frame while the sample drifts (``track.drop_still_particles``) is dropped: NaN, no label. Then,
when the whole particles move rigidly, a
border-cut particle's shift is the frame's global shift (``track.partial_shift``,
:func:`pipelines.xanes.consensus.partials_from_drift`). The aligned per-particle ROI stacks feed the
XANES maps computed by :meth:`finalize`.

This module orchestrates; the parts are elsewhere: the numeric kernels in
:mod:`pipelines.xanes.kernels`, the per-particle state and outline templates in
:mod:`pipelines.xanes.window`, the result types in :mod:`pipelines.xanes.results`, the global
shift and the border-cut rule in :mod:`pipelines.xanes.consensus`, the post-edge pass in
:mod:`pipelines.xanes.post_edge`, the static-pattern refinement in
:mod:`pipelines.xanes.static_fit`, the silhouette registration in
:mod:`pipelines.xanes.silhouette` and the per-particle maps in :mod:`pipelines.xanes.maps`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage
from scipy.fft import next_fast_len

from pipelines.xanes.consensus import (
    far_partials,
    far_wholes,
    frame_consensus,
    global_from_shifts,
    inconsistent_partials,
    partials_from_drift,
    rigid_spread,
    smoothed_deviations,
    still_particles,
)
from pipelines.xanes.detect import detect_particles
from pipelines.xanes.kernels import (
    block_mean,
    extract_crop,
    fast_len_below,
    inside_fraction,
    plane_from_samples,
)
from pipelines.xanes.maps import paint_particle_maps
from pipelines.xanes.match import match_particles
from pipelines.xanes.params import XanesParams
from pipelines.xanes.post_edge import (
    BackgroundMotion,
    background_stays_still,
    edge_binning_of,
    post_edge_pass_applies,
    post_edge_shifts,
)
from pipelines.xanes.prepare import (
    average_frames,
    incident_counts,
    optical_density,
    remove_background,
)
from pipelines.xanes.register import (
    PhaseCorrelator,
    centre_of_mass,
    shift_image,
)
from pipelines.xanes.results import FrameResult, ParticleRoi, XanesResult
from pipelines.xanes.silhouette import frame0_silhouette, silhouette_shift
from pipelines.xanes.static_fit import static_refined_shifts
from pipelines.xanes.window import (
    Candidate,
    EdgeTemplate,
    FrameEdges,
    ParticleWindow,
    edge_scale,
)

__all__ = ["FrameResult", "ParticleRoi", "XanesResult", "XanesTracker", "align_stack"]


class XanesTracker:
    """Track the particles of frame 0 through a XANES scan, one frame at a time.

    Parameters
    ----------
    params : XanesParams
        Pipeline parameters.
    flat : numpy.ndarray, optional
        ``(H, W)`` or ``(M, H, W)`` flat-field counts (sample out of the beam).
    dark : numpy.ndarray, optional
        ``(H, W)`` or ``(K, H, W)`` dark counts.

    Examples
    --------
    >>> tracker = XanesTracker(XanesParams(), flat=flat, dark=dark)  # doctest: +SKIP
    >>> for frame, energy in zip(frames, energies, strict=True):  # doctest: +SKIP
    ...     result = tracker.add_frame(frame, energy)
    >>> final = tracker.finalize()  # doctest: +SKIP
    """

    def __init__(
        self,
        params: XanesParams = XanesParams(),
        flat: np.ndarray | None = None,
        dark: np.ndarray | None = None,
    ) -> None:
        if not isinstance(params, XanesParams):
            raise ValueError(f"params must be XanesParams, got {type(params).__name__}")
        self.params = params
        self._flat = average_frames("flat", flat)
        self._dark = average_frames("dark", dark)
        if (
            self._flat is not None
            and self._dark is not None
            and self._flat.shape != self._dark.shape
        ):
            raise ValueError(f"flat {self._flat.shape} and dark {self._dark.shape} differ in shape")
        # flat - dark once for the whole scan
        self._incident = (
            None
            if self._flat is None
            else incident_counts(self._flat, self._dark, params=params.prepare)
        )
        self._shape: tuple[int, int] | None = None
        self._labels: np.ndarray | None = None
        self._particles: list[ParticleWindow] = []
        self._results: list[FrameResult] = []
        self._stacks: list[list[np.ndarray | None]] = []
        self._prev_coarse_image: np.ndarray | None = None
        self._coarse_global = np.zeros(2)
        self._best_evidence = 0.0
        self._redetections = 0
        self._last_redetection: int | None = None
        self._late_redetection_done = False
        # frame-0 connected component of each particle (a watershed cut shares one; -1: joined)
        self._component: list[int] = []
        self._absorbed: set[int] = set()
        self._fragment_candidates: list[tuple[int, int]] = []
        # binned OD of every frame, for the static-pattern refinement at finalize
        self._edge_ods: list[np.ndarray] = []
        self._background_motion: BackgroundMotion | None = None
        self._first_edges: FrameEdges | None = None
        self._still_live: bool | None = None
        self._post_edge_applied = False
        # (P, N) particle-frames whose shift the post-edge pass found where live had none
        self._backfilled: np.ndarray | None = None
        workers = params.track.workers
        self._executor = ThreadPoolExecutor(workers, "xanes-track") if workers > 1 else None

    # ------------------------------------------------------------------ public API
    @property
    def labels(self) -> np.ndarray:
        """``(H, W)`` int32 particle labels of frame 0 (particle k -> k + 1)."""
        if self._labels is None:
            raise RuntimeError("no frame added yet: labels are defined by frame 0")
        return self._labels

    @property
    def n_particles(self) -> int:
        """Number of tracked particles (0 before the first frame)."""
        return len(self._particles)

    @property
    def results(self) -> list[FrameResult]:
        """Results of the frames added so far."""
        return list(self._results)

    def add_frame(self, frame: np.ndarray, energy_ev: float) -> FrameResult:
        """Process the next frame of the scan.

        Parameters
        ----------
        frame : numpy.ndarray
            ``(H, W)`` transmitted counts, any integer or float dtype.
        energy_ev : float
            Energy of the frame (eV).

        Returns
        -------
        FrameResult
        """
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"frame must be 2-D, got shape {frame.shape}")
        if not np.isfinite(energy_ev):
            raise ValueError(f"energy_ev must be finite, got {energy_ev}")
        if self._shape is not None and frame.shape != self._shape:
            raise ValueError(f"frame shape {frame.shape} differs from frame 0 {self._shape}")
        flat_shape = self._flat.shape if self._flat is not None else None
        if flat_shape is not None and frame.shape != flat_shape:
            raise ValueError(f"frame shape {frame.shape} differs from flat shape {flat_shape}")
        od = optical_density(
            frame, None, self._dark, params=self.params.prepare, incident=self._incident
        )
        if self._shape is None:
            result = self._start(od, float(energy_ev))
        else:
            result = self._track(od, float(energy_ev))
        self._results.append(result)
        return result

    def finalize(self) -> XanesResult:
        """Arrays of the whole scan and its XANES maps and spectra.

        Returns
        -------
        XanesResult
        """
        if self._labels is None:
            raise RuntimeError("no frame added: nothing to finalize")
        n = len(self._results)
        n_p = self.n_particles
        energies = np.array([r.energy for r in self._results], dtype=np.float64)
        com = np.full((n_p, n, 2), np.nan)
        shift = np.full((n_p, n, 2), np.nan)
        ssim = np.full((n_p, n), np.nan)
        for i, r in enumerate(self._results):
            m = r.particle_com.shape[0]
            com[:m, i] = r.particle_com
            shift[:m, i] = r.particle_shift
            ssim[:m, i] = r.ssim
        global_shift = np.stack([r.global_shift for r in self._results])
        n_found = np.array([r.n_used for r in self._results], dtype=int)
        spread = np.array([r.spread for r in self._results], dtype=np.float64)
        trusted = np.array([r.trusted for r in self._results], dtype=bool)
        self._backfilled = np.zeros((n_p, n), dtype=bool)
        if self._edge_ods and len(self._edge_ods) == n:
            shift, global_shift, n_found, spread, com = self._refined_at_finalize(
                shift, global_shift, n_found, spread, com
            )
        tp = self.params.track
        partial = self._partial()
        labels = self._labels.copy()
        if self._absorbed:
            # fragments of a particle the brighter frames see whole: no shift, no label
            absorbed = np.zeros(n_p, dtype=bool)
            absorbed[sorted(self._absorbed)] = True
            shift = shift.copy()
            shift[absorbed] = np.nan
            self._backfilled[absorbed] = False
            labels[np.isin(labels, np.nonzero(absorbed)[0] + 1)] = 0
            global_shift, n_found, spread = global_from_shifts(shift, partial)
        if tp.drop_still_particles:
            # whole ones only: a border-cut outline holds the frame's edge, which stays still
            still = (
                still_particles(shift, global_shift, min_drift_px=tp.post_edge_min_drift_px)
                & ~partial
            )
            if still.any():
                # in the detector frame, not the sample: no shift, no label
                shift = shift.copy()
                shift[still] = np.nan
                self._backfilled[still] = False
                labels[np.isin(labels, np.nonzero(still)[0] + 1)] = 0
                global_shift, n_found, spread = global_from_shifts(shift, partial)
        before = shift
        rigid = rigid_spread(shift, global_shift, partial) <= tp.post_edge_rigid_px
        if rigid and tp.max_whole_deviation_px is not None:
            far = far_wholes(shift, global_shift, partial, tp.max_whole_deviation_px)
            if far.any():
                shift = shift.copy()
                shift[far] = np.nan
                self._backfilled &= ~far
                global_shift, n_found, spread = global_from_shifts(shift, partial)
                self._recut_by_consensus(far, shift, global_shift)
        if tp.partial_shift == "drift_when_rigid":
            # the frames' global shifts do not move: border-cut particles do not vote where
            # >= 3 whole ones are registered, and only those frames are placed by the drift
            placed_shift, placed = partials_from_drift(
                shift, global_shift, partial, tp.post_edge_rigid_px
            )
            if placed.any():
                shift = placed_shift
        smoothed = np.zeros((n_p, n), dtype=bool)
        if rigid and tp.smooth_deviation_frames is not None:
            shift, smoothed = smoothed_deviations(
                shift, global_shift, partial, tp.smooth_deviation_frames
            )
        if shift is not before:
            com = np.array([p.com0 for p in self._particles]).reshape(n_p, 1, 2) + shift
        edge = np.full(self._labels.shape, np.nan, dtype=np.float32)
        white = np.full(self._labels.shape, np.nan, dtype=np.float32)
        jump_map = np.full(self._labels.shape, np.nan, dtype=np.float32)
        spectra = np.full((n_p, n), np.nan)
        spectra_raw = np.full((n_p, n), np.nan)
        stacks: list[np.ndarray] = []
        for k, particle in enumerate(self._particles):
            stack = self._particle_stack(k)
            stacks.append(stack)
            if particle.roi.mask.any():
                spectra_raw[k] = stack[:, particle.roi.mask].astype(np.float64).mean(axis=1)
            assert self._labels is not None
            painted = paint_particle_maps(
                stack,
                particle.roi,
                k + 1,
                labels,
                energies,
                params=self.params.spectra,
                edge=edge,
                white=white,
                jump=jump_map,
            )
            if painted is not None:
                frames, normalised = painted
                spectra[k, frames] = normalised
        return XanesResult(
            labels=labels,
            energies=energies,
            particle_com=com,
            particle_shift=shift,
            global_shift=global_shift,
            ssim=ssim,
            edge_energy=edge,
            whiteline_energy=white,
            edge_jump=jump_map,
            spectra=spectra,
            spectra_raw=spectra_raw,
            n_found=n_found,
            spread=spread,
            trusted=trusted,
            partial=self._partial(),
            rois=[p.roi for p in self._particles],
            aligned_stacks=stacks if self.params.keep_aligned_stacks else [],
            post_edge_applied=self._post_edge_applied,
            backfilled=self._backfilled.copy(),
            smoothed=smoothed,
        )

    @property
    def background_motion(self) -> BackgroundMotion | None:
        """How the background moved in the scan (set by :meth:`finalize` when
        ``track.post_edge_pass="auto"`` measured it; None otherwise)."""
        return self._background_motion

    @property
    def post_edge_applied(self) -> bool:
        """Whether :meth:`finalize` re-registered the particles on their post-edge outline."""
        return self._post_edge_applied

    def _refined_at_finalize(
        self,
        shift: np.ndarray,
        global_shift: np.ndarray,
        n_found: np.ndarray,
        spread: np.ndarray,
        com: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The live shifts refined by the post-edge pass (:func:`post_edge_shifts`, when
        :func:`post_edge_pass_applies`) and the static-pattern fit (``track.static_refine``),
        with the global shift and the border-cut rule taken again on them."""
        tp = self.params.track
        assert self._labels is not None and self._shape is not None
        refined = shift
        self._post_edge_applied = False
        applies, motion = post_edge_pass_applies(
            self._edge_ods, self._labels, global_shift, track=tp, still_live=self._still_live
        )
        if motion is not None:
            self._background_motion = motion
        if applies:
            outcome = post_edge_shifts(
                self._particles,
                self._edge_ods,
                refined,
                global_shift,
                shape=self._shape,
                track=tp,
            )
            refined = outcome.shift
            binning = edge_binning_of(self._shape, self._edge_ods)
            for filled in outcome.backfilled:
                self._backfill_crops(filled.particle, filled.frames, filled.shift, binning)
            self._post_edge_applied = True
        if tp.static_refine:
            refined = static_refined_shifts(
                [p.roi for p in self._particles],
                self._edge_ods,
                refined,
                shape=self._shape,
                track=tp,
            )
        if refined is shift:
            return shift, global_shift, n_found, spread, com
        partial = self._partial()
        global_shift, n_found, spread = global_from_shifts(refined, partial)
        far = far_partials(refined, global_shift, partial, tp.max_partial_deviation_px)
        if far.any():
            refined = refined.copy()
            refined[far] = np.nan
            assert self._backfilled is not None
            self._backfilled &= ~far
        n_p = self.n_particles
        com = np.array([p.com0 for p in self._particles]).reshape(n_p, 1, 2) + refined
        return refined, global_shift, n_found, spread, com

    def _keep_edge_od(self, edges: FrameEdges) -> None:
        tp = self.params.track
        if tp.registration != "edge":
            return
        if tp.static_refine:
            self._edge_ods.append(np.asarray(edges.od, dtype=np.float32))
        elif tp.post_edge_pass == "on" or (
            tp.post_edge_pass == "auto" and self._still_live is not False
        ):
            # half the memory; the OD's noise is far above float16's resolution
            self._edge_ods.append(np.asarray(edges.od, dtype=np.float16))
        elif self._edge_ods:
            # the background was seen to move with the sample: the auto pass will not run
            self._edge_ods = []

    def _backfill_crops(self, k: int, frames: np.ndarray, shift: np.ndarray, binning: int) -> None:
        """Mark particle k's backfilled frames and give them an aligned ROI for the XANES maps.

        The ROI is cut from the OD frame kept for the pass (float16) at the backfilled shift;
        frames binned for the edge images (``binning > 1``) have no full-resolution OD any
        more, and their ROI stays NaN.
        """
        assert self._backfilled is not None
        particle = self._particles[k]
        for i in frames.tolist():
            self._backfilled[k, i] = True
            if binning != 1 or self._stacks[k][i] is not None:
                continue
            od = np.asarray(self._edge_ods[i], dtype=np.float32)
            base = np.round(shift[i]).astype(int)
            crop = self._local_background_free(od, np.array(particle.roi.origin) + base, particle)
            self._stacks[k][i] = shift_image(crop, -(shift[i] - base)).astype(np.float32)

    def _recut_by_consensus(
        self, dropped: np.ndarray, shift: np.ndarray, global_shift: np.ndarray
    ) -> None:
        """Give the particle-frames dropped at finalize (``(P, N)`` bool) an aligned ROI for the
        XANES maps placed by the frame's global shift plus the particle's median offset from
        it, as the live border-cut rule does; cut from the OD kept for the post-edge pass
        (float16), the ROI stays as cut live where that OD is binned or gone."""
        if len(self._edge_ods) != shift.shape[1]:
            return
        assert self._shape is not None
        if edge_binning_of(self._shape, self._edge_ods) != 1:
            return
        for k in np.nonzero(dropped.any(axis=1))[0].tolist():
            offsets = shift[k] - global_shift
            offsets = offsets[np.all(np.isfinite(offsets), axis=1)]
            offset = np.median(offsets, axis=0) if offsets.size else np.zeros(2)
            particle = self._particles[k]
            for i in np.nonzero(dropped[k])[0].tolist():
                place = global_shift[i] + offset
                if not np.all(np.isfinite(place)):
                    continue
                od = np.asarray(self._edge_ods[i], dtype=np.float32)
                base = np.round(place).astype(int)
                origin = np.array(particle.roi.origin) + base
                crop = self._local_background_free(od, origin, particle)
                self._stacks[k][i] = shift_image(crop, -(place - base)).astype(np.float32)

    def _map(self, function, items) -> list:
        """``map`` over particles, on ``track.workers`` threads (1 is the fastest, see params)."""
        items = list(items)
        if self._executor is None or len(items) < 2:
            return [function(item) for item in items]
        return list(self._executor.map(function, items))

    def close(self) -> None:
        """Stop the worker threads (only used when ``track.workers > 1``)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ frame 0
    def _detect(
        self, od: np.ndarray, *, size_scaled_seeds: bool = False, redetect: bool = False
    ) -> np.ndarray:
        """Frame-0 labels by the detector ``params.detect.method`` selects; with
        ``size_scaled_seeds`` the watershed seeds are spaced by the particle they sit in
        (``detect.split_seeds="size_scaled"``). ``detect.split_seeds="small_beside_large"``
        applies to frame 0 only: a re-detection (``redetect``) uses the typical spacing (on the
        dense family the extra splits in later frames cost found particles and a swap). So does
        ``detect.own_peak_noise_sigmas`` (the per-object threshold): a re-detection, and its
        size-scaled re-split, use the frame's threshold (in every frame it cost dense seed 1009
        a swap and the SSRL touching cluster half its frames; at frame 0 only, neither)."""
        params = self.params.detect
        if (redetect or size_scaled_seeds) and params.own_peak_noise_sigmas is not None:
            params = params.model_copy(update={"own_peak_noise_sigmas": None})
        if size_scaled_seeds:
            params = params.model_copy(update={"split_seeds": "size_scaled"})
        elif redetect and params.split_seeds == "small_beside_large":
            params = params.model_copy(update={"split_seeds": "typical_spacing"})
        if params.method == "learned":
            # imported here: torch loads only when the learned detector is chosen
            from pipelines.xanes.detect_learned import detect_particles_learned

            return detect_particles_learned(od, params=params)
        prepared = remove_background(od, params=self.params.prepare)
        return detect_particles(prepared, params=params, background_removed=True)

    def _window_for_label(
        self, labels: np.ndarray, k: int, box: tuple[slice, slice], area_px: int
    ) -> ParticleWindow:
        """Tracking window of label ``k + 1`` of a label image, in that image's geometry."""
        tp = self.params.track
        diameter = 2.0 * np.sqrt(area_px / np.pi)
        # the detection mask can be tighter than the particle's faint rim: pad by a
        # fraction of the size so the ROI, the background ring and the support hold it
        pad = int(round(tp.pad_fraction * diameter))
        margin = tp.roi_margin_px + 2 * pad
        r0 = box[0].start - margin
        c0 = box[1].start - margin
        shape = (
            next_fast_len(box[0].stop - box[0].start + 2 * margin, real=True),
            next_fast_len(box[1].stop - box[1].start + 2 * margin, real=True),
        )
        origin = np.array([r0, c0])
        mask = extract_crop(labels, origin, shape) == k + 1
        if r0 < 0 or c0 < 0:
            mask = mask.copy()
            mask[: max(0, -r0)] = False
            mask[:, : max(0, -c0)] = False
        occupied = extract_crop(labels, origin, shape) > 0
        ring = ~ndimage.binary_dilation(occupied, iterations=2 + pad)
        com0 = centre_of_mass(labels == k + 1)
        roi = ParticleRoi(origin=(int(r0), int(c0)), shape=shape, mask=mask)
        area = float(mask.sum())
        sigma = max(tp.smooth_sigma_px, tp.smooth_fraction * 2.0 * np.sqrt(area / np.pi))
        return ParticleWindow(
            roi,
            com0,
            area,
            ring,
            tp.support_px + pad,
            search_px=tp.search_px,
            smooth_sigma=sigma,
            neighbours=occupied & ~mask,
        )

    def _edge_template(
        self, edges: FrameEdges, particle: ParticleWindow, origin: np.ndarray
    ) -> EdgeTemplate:
        tp = self.params.track
        support = particle.support
        if tp.edge_band_px > 0:
            # the outline band only: the inside of a large particle adds noise and chemistry,
            # not position
            inner = ndimage.binary_erosion(particle.roi.mask, iterations=tp.edge_band_px)
            support = support & ~inner
        diameter = 2.0 * np.sqrt(particle.area / np.pi) / edges.binning
        sigma = edge_scale(diameter, tp.edge_sigma_px, tp.edge_sigma_fraction, tp.edge_sigma_max_px)
        # the post-edge pass may replace the support by the particle's clear outline, which
        # keeps off its neighbours (EdgeTemplate.outlined)
        return EdgeTemplate(
            edges,
            origin,
            particle.roi.shape,
            support,
            sigma,
            tp.search_px + 2,
            footprint=particle.roi.mask,
            neighbours=particle.neighbours,
        )

    def _edge_binning(self, od: np.ndarray) -> int:
        return max(1, int(round(min(od.shape) / self.params.track.edge_frame_px)))

    def _start(self, od: np.ndarray, energy: float) -> FrameResult:
        self._shape = (int(od.shape[0]), int(od.shape[1]))
        labels = self._detect(od)
        self._labels = labels
        inside = labels > 0
        components, _ = ndimage.label(inside)
        component_of = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
        component_of[labels[inside]] = components[inside]  # a label lies in one component
        self._component = component_of[1:].tolist()
        tp = self.params.track
        areas = np.bincount(labels.ravel())
        for k, box in enumerate(ndimage.find_objects(labels)):
            if box is None:
                continue
            self._particles.append(self._window_for_label(labels, k, box, int(areas[k + 1])))
        n_p = len(self._particles)
        self._stacks = [[] for _ in range(n_p)]
        edges = FrameEdges(od, self._edge_binning(od))
        self._keep_edge_od(edges)
        self._first_edges = edges
        ssim = np.full(n_p, np.nan)
        for k, particle in enumerate(self._particles):
            crop = self._local_background_free(od, np.array(particle.roi.origin), particle)
            self._stacks[k].append(crop)
            silhouette, com = frame0_silhouette(particle, od, tp.threshold_fraction)
            if com is not None:
                particle.com0 = com
            particle.template_sum += silhouette
            particle.template_count = 1
            particle.edge = self._edge_template(edges, particle, np.array(particle.roi.origin))
            ssim[k] = 1.0
        self._prev_coarse_image = self._coarse_image(od)
        self._best_evidence = float(self._prev_coarse_image.std())
        com = np.array([p.com0 for p in self._particles]).reshape(n_p, 2)
        return FrameResult(
            index=0,
            energy=energy,
            global_shift=np.zeros(2),
            particle_com=com,
            particle_shift=np.zeros((n_p, 2)),
            ssim=ssim,
            found=np.ones(n_p, dtype=bool),
            n_found=n_p,
            n_used=n_p,
            spread=0.0 if n_p > 1 else float("nan"),
            partial=self._partial(),
            trusted=n_p >= tp.min_particles_trusted,
        )

    def _partial(self) -> np.ndarray:
        return np.array([p.edge is not None and p.edge.partial for p in self._particles], bool)

    # ------------------------------------------------------------------ frames > 0
    def _coarse_image(self, od: np.ndarray) -> np.ndarray:
        binned = block_mean(od, self.params.track.coarse_binning)
        rows, cols = binned.shape
        binned = binned[: fast_len_below(rows), : fast_len_below(cols)]
        high = binned - ndimage.uniform_filter(binned, 9)
        return high - high.mean()

    def _coarse_step(self, od: np.ndarray) -> np.ndarray:
        image = self._coarse_image(od)
        assert self._prev_coarse_image is not None
        d = PhaseCorrelator(self._prev_coarse_image, upsample=1).displacement(image)[0]
        self._prev_coarse_image = image
        return d * self.params.track.coarse_binning

    def _local_background_free(
        self, od: np.ndarray, origin: np.ndarray, particle: ParticleWindow
    ) -> np.ndarray:
        crop = extract_crop(od, origin, particle.roi.shape).astype(np.float32)
        if particle.ring_count >= 16:
            # fit_plane(crop, particle.ring), on the ring's samples taken once
            rows, cols = particle.ring_samples
            return crop - plane_from_samples(rows, cols, crop[rows, cols], crop.shape, crop.dtype)
        return crop - np.float32(np.percentile(crop, 10))

    def _track(self, od: np.ndarray, energy: float) -> FrameResult:
        previous = (self._coarse_global, self._prev_coarse_image)
        result = self._track_frame(od, energy)
        if not result.trusted:
            # no estimate to anchor this frame: the next frame is predicted from the last good
            # one (a blank or garbled frame must not throw every particle off its track)
            self._coarse_global, self._prev_coarse_image = previous
        return result

    def _track_frame(self, od: np.ndarray, energy: float) -> FrameResult:
        assert self._shape is not None
        self._coarse_global = self._coarse_global + self._coarse_step(od)
        n_p = self.n_particles
        predicted = np.array(
            [p.last_shift + self._coarse_global - p.last_coarse for p in self._particles]
        ).reshape(n_p, 2)
        if self.params.track.registration == "edge":
            edges = FrameEdges(od, self._edge_binning(od))
            self._keep_edge_od(edges)
            found, shifts, ssim = self._register_edges(od, edges, predicted)
            result = self._frame_result(energy, found, shifts, ssim, od)
            assert self._prev_coarse_image is not None
            evidence = float(self._prev_coarse_image.std())
            if (
                result.trusted
                and self._redetections < self.params.track.max_redetections
                and self._redetect_now(evidence, result.index)
            ):
                self._best_evidence = max(evidence, self._best_evidence)
                self._redetections += 1
                self._last_redetection = result.index
                result = self._join_new_particles(od, edges, result)
            return result
        candidates: list[Candidate] = []
        shape = self._shape

        def search(k: int) -> list[Candidate]:
            particle = self._particles[k]
            origin = np.array(particle.roi.origin) + np.round(predicted[k]).astype(int)
            if inside_fraction(origin, particle.roi.shape, shape) < 0.5:
                return []
            w_origin, window = particle.search_window(od, origin)
            return particle.candidates(window, w_origin, self.params.track.threshold_fraction)

        for found_here in self._map(search, range(n_p)):
            candidates.extend(found_here)
        found = np.zeros(n_p, dtype=bool)
        shifts = np.full((n_p, 2), np.nan)
        ssim = np.full(n_p, np.nan)
        if candidates:
            expected = np.array([p.com0 for p in self._particles]) + predicted
            matching = match_particles(
                expected,
                np.array([c.com for c in candidates]),
                ref_areas=np.array([p.area for p in self._particles]),
                areas=np.array([c.area for c in candidates]),
                params=self.params.match,
            )
            pairs = [(k, int(j)) for k, j in enumerate(matching.assignment) if j >= 0]

            def refine(pair: tuple[int, int]):
                k, j = pair
                return silhouette_shift(
                    self._particles[k], candidates[j], od, predicted[k], track=self.params.track
                )

            for (k, _), refined in zip(pairs, self._map(refine, pairs), strict=True):
                if refined is not None:
                    shifts[k], ssim[k], aligned = refined
                    self._stacks[k].append(aligned)
                    found[k] = True
        for lost in np.nonzero(~found)[0]:
            self._stacks[int(lost)].append(None)
        return self._frame_result(energy, found, shifts, ssim)

    def _redetect_now(self, evidence: float, index: int) -> bool:
        """Detect again: the frame's contrast rose ``redetect_contrast_ratio`` over the best
        so far, or, once (``track.redetect_late_frames``), that many frames passed since the
        last re-detection and the contrast is still at least ``redetect_hold_ratio`` of the best
        (particles whose own edge comes later brighten after the first re-detection)."""
        tp = self.params.track
        if evidence >= tp.redetect_contrast_ratio * self._best_evidence:
            return True
        late = tp.redetect_late_frames
        if (
            late is None
            or self._late_redetection_done
            or self._last_redetection is None
            or index - self._last_redetection < late
            or evidence < tp.redetect_hold_ratio * self._best_evidence
        ):
            return False
        self._late_redetection_done = True
        return True

    def _join_new_particles(
        self, od: np.ndarray, edges: FrameEdges, result: FrameResult
    ) -> FrameResult:
        """Detect again on a frame with more contrast; particles not tracked yet join.

        A new particle's reference is this frame, brought into frame-0 geometry by the frame's
        global shift; its earlier frames stay NaN (it was not seen there).
        """
        assert self._labels is not None
        g = np.asarray(result.global_shift, dtype=np.float64)
        base = np.round(g).astype(int)
        labels = self._detect(od, redetect=True)
        # tracked particles where they are now (frame-0 labels moved by the global shift)
        moved = ndimage.shift(self._labels, base, order=0, mode="constant", cval=0)
        occupied = moved > 0
        areas = np.bincount(labels.ravel())
        tracked_areas = np.bincount(moved.ravel(), minlength=self.n_particles + 1)
        joined = 0
        refused = np.zeros(labels.shape, dtype=bool)
        for k, box in enumerate(ndimage.find_objects(labels)):
            if box is None:
                continue
            own = labels[box] == k + 1
            if np.count_nonzero(occupied[box] & own) > 0.1 * np.count_nonzero(own):
                refused[box] |= own
                if not self.params.track.redetect_by_both_overlaps:
                    self._maybe_new_outline(edges, labels, k, box, moved, result)
                    continue
                if not self._joins_despite_overlap(
                    edges, labels, k, box, moved, tracked_areas, result
                ):
                    continue
                refused[box] &= ~own
            joined += self._join(od, edges, labels, k, box, int(areas[k + 1]), g)
        fine = self._detect(od, size_scaled_seeds=True) if refused.any() else None
        if fine is not None and self._fragment_candidates:
            self._absorb_unsplit(fine, moved)
        if fine is not None and self.params.track.redetect_split_refused:
            joined += self._join_split_off(od, edges, fine, refused, occupied, g)
        if not joined:
            return result
        n = joined
        return FrameResult(
            index=result.index,
            energy=result.energy,
            global_shift=result.global_shift,
            particle_com=np.vstack(
                [result.particle_com, [p.com0 + g for p in self._particles[-n:]]]
            ),
            particle_shift=np.vstack([result.particle_shift, np.tile(g, (n, 1))]),
            ssim=np.concatenate([result.ssim, np.ones(n)]),
            found=np.concatenate([result.found, np.ones(n, dtype=bool)]),
            n_found=result.n_found + n,
            n_used=result.n_used,
            spread=result.spread,
            partial=self._partial(),
            trusted=result.trusted,
        )

    def _join(
        self,
        od: np.ndarray,
        edges: FrameEdges,
        labels: np.ndarray,
        k: int,
        box: tuple[slice, slice],
        area: int,
        g: np.ndarray,
    ) -> bool:
        """Object ``k + 1`` of a re-detection joins as a new particle with this frame as its
        reference, brought into frame-0 geometry by the frame's global shift ``g``."""
        base = np.round(g).astype(int)
        window = self._window_for_label(labels, k, box, area)
        origin_now = np.array(window.roi.origin)
        edge = self._edge_template(edges, window, origin_now)
        if edge.model is None:
            return False
        window.roi = ParticleRoi(
            origin=(int(origin_now[0] - base[0]), int(origin_now[1] - base[1])),
            shape=window.roi.shape,
            mask=window.roi.mask,
        )
        window.com0 = window.com0 - g
        edge.offset = g.copy()  # shift of the particle when its template was taken
        window.edge = edge
        window.anchor_pending = True
        window.last_shift = g.copy()
        window.last_coarse = self._coarse_global.copy()
        self._particles.append(window)
        self._stacks.append([None] * (len(self._results)))
        crop = self._local_background_free(od, origin_now, window)
        self._stacks[-1].append(shift_image(crop, -(g - base)).astype(np.float32))
        self._paint_label(window, len(self._particles))
        return True

    def _join_split_off(
        self,
        od: np.ndarray,
        edges: FrameEdges,
        fine: np.ndarray,
        refused: np.ndarray,
        occupied: np.ndarray,
        g: np.ndarray,
    ) -> int:
        """Particles split off objects that were refused for overlapping tracked particles.

        A re-detected object can hold a tracked particle and an untracked neighbour it touches
        (the neighbour was too faint on the earlier frames, and the seed spacing fitted to a
        typical particle merged the two). The frame is segmented again with watershed seeds
        spaced by the size of the particle they sit in (``detect.split_seeds="size_scaled"``);
        a region of ``fine`` (the frame segmented so) inside the refused objects with at most
        10 % of it on tracked particles joins: the tracked particle's footprint says which part
        of the object is already tracked.
        """
        areas = np.bincount(fine.ravel())
        joined = 0
        for k, box in enumerate(ndimage.find_objects(fine)):
            if box is None:
                continue
            own = fine[box] == k + 1
            n_own = np.count_nonzero(own)
            if np.count_nonzero(refused[box] & own) < 0.9 * n_own:
                continue
            if np.count_nonzero(occupied[box] & own) > 0.1 * n_own:
                continue
            joined += self._join(od, edges, fine, k, box, int(areas[k + 1]), g)
        return joined

    def _joins_despite_overlap(
        self,
        edges: FrameEdges,
        labels: np.ndarray,
        k: int,
        box: tuple[slice, slice],
        moved: np.ndarray,
        tracked_areas: np.ndarray,
        result: FrameResult,
    ) -> bool:
        """A re-detected object that overlaps tracked particles by more than 10 % of itself:
        what it is, from the overlap as a fraction of the object and of each tracked footprint.

        - mostly inside one tracked particle, or holding most of exactly one: that particle seen
          again (:meth:`_maybe_new_outline`);
        - holding most of two or more tracked particles: they are fragments of it (a faint
          particle split at frame 0); each of them that is lost gets its outline
          (:meth:`_retemplate`);
        - otherwise, when at most half of it lies on tracked particles: a particle of its own
          that touches a tracked neighbour; it joins (True);
        - else nothing.
        """
        own = labels[box] == k + 1
        area = int(np.count_nonzero(own))
        counts = np.bincount(moved[box][own], minlength=tracked_areas.size)[: tracked_areas.size]
        counts[0] = 0
        held = counts >= 0.5 * np.maximum(tracked_areas, 1)
        held[0] = False
        if np.count_nonzero(held) >= 2:
            for tracked in np.nonzero(held)[0].tolist():
                if self._lost(tracked - 1, result):
                    self._retemplate(tracked - 1, edges, labels, k, box, result)
            self._absorb_fragments(np.nonzero(held)[0] - 1, tracked_areas[held], area)
            return False
        if counts.max() >= 0.5 * area or held.any():
            self._maybe_new_outline(edges, labels, k, box, moved, result)
            return False
        return int(counts.sum()) <= 0.5 * area

    def _absorb_fragments(self, held: np.ndarray, held_areas: np.ndarray, area: int) -> None:
        """Tracked particles ``held`` (0-based) lie in one re-detected object of ``area`` px,
        cut from one frame-0 component by the watershed. The largest stays; each other one under
        ``track.absorb_fragment_fraction`` of the object is a candidate fragment of it
        (:meth:`_absorb_unsplit` decides)."""
        fraction = self.params.track.absorb_fragment_fraction
        if fraction is None or len(held) < 2:
            return
        largest = int(held[int(np.argmax(held_areas))])
        component = self._component[largest] if largest < len(self._component) else -1
        if component < 0:
            return
        for index, footprint in zip(held.tolist(), held_areas.tolist(), strict=True):
            if (
                index != largest
                and index < len(self._component)
                and self._component[index] == component
                and footprint < fraction * area
            ):
                self._fragment_candidates.append((int(index), largest))

    def _absorb_unsplit(self, fine: np.ndarray, moved: np.ndarray) -> None:
        """A candidate fragment is absorbed when the re-detection with size-scaled seeds
        (``fine``, which keeps a small particle touching a large one apart) puts most of it in
        the same region as the particle it was cut from: the brighter frame does not support
        the frame-0 cut. Absorbed fragments are dropped at :meth:`finalize` (NaN, no label)."""

        def region(index: int) -> int:
            under = fine[moved == index + 1]
            under = under[under > 0]
            if under.size == 0:
                return -1
            counts = np.bincount(under)
            best = int(np.argmax(counts))
            return best if counts[best] >= 0.5 * np.count_nonzero(moved == index + 1) else -1

        for fragment, largest in self._fragment_candidates:
            own = region(fragment)
            if own > 0 and own == region(largest):
                self._absorbed.add(fragment)
        self._fragment_candidates = []

    def _maybe_new_outline(
        self,
        edges: FrameEdges,
        labels: np.ndarray,
        k: int,
        box: tuple[slice, slice],
        moved: np.ndarray,
        result: FrameResult,
    ) -> None:
        """Take a tracked particle's outline again from a re-detection that sees it differently.

        A particle detected on a faint frame can have a footprint that is only part of what
        the brighter frames show (a touching cluster whose members brighten at the edge): its
        outline template then stops matching. When a re-detected object covers exactly one
        tracked particle and overlaps its (moved) frame-0 footprint by IoU below
        ``track.retemplate_iou``, the particle's template is rebuilt from the new footprint,
        anchored at the particle's shift in this frame (when it was not registered: the frame's
        global shift plus the particle's median offset from it so far). Its ROI, label and
        history stay.
        """
        tp = self.params.track
        own = labels[box] == k + 1
        under = moved[box][own]
        under = under[under > 0]
        if under.size == 0:
            return
        counts = np.bincount(under)
        tracked = int(np.argmax(counts))
        if counts[tracked] < 0.9 * under.size:
            return  # covers several tracked particles (merged): no new outline from it
        index = tracked - 1
        old = moved == tracked
        union = np.count_nonzero(old) + np.count_nonzero(own) - int(counts[tracked])
        if counts[tracked] >= tp.retemplate_iou * union and not self._lost(index, result):
            return
        self._retemplate(index, edges, labels, k, box, result)

    def _retemplate(
        self,
        index: int,
        edges: FrameEdges,
        labels: np.ndarray,
        k: int,
        box: tuple[slice, slice],
        result: FrameResult,
    ) -> None:
        """Tracked particle ``index`` gets the outline of re-detected object ``k + 1`` as its
        template, anchored at its shift in this frame (when not registered: the frame's global
        shift plus its median offset from it so far)."""
        particle = self._particles[index]
        anchor = np.asarray(result.particle_shift[index], dtype=np.float64)
        if not np.all(np.isfinite(anchor)):
            # not registered in this frame: the global shift plus the particle's usual offset
            # from it (deformation) over the frames so far
            anchor = np.asarray(result.global_shift, dtype=np.float64)
            if not np.all(np.isfinite(anchor)):
                return
            anchor = anchor + self._particle_offset(index)
        area = int(np.count_nonzero(labels == k + 1))
        window = self._window_for_label(labels, k, box, area)
        edge = self._edge_template(edges, window, np.array(window.roi.origin))
        if edge.model is None:
            return
        edge.offset = np.asarray(anchor, dtype=np.float64).copy()
        particle.edge = edge
        particle.anchor_pending = True
        particle.last_shift = edge.offset.copy()
        particle.last_coarse = self._coarse_global.copy()

    def _lost(self, index: int, result: FrameResult) -> bool:
        """Whole particle ``index`` not registered in this frame nor in the frames before it,
        ``track.reacquire_lost_frames`` in all (a momentary miss is not lost; a border-cut
        particle's outline changes with the drift and is left to the border-cut rule)."""
        frames = self.params.track.reacquire_lost_frames
        edge = self._particles[index].edge
        if frames is None or edge is None or edge.partial:
            return False
        recent = [*self._results[-(frames - 1) :], result] if frames > 1 else [result]
        if len(recent) < frames:
            return False
        return not any(
            r.particle_shift.shape[0] > index and np.all(np.isfinite(r.particle_shift[index]))
            for r in recent
        )

    def _paint_label(self, window: ParticleWindow, label: int) -> None:
        """Add a joined particle's footprint to the frame-0 labels where they are free."""
        assert self._labels is not None
        r0, c0 = window.roi.origin
        rows, cols = np.nonzero(window.roi.mask)
        rows, cols = rows + r0, cols + c0
        h, w = self._labels.shape
        keep = (rows >= 0) & (cols >= 0) & (rows < h) & (cols < w)
        rows, cols = rows[keep], cols[keep]
        free = self._labels[rows, cols] == 0
        self._labels[rows[free], cols[free]] = label

    def _frame_result(
        self,
        energy: float,
        found: np.ndarray,
        shifts: np.ndarray,
        ssim: np.ndarray,
        od: np.ndarray | None = None,
    ) -> FrameResult:
        """Global shift, its support and trust from the particles registered in a frame.

        A border-cut particle whose shift departs from the global shift of >= 3 whole particles
        by more than ``track.max_partial_deviation_px`` is not found (NaN); its aligned ROI for
        the XANES maps is then placed by the global shift plus its usual offset from it
        (``od`` given), so its spectrum keeps the frame.
        """
        tp = self.params.track
        n_p = self.n_particles
        partial = self._partial()
        global_shift, voters, n_found, spread = frame_consensus(found, shifts, partial)
        if np.sum(found & ~partial) >= 3:
            dropped = inconsistent_partials(
                found, shifts, global_shift, partial, tp.max_partial_deviation_px
            )
            for index in np.nonzero(dropped)[0].tolist():
                found[index] = False
                shifts[index] = np.nan
                ssim[index] = np.nan
                self._stacks[index][-1] = (
                    None if od is None else self._aligned_by_consensus(od, index, global_shift)
                )
        for k, particle in enumerate(self._particles):
            if found[k]:
                particle.last_shift = shifts[k]
                particle.last_coarse = self._coarse_global.copy()
        trusted = bool(
            n_found >= tp.min_particles_trusted
            and (tp.max_spread_px is None or n_found < 2 or spread <= tp.max_spread_px)
            and np.all(np.isfinite(global_shift))
        )
        com = np.array([p.com0 for p in self._particles]).reshape(n_p, 2) + shifts
        return FrameResult(
            index=len(self._results),
            energy=energy,
            global_shift=global_shift,
            particle_com=com,
            particle_shift=shifts,
            ssim=ssim,
            found=found,
            n_found=int(found.sum()),
            n_used=n_found,
            spread=spread,
            partial=self._partial(),
            trusted=trusted,
        )

    def _particle_offset(self, k: int) -> np.ndarray:
        """Median offset of particle k's shift from the global shift over the frames so far
        (its deformation; zero when never both known)."""
        offsets = [
            r.particle_shift[k] - r.global_shift
            for r in self._results
            if r.particle_shift.shape[0] > k
            and np.all(np.isfinite(r.particle_shift[k]))
            and np.all(np.isfinite(r.global_shift))
        ]
        return np.median(np.array(offsets), axis=0) if offsets else np.zeros(2)

    def _aligned_by_consensus(self, od: np.ndarray, k: int, global_shift: np.ndarray) -> np.ndarray:
        """Particle k's background-free ROI aligned by the global shift plus its usual offset."""
        particle = self._particles[k]
        shift = np.asarray(global_shift, dtype=np.float64) + self._particle_offset(k)
        base = np.round(shift).astype(int)
        crop = self._local_background_free(od, np.array(particle.roi.origin) + base, particle)
        return shift_image(crop, -(shift - base)).astype(np.float32, copy=False)

    def _register_edges(
        self, od: np.ndarray, edges: FrameEdges, predicted: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contrast-invariant registration of every particle on its outline (:class:`EdgeTemplate`).

        A particle is found when the Gauss-Newton solution stays within ``search_px`` of the
        prediction and the aligned outlines correlate at least ``min_edge_ncc``; otherwise its
        shift is NaN. Its aligned, background-free ROI is kept for the XANES maps.
        """
        tp = self.params.track
        n_p = self.n_particles
        found = np.zeros(n_p, dtype=bool)
        shifts = np.full((n_p, 2), np.nan)
        score = np.full(n_p, np.nan)

        reanchor = self._reanchor_now(edges)

        def one(k: int):
            particle = self._particles[k]
            origin = np.array(particle.roi.origin)
            if particle.edge is None:
                return None
            registered = particle.edge.register(edges, predicted[k], tp.refine_iterations)
            if registered is None:
                return None
            shift, ncc, strength = registered
            if ncc < tp.min_edge_ncc or np.any(np.abs(shift - predicted[k]) > tp.max_jump_px):
                return None
            if particle.edge.maybe_update(edges, shift, strength, tp.template_update_ratio):
                particle.anchor_pending = True
            if reanchor and particle.anchor_pending and not particle.edge.partial:
                shift = self._reanchored_on_frame0(particle.edge, shift)
                particle.anchor_pending = False
            base = np.round(shift).astype(int)
            crop = self._local_background_free(od, origin + base, particle)
            aligned = shift_image(crop, -(shift - base)).astype(np.float32, copy=False)
            return shift, ncc, aligned

        for k, outcome in enumerate(self._map(one, range(n_p))):
            if outcome is None:
                self._stacks[k].append(None)
                continue
            shifts[k], score[k], aligned = outcome
            found[k] = True
            self._stacks[k].append(aligned)
        return found, shifts, score

    def _reanchor_now(self, edges: FrameEdges) -> bool:
        """``track.reanchor_renewal`` for this frame: on, off, or auto (decided once, the first
        time the last global shift reached ``post_edge_min_drift_px``, by
        :func:`background_stays_still` between frame 0 and this frame)."""
        tp = self.params.track
        if tp.reanchor_renewal != "auto":
            return tp.reanchor_renewal == "on"
        if self._still_live is not None:
            return self._still_live
        last = self._results[-1].global_shift if self._results else np.full(2, np.nan)
        if not np.all(np.isfinite(last)) or np.hypot(*last) < tp.post_edge_min_drift_px:
            return False
        assert self._first_edges is not None and self._labels is not None
        b = self._first_edges.binning
        first = np.asarray(self._first_edges.od, dtype=np.float32)
        second = np.asarray(edges.od, dtype=np.float32)
        particles = block_mean(self._labels > 0, b)[: first.shape[0], : first.shape[1]] > 0
        motion = background_stays_still(
            first, second, particles, np.asarray(last) / b, margin_px=max(2, 12 // b)
        )
        self._still_live = bool(
            motion.still_corr >= tp.post_edge_static_corr and motion.still_corr > motion.moving_corr
        )
        return self._still_live

    def _reanchored_on_frame0(self, edge: EdgeTemplate, shift: np.ndarray) -> np.ndarray:
        """Place a just renewed template by registering frame 0 against it (frame 0 at zero
        shift): its offset and the frame's shift move by the frame-0 misfit. Unchanged when
        frame 0 does not register (faint outline, or farther than ``max_jump_px``)."""
        tp = self.params.track
        assert self._first_edges is not None
        outcome = edge.register(self._first_edges, np.zeros(2), max(4, tp.refine_iterations))
        if outcome is None:
            return shift
        misfit, ncc, _ = outcome
        if ncc < tp.min_edge_ncc or np.any(np.abs(misfit) > tp.max_jump_px):
            return shift
        edge.offset = edge.offset - misfit
        return shift - misfit

    # ------------------------------------------------------------------ finalize
    def _particle_stack(self, k: int) -> np.ndarray:
        shape = self._particles[k].roi.shape
        nan = np.full(shape, np.nan, dtype=np.float32)
        return np.stack([nan if a is None else a for a in self._stacks[k]])


def align_stack(
    frames: np.ndarray,
    energies: np.ndarray,
    *,
    flat: np.ndarray | None = None,
    dark: np.ndarray | None = None,
    params: XanesParams = XanesParams(),
) -> XanesResult:
    """Align a XANES stack particle by particle and compute its maps (batch use of the tracker).

    Parameters
    ----------
    frames : numpy.ndarray
        ``(N, H, W)`` transmitted counts, any integer or float dtype, frame 0 is the reference.
    energies : numpy.ndarray
        ``(N,)`` energies in eV.
    flat, dark : numpy.ndarray, optional
        ``(H, W)`` or stacks ``(M, H, W)`` of flat-field and dark counts.
    params : XanesParams
        Pipeline parameters.

    Returns
    -------
    XanesResult
    """
    frames = np.asarray(frames)
    energies = np.asarray(energies, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (N, H, W) with N >= 1, got {frames.shape}")
    if energies.shape != (frames.shape[0],):
        raise ValueError(f"energies must have shape ({frames.shape[0]},), got {energies.shape}")
    tracker = XanesTracker(params, flat=flat, dark=dark)
    try:
        for frame, energy in zip(frames, energies, strict=True):
            tracker.add_frame(frame, float(energy))
        return tracker.finalize()
    finally:
        tracker.close()
