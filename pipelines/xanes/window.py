"""Per-particle tracking state: the particle's ROI, search window geometry and template."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.xanes.kernels import (
    CROSS,
    GradientModel,
    block_mean,
    box_dilation,
    dot,
    extract_crop,
    fill_holes,
    gaussian_weights,
    partition_percentile,
    plane_from_samples,
    plane_samples,
)
from pipelines.xanes.register import centre_of_mass, shift_image
from pipelines.xanes.results import ParticleRoi

__all__ = ["Candidate", "ParticleWindow", "bin_mask"]


@dataclass(frozen=True)
class Candidate:
    """A particle-like component found in a search window."""

    com: np.ndarray  # (2,) frame coordinates
    area: float
    silhouette: np.ndarray  # soft mask of the whole window (shared by its candidates)
    background: np.ndarray  # background plane of the window
    origin: np.ndarray  # window origin in the frame


class ParticleWindow:
    """Tracking state of one reference particle and the fixed geometry of its windows."""

    def __init__(
        self,
        roi: ParticleRoi,
        com0: np.ndarray,
        area: float,
        ring: np.ndarray,
        support_px: int,
        *,
        search_px: int,
        smooth_sigma: float,
        neighbours: np.ndarray | None = None,
    ) -> None:
        self.roi = roi
        # the other particles' masks in this ROI (None: not known)
        self.neighbours = neighbours
        self.com0 = com0
        self.area = area
        self.ring = ring
        # the particle with a margin: a level estimate from it does not depend on small shifts
        self.cover = ndimage.binary_dilation(roi.mask, iterations=3)
        self.support = ndimage.binary_dilation(roi.mask, iterations=support_px)
        self.template_sum = np.zeros(roi.shape, dtype=np.float64)
        self.template_count = 0
        self.last_shift = np.zeros(2)
        self.last_coarse = np.zeros(2)
        # search window: the ROI with a margin of search_px; the reference ring (background
        # plane samples) and cover (particle level) in window coordinates
        h, w = roi.shape
        self.search_px = search_px
        self.window_shape = (h + 2 * search_px, w + 2 * search_px)
        self.ring_count = int(np.count_nonzero(ring))
        self.cover_count = int(np.count_nonzero(self.cover))
        ring_rows, ring_cols = plane_samples(ring)
        # the ring's plane samples in ROI coordinates, and in window coordinates
        self.ring_samples = (ring_rows, ring_cols)
        self.ring_rows, self.ring_cols = ring_rows + search_px, ring_cols + search_px
        self.ring_index = np.ravel_multi_index((self.ring_rows, self.ring_cols), self.window_shape)
        cover_rows, cover_cols = np.nonzero(self.cover)
        self.cover_index = np.ravel_multi_index(
            (cover_rows + search_px, cover_cols + search_px), self.window_shape
        )
        self.smooth_weights = gaussian_weights(smooth_sigma) if smooth_sigma > 1e-15 else None
        self._template_cache: tuple[int, np.ndarray, tuple[np.ndarray, float, float]] | None = None
        self._model_cache: tuple[int, GradientModel] | None = None
        self.edge: EdgeTemplate | None = None
        # the outline template was not taken in frame 0 (renewed, or a particle that joined
        # later): its place relative to frame 0 is still the shift it was taken at
        self.anchor_pending = False

    def search_window(self, od: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed search window around a ROI origin: ``(window origin, window)``.

        The smoothing is ``gaussian_filter`` (reflect mode) with the particle's sigma
        (``track.smooth_sigma_px``, at least ``smooth_fraction`` of its diameter), its kernel
        computed once per self.
        """
        w_origin = origin - self.search_px
        window = np.asarray(extract_crop(od, w_origin, self.window_shape), dtype=np.float32)
        weights = self.smooth_weights
        if weights is None:
            return w_origin, window.copy()
        smoothed = np.empty(window.shape, dtype=np.float32)
        ndimage.correlate1d(window, weights, axis=0, output=smoothed, mode="reflect")
        ndimage.correlate1d(smoothed, weights, axis=1, output=smoothed, mode="reflect")
        return w_origin, smoothed

    def candidates(
        self, window: np.ndarray, w_origin: np.ndarray, threshold_fraction: float
    ) -> list[Candidate]:
        """Particle-like components of a search window, with their soft masks and moments.

        The window's background plane (fitted on the reference ring) is removed; the mask is
        the window above ``threshold_fraction`` of the particle level, holes filled; the soft
        mask ramps linearly from the background to that threshold, so its centre of mass is
        sub-pixel and insensitive to the chemistry-dependent contrast inside the self.
        """
        if self.ring_count < 16 or self.cover_count < 4:
            return []
        rows, cols = self.ring_rows, self.ring_cols
        samples = np.take(window, self.ring_index)
        background = plane_from_samples(rows, cols, samples, window.shape, window.dtype)
        window = window - background
        level = partition_percentile(np.take(window, self.cover_index), 90)
        if level <= 0:
            return []
        contrast = threshold_fraction * level
        labels, n = ndimage.label(fill_holes(window > contrast), structure=CROSS)
        if n == 0:
            return []
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        kept = np.nonzero(areas[1:] >= max(4.0, 0.2 * self.area))[0] + 1
        if kept.size == 0:
            return []
        soft = window / np.float32(contrast)
        np.clip(soft, 0.0, 1.0, out=soft)
        boxes = ndimage.find_objects(labels)
        out = []
        for lab in kept:
            # the component grown by 2 px into the background, in its box grown by 2 px
            box = boxes[lab - 1]
            r0, c0 = max(box[0].start - 2, 0), max(box[1].start - 2, 0)
            near = (slice(r0, box[0].stop + 2), slice(c0, box[1].stop + 2))
            near_labels = labels[near]
            own = near_labels == lab
            grown = box_dilation(own, 2)
            region = grown & ((near_labels == 0) | own)
            weights = np.where(region, soft[near], np.float32(0.0))
            out.append(
                Candidate(
                    com=centre_of_mass(weights) + (r0, c0) + w_origin,
                    area=float(areas[lab]),
                    silhouette=soft,
                    background=background,
                    origin=w_origin,
                )
            )
        return out

    def template(self) -> np.ndarray:
        return self._template_state()[1]

    def template_stats(self) -> tuple[np.ndarray, float, float]:
        """Template minus its mean, its mean and variance (for the SSIM)."""
        return self._template_state()[2]

    def gradient_model(self) -> GradientModel:
        """Gauss-Newton model of the current template on the support (rebuilt on update)."""
        if self._model_cache is None or self._model_cache[0] != self.template_count:
            self._model_cache = (self.template_count, GradientModel(self.template(), self.support))
        return self._model_cache[1]

    def _template_state(self) -> tuple[int, np.ndarray, tuple[np.ndarray, float, float]]:
        if self._template_cache is None or self._template_cache[0] != self.template_count:
            template = self.template_sum / max(1, self.template_count)
            mean = template.mean()
            stats = (template - mean, float(mean), float(template.var()))
            self._template_cache = (self.template_count, template, stats)
        return self._template_cache


