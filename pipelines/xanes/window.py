"""Per-particle tracking state: the particle's ROI, search window geometry and template."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.xanes.kernels import (
    CROSS,
    GradientModel,
    box_dilation,
    extract_crop,
    fill_holes,
    gaussian_weights,
    partition_percentile,
    plane_from_samples,
    plane_samples,
)
from pipelines.xanes.register import centre_of_mass
from pipelines.xanes.results import ParticleRoi

__all__ = ["Candidate", "ParticleWindow"]


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
    ) -> None:
        self.roi = roi
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
        self.ring_rows, self.ring_cols = ring_rows + search_px, ring_cols + search_px
        self.ring_index = np.ravel_multi_index((self.ring_rows, self.ring_cols), self.window_shape)
        cover_rows, cover_cols = np.nonzero(self.cover)
        self.cover_index = np.ravel_multi_index(
            (cover_rows + search_px, cover_cols + search_px), self.window_shape
        )
        self.smooth_weights = gaussian_weights(smooth_sigma) if smooth_sigma > 1e-15 else None
        self._template_cache: tuple[int, np.ndarray, tuple[np.ndarray, float, float]] | None = None
        self._model_cache: tuple[int, GradientModel] | None = None

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