def frame_edges(od: np.ndarray, sigma: float) -> np.ndarray:
    """Gradient magnitude of the Gaussian-smoothed OD frame (float32, central differences).

    A particle's outline is where its OD steps from the background: the gradient magnitude
    peaks there whatever the absorption level inside, and a scale change of the contrast only
    scales it (removed by :class:`EdgeTemplate`'s normalisation). :class:`FrameEdges` computes
    the same values only where the particles need them.

    Parameters
    ----------
    od : numpy.ndarray
        ``(H, W)`` optical density.
    sigma : float
        Smoothing sd (px); 0 for none.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 gradient magnitude (central differences), after clamping the OD to
        its robust range widened by half of it on either side (dead and hot pixels).
    """
    image = np.asarray(od, dtype=np.float32)
    return edges_in_box(image, sigma, clamp_range(image), (0, image.shape[0]), (0, image.shape[1]))


def clamp_range(image: np.ndarray) -> tuple[float, float]:
    """The OD range :func:`frame_edges` clamps a float32 frame to: its robust range (0.1 to
    99.9 %, on every 4th pixel) widened by half of it on either side.

    Dead and hot pixels are static in the detector frame; their huge gradients would hold a
    particle's registration at zero shift.
    """
    sample = image[::4, ::4].ravel()
    lo, hi = np.percentile(sample, [0.1, 99.9]) if sample.size >= 16 else (-np.inf, np.inf)
    span = hi - lo
    return lo - 0.5 * span, hi + 0.5 * span


def edges_in_box(
    image: np.ndarray,
    sigma: float,
    bounds: tuple[float, float],
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> np.ndarray:
    """:func:`frame_edges` of a float32 frame on the box ``rows`` x ``cols`` only (bit for bit).

    The box is filtered with a margin of the kernel radius + 1 (clipped at the frame, where
    the smoothing reflects as on the whole frame); the gradient is 0 on the frame's outer
    rows and columns, as there.
    """
    h, w = image.shape
    weights = gaussian_weights(sigma).astype(np.float32) if sigma > 0 else None
    pad = (weights.size // 2 if weights is not None else 0) + 1
    r0, r1 = max(rows[0] - pad, 0), min(rows[1] + pad, h)
    c0, c1 = max(cols[0] - pad, 0), min(cols[1] + pad, w)
    region = np.clip(image[r0:r1, c0:c1], bounds[0], bounds[1])
    if weights is not None:
        smooth = np.empty(region.shape, dtype=np.float32)
        ndimage.correlate1d(region, weights, axis=0, output=smooth, mode="reflect")
        ndimage.correlate1d(smooth, weights, axis=1, output=smooth, mode="reflect")
    else:
        smooth = region
    # output rows/cols of the box whose central differences exist (not the frame's outer ones)
    top, left = max(rows[0], 1), max(cols[0], 1)
    bottom, right = max(min(rows[1], h - 1), top), max(min(cols[1], w - 1), left)
    out = np.zeros((rows[1] - rows[0], cols[1] - cols[0]), dtype=np.float32)
    # differences into float32 (the clamped OD can be float64 when sigma is 0), then squared
    gr = np.empty((bottom - top, out.shape[1]), dtype=np.float32)
    np.subtract(
        smooth[top - r0 + 1 : bottom - r0 + 1, cols[0] - c0 : cols[1] - c0],
        smooth[top - r0 - 1 : bottom - r0 - 1, cols[0] - c0 : cols[1] - c0],
        out=gr,
    )
    gc = np.empty((out.shape[0], right - left), dtype=np.float32)
    np.subtract(
        smooth[rows[0] - r0 : rows[1] - r0, left - c0 + 1 : right - c0 + 1],
        smooth[rows[0] - r0 : rows[1] - r0, left - c0 - 1 : right - c0 - 1],
        out=gc,
    )
    out[top - rows[0] : bottom - rows[0]] = np.multiply(gr, gr, out=gr)
    out[:, left - cols[0] : right - cols[0]] += np.multiply(gc, gc, out=gc)
    return np.sqrt(out, out=out)


class FrameEdges:
    """:func:`frame_edges` of one frame at the smoothing scales its particles use (lazily).

    Only the tiles of the frame that crops ask for (:meth:`crop`) are computed, each once;
    their values are those of :func:`frame_edges` on the whole frame, bit for bit.

    Parameters
    ----------
    od : numpy.ndarray
        ``(H, W)`` optical density of the frame.
    binning : int
        Edge images are computed on the frame block-averaged by this factor (large frames:
        the particles are as many pixels across after binning as in a 512 px frame, and the
        smoothing costs a quarter).
    """

    TILE_PX = 32

    def __init__(self, od: np.ndarray, binning: int = 1) -> None:
        self.binning = int(binning)
        self.od = block_mean(od, self.binning) if self.binning > 1 else od
        self.shape = self.od.shape
        self._image: np.ndarray | None = None
        self._bounds: tuple[float, float] | None = None
        # sigma -> (edge image, computed tiles)
        self._cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_binned(cls, od: np.ndarray, binning: int) -> FrameEdges:
        """Edge images of a frame already binned by ``binning`` (a kept :attr:`od`)."""
        edges = cls(np.asarray(od, dtype=np.float32))
        edges.binning = int(binning)
        return edges

    def at(self, sigma: float) -> np.ndarray:
        """Edge image at smoothing ``sigma`` (binned px), the whole frame."""
        return self._filled(sigma, (0, self.shape[0]), (0, self.shape[1]))

    def crop(self, sigma: float, origin: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``extract_crop(self.at(sigma), origin, shape)``, computing only the tiles it needs."""
        h, w = self.shape
        r0, c0 = int(origin[0]), int(origin[1])
        rows = (min(max(r0, 0), h - 1), min(max(r0 + shape[0] - 1, 0), h - 1) + 1)
        cols = (min(max(c0, 0), w - 1), min(max(c0 + shape[1] - 1, 0), w - 1) + 1)
        return extract_crop(self._filled(sigma, rows, cols), origin, shape)

    def _filled(self, sigma: float, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The edge image at ``sigma``, computed at least on the box ``rows`` x ``cols``."""
        if self._image is None:
            self._image = np.asarray(self.od, dtype=np.float32)
            self._bounds = clamp_range(self._image)
        assert self._bounds is not None
        h, w = self.shape
        t = self.TILE_PX
        if sigma not in self._cache:
            tiles = np.zeros((-(-h // t), -(-w // t)), dtype=bool)
            self._cache[sigma] = (np.empty((h, w), dtype=np.float32), tiles)
        image, done = self._cache[sigma]
        tr0, tr1 = rows[0] // t, -(-rows[1] // t)
        tc0, tc1 = cols[0] // t, -(-cols[1] // t)
        missing = ~done[tr0:tr1, tc0:tc1]
        if missing.any():
            # the bounding box of the missing tiles (tiles inside it already done come out
            # the same again)
            mr, mc = np.nonzero(missing.any(axis=1))[0], np.nonzero(missing.any(axis=0))[0]
            box_rows = ((tr0 + mr[0]) * t, min((tr0 + mr[-1] + 1) * t, h))
            box_cols = ((tc0 + mc[0]) * t, min((tc0 + mc[-1] + 1) * t, w))
            image[box_rows[0] : box_rows[1], box_cols[0] : box_cols[1]] = edges_in_box(
                self._image, sigma, self._bounds, box_rows, box_cols
            )
            done[tr0 + mr[0] : tr0 + mr[-1] + 1, tc0 + mc[0] : tc0 + mc[-1] + 1] = True
        return image


def edge_scale(diameter_px: float, minimum: float, fraction: float, maximum: float) -> float:
    """Smoothing of a particle's edge images: ``fraction`` of its diameter, within the bounds,
    rounded to ``minimum`` times a power of two, so that a frame needs few edge images."""
    maximum = max(maximum, minimum)
    sigma = min(max(fraction * diameter_px, minimum), maximum)
    level = minimum * 2.0 ** float(np.round(np.log2(sigma / minimum)))
    return min(level, maximum)


def bin_mask(mask: np.ndarray, origin: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """A ROI mask on the grid of a frame binned by ``factor``: (binned origin, binned mask)."""
    if factor == 1:
        return np.asarray(origin, dtype=int), mask
    origin = np.asarray(origin, dtype=int)
    start = np.floor_divide(origin, factor)
    lead = origin - start * factor
    rows = -(-(mask.shape[0] + lead[0]) // factor) * factor
    cols = -(-(mask.shape[1] + lead[1]) // factor) * factor
    padded = np.zeros((rows, cols), dtype=np.float32)
    padded[lead[0] : lead[0] + mask.shape[0], lead[1] : lead[1] + mask.shape[1]] = mask
    return start, block_mean(padded, factor) > 0.5


class EdgeTemplate:
    """Contrast-invariant registration of one particle: its outline, not its grey levels.

    The template is the particle's edge image (:func:`frame_edges`) on a support around its
    footprint, normalised to unit RMS; a frame's edge image at the predicted place is
    normalised the same way and registered to it by Gauss-Newton (:class:`GradientModel`), so
    scaling the particle's contrast changes nothing. Pixels near the frame border are left out
    of the support (a particle cut by the border is registered on its visible outline only,
    and the border line itself, which does not move with the sample, never enters).

    The template is replaced when a frame shows the outline much more clearly (the edge of
    the absorption edge raises the contrast): ``offset`` remembers where the particle sat in
    the crop the new template came from, so later shifts stay relative to the reference.
    On binned edge images (:class:`FrameEdges`) the work is done on the binned grid and the
    shifts are returned in full-resolution pixels.

    Parameters
    ----------
    edges : FrameEdges
        Edge images of the reference frame.
    origin : numpy.ndarray
        Integer ROI origin in the reference frame (full-resolution pixels).
    shape : tuple of int
        ROI shape.
    support : numpy.ndarray
        ``shape`` bool: the footprint dilated by the support margin.
    sigma : float
        Smoothing of this particle's edge images (binned px, :func:`edge_scale`).
    border_px : int
        Full-resolution pixels closer than this to the frame border are not used.
    footprint : numpy.ndarray, optional
        ``shape`` bool: the particle's own (frame-0) mask, for :meth:`outlined`.
    neighbours : numpy.ndarray, optional
        ``shape`` bool: the other particles' masks, for :meth:`outlined`.
    """

    def __init__(
        self,
        edges: FrameEdges,
        origin: np.ndarray,
        shape: tuple[int, int],
        support: np.ndarray,
        sigma: float,
        border_px: int,
        footprint: np.ndarray | None = None,
        neighbours: np.ndarray | None = None,
    ) -> None:
        self.binning = edges.binning
        self.sigma = float(sigma)
        self.origin, binned = bin_mask(support, origin, self.binning)
        self.shape = (int(binned.shape[0]), int(binned.shape[1]))
        border = -(-int(border_px) // self.binning)
        rows = np.arange(self.shape[0])[:, None] + int(self.origin[0])
        cols = np.arange(self.shape[1])[None, :] + int(self.origin[1])
        inside = (
            (rows >= border)
            & (rows < edges.shape[0] - border)
            & (cols >= border)
            & (cols < edges.shape[1] - border)
        )
        self.support = binned & inside
        self.inside = inside
        self.footprint: np.ndarray | None = None
        self.neighbours: np.ndarray | None = None
        for name, mask in (("footprint", footprint), ("neighbours", neighbours)):
            if mask is None:
                continue
            if mask.shape != support.shape:
                raise ValueError(f"{name} {mask.shape} must be support's {support.shape}")
            setattr(self, name, bin_mask(np.asarray(mask, dtype=bool), origin, self.binning)[1])
        self.partial = bool(np.count_nonzero(self.support) < np.count_nonzero(binned))
        self.offset = np.zeros(2)
        self.strength = 0.0
        self.model: GradientModel | None = None
        self._set(self._crop(edges, np.zeros(2, dtype=int)), np.zeros(2))

    def _crop(self, edges: FrameEdges, base: np.ndarray) -> np.ndarray:
        crop = edges.crop(self.sigma, self.origin + base, self.shape)
        return np.asarray(crop, dtype=np.float64)

    def _set(self, edges: np.ndarray, offset: np.ndarray) -> None:
        values = edges[self.support]
        rms = float(np.sqrt(np.mean(values * values))) if values.size else 0.0
        self.strength = float(values.std()) if values.size else 0.0
        self.offset = np.asarray(offset, dtype=np.float64)
        if rms <= 0 or np.count_nonzero(self.support) < 16:
            self.model = None
            return
        self.template = edges / rms
        self.model = GradientModel(self.template, self.support)
        if self.model.degenerate:
            self.model = None

    def register(
        self, edges: FrameEdges, predicted: np.ndarray, iterations: int
    ) -> tuple[np.ndarray, float, float] | None:
        """Shift of the particle (reference geometry) in a frame, its match score, edge strength.

        Parameters
        ----------
        edges : FrameEdges
            Edge images of the frame.
        predicted : numpy.ndarray
            Predicted shift (full-resolution px), within a few px of the truth.
        iterations : int
            Gauss-Newton iterations.

        Returns
        -------
        tuple or None
            ``(shift, ncc, strength)``: the shift (full-resolution px), the normalised
            correlation of the aligned edge images on the support (1 = same outline) and the
            std of the frame's edge image on the support; None when the template is degenerate
            or the solution left the window.
        """
        if self.model is None:
            return None
        b = self.binning
        start = (np.asarray(predicted, dtype=np.float64) - self.offset) / b
        base = np.round(start).astype(int)
        shift = None
        for _ in range(3):
            crop = self._crop(edges, base)
            values = crop[self.support]
            rms = float(np.sqrt(np.mean(values * values)))
            if rms <= 0:
                return None
            moving = crop / rms
            d = self.model.displacement(moving, start - base, iterations + 1)
            if d is None or not np.all(np.isfinite(d)):
                return None
            if np.all(np.abs(d) <= 1.0):
                shift = base + d
                break
            base = base + np.round(d).astype(int)
            start = base.astype(np.float64)
        if shift is None:
            return None
        warped = self.model._warped(moving, shift - base)
        c, cc = self.model.centred_reference()
        a = warped - warped.mean()
        ncc = dot(a, c) / (np.sqrt(dot(a, a) * cc) + 1e-12)
        return b * shift + self.offset, ncc, float(values.std())

    def maybe_update(
        self, edges: FrameEdges, shift: np.ndarray, strength: float, ratio: float
    ) -> bool:
        """Take the frame's outline as the template when it is ``ratio`` times stronger."""
        if strength < ratio * self.strength:
            return False
        self._retake(edges, shift)
        return True

    def outlined(
        self, frames: list[FrameEdges], shifts: np.ndarray, *, level: float, grow_px: int
    ) -> EdgeTemplate:
        """A copy whose support is the particle's outline in clear frames, grown a little.

        The OD of ``frames`` (clear frames: the particle well above the background) is
        averaged aligned on the particle at ``shifts`` (in the template's geometry); the
        particle is where that mean is above the background (median of the crop away from
        the footprint and the neighbours) by ``level`` of its contrast (90th percentile on
        the footprint) and closer to the footprint than to a neighbour, in the connected
        parts touching the footprint. That region is grown by ``grow_px`` (full-resolution)
        into the background only: not over anything else above the level, nor closer to a
        neighbour. A faint particle's frame-0 mask lies inside its outline; this support
        holds its whole rim. Pixels near the frame border stay out. Without a footprint, or
        when the mean shows no contrast, the template is returned unchanged. Its template is
        taken again by :meth:`renewed` or :meth:`renewed_mean`.
        """
        shifts = np.asarray(shifts, dtype=np.float64)
        if len(frames) == 0 or shifts.shape != (len(frames), 2):
            raise ValueError(f"need one (2,) shift per frame, got {shifts.shape} for {len(frames)}")
        own = self.footprint
        if own is None or not own.any():
            return self
        b = self.binning
        total = np.zeros(self.shape)
        for edges, shift in zip(frames, shifts, strict=True):
            position = (shift - self.offset) / b
            base = np.round(position).astype(int)
            crop = extract_crop(edges.od, self.origin + base, self.shape)
            total += shift_image(np.asarray(crop, dtype=np.float64), -(position - base))
        mean = ndimage.gaussian_filter(total / len(frames), 1.0)
        others = self.neighbours if self.neighbours is not None else np.zeros_like(own)
        # the background: away from the masks by a quarter of the diameter (a faint
        # particle's rim lies outside its mask)
        reach = max(2, round(0.5 * np.sqrt(np.count_nonzero(own) / np.pi)))
        away = ~ndimage.binary_dilation(own | others, iterations=reach) & self.inside
        if np.count_nonzero(away) < 16:
            return self
        background = float(np.median(mean[away]))
        contrast = float(np.percentile(mean[own & self.inside], 90)) - background
        if not contrast > 0:
            return self
        above = mean > background + level * contrast
        if others.any():
            nearer = ndimage.distance_transform_edt(~own) < ndimage.distance_transform_edt(~others)
        else:
            nearer = np.ones_like(own)
        parts, _ = ndimage.label(above & nearer)
        touching = np.unique(parts[own & (parts > 0)])
        body = np.isin(parts, touching) | own
        steps = -(-int(grow_px) // b)
        grown = ndimage.binary_dilation(body, iterations=steps) if steps > 0 else body
        grown &= body | (~above & nearer)
        twin = copy.copy(self)
        twin.support = grown & self.inside
        return twin

    def renewed(self, edges: FrameEdges, shift: np.ndarray) -> EdgeTemplate:
        """A copy whose template is the outline of ``edges``, where the particle sits at
        ``shift`` (same support, smoothing and reference geometry); this one is unchanged."""
        twin = copy.copy(self)
        twin._retake(edges, shift)
        return twin

    def renewed_mean(self, frames: list[FrameEdges], shifts: np.ndarray) -> EdgeTemplate:
        """A copy whose template is the mean of the outlines of several frames, each aligned
        on the particle at its shift (each normalised to unit RMS on the support).

        A pattern that stays in the detector frame (zone-plate rings) sits at a different place
        relative to the particle in each frame, so the mean blurs it by the spread of the
        shifts, while the outline stays sharp: the template no longer carries the pattern that
        would pull a faint frame towards the template frame's place. Reference geometry: the
        last frame's.
        """
        shifts = np.asarray(shifts, dtype=np.float64)
        if len(frames) == 0 or shifts.shape != (len(frames), 2):
            raise ValueError(f"need one (2,) shift per frame, got {shifts.shape} for {len(frames)}")
        b = self.binning
        reference = shifts[-1]
        total = np.zeros(self.shape)
        for edges, shift in zip(frames, shifts, strict=True):
            position = (shift - reference) / b
            base = np.round(position).astype(int)
            start = np.round((reference - self.offset) / b).astype(int) + base
            crop = self._crop(edges, start)
            values = crop[self.support]
            rms = float(np.sqrt(np.mean(values * values))) if values.size else 0.0
            if rms > 0:
                total += shift_image(crop / rms, -(position - base))
        twin = copy.copy(self)
        base = np.round((reference - self.offset) / b).astype(int)
        twin._set(total / len(frames), reference - b * base)
        return twin

    def _retake(self, edges: FrameEdges, shift: np.ndarray) -> None:
        base = np.round((np.asarray(shift, dtype=np.float64) - self.offset) / self.binning)
        base = base.astype(int)
        self._set(self._crop(edges, base), shift - self.binning * base)
