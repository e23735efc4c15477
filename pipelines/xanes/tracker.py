"""Live, incremental XANES particle tracking and the batch alignment built on it.

Frame 0 is segmented once (classical detector, or the U-Net with ``detect.method="learned"``)
and is the reference geometry. Every later frame costs a few small operations per particle:

1. optical density of the frame;
2. a coarse whole-frame shift against the previous frame (binned phase correlation) that
   predicts where every particle went, so stage jumps (e.g. feedback moves) are followed;
3. per particle, a search window around the prediction (background plane removed) is
   thresholded at ``threshold_fraction`` of the particle level, holes filled; the components'
   centres of mass (moments of a soft mask) are the candidates, assigned to particles by an
   optimal assignment (Hungarian) on the distance to the prediction, gated by distance and area
   ratio (no identity swaps; a particle with no acceptable candidate is "not found", NaN). SSIM
   enters the assignment cost for scan-to-scan matching (:func:`match.match_labels`); per frame
   it is reported as a quality figure;
4. the moment estimate is refined to sub-pixel precision by registering the particle's
   silhouette (contrast-independent soft mask, so the chemistry-dependent contrast inside the
   particle across the edge does not bias it) to its frame-0 template on a support around the
   reference footprint (Gauss-Newton; phase/cross-correlation as an option);
5. the global drift is the median of the particle shifts.

The aligned per-particle ROI stacks feed the XANES maps computed by :meth:`finalize`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.fft import next_fast_len

from pipelines.xanes.detect import detect_particles
from pipelines.xanes.match import match_particles
from pipelines.xanes.params import XanesParams
from pipelines.xanes.prepare import (
    average_frames,
    incident_counts,
    optical_density,
    remove_background,
)
from pipelines.xanes.register import (
    PhaseCorrelator,
    centre_of_mass,
    robust_global_shift,
    shift_image,
    ssim_from_moments,
)
from pipelines.xanes.spectra import analyse_spectra

__all__ = ["FrameResult", "ParticleRoi", "XanesResult", "XanesTracker", "align_stack"]


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
        ``(2,)`` rigid drift: median of the found particles' shifts (coarse whole-frame shift
        when no particle is found).
    particle_com : numpy.ndarray
        ``(P, 2)`` centre of every particle, NaN rows when not found.
    particle_shift : numpy.ndarray
        ``(P, 2)`` ``particle_com - particle_com_frame0``.
    ssim : numpy.ndarray
        ``(P,)`` SSIM of the aligned ROI against the particle template, NaN when not found.
    found : numpy.ndarray
        ``(P,)`` bool.
    n_found : int
        Number of particles found.
    """

    index: int
    energy: float
    global_shift: np.ndarray
    particle_com: np.ndarray
    particle_shift: np.ndarray
    ssim: np.ndarray
    found: np.ndarray
    n_found: int


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
        ``(N, 2)`` float64.
    ssim : numpy.ndarray
        ``(P, N)`` float64 SSIM of the aligned ROI against the template.
    edge_energy, whiteline_energy : numpy.ndarray
        ``(H, W)`` float32 eV in frame-0 geometry, NaN outside particles and where masked.
    edge_jump : numpy.ndarray
        ``(H, W)`` float32 OD edge jump, NaN outside particles.
    spectra : numpy.ndarray
        ``(P, N)`` float64 mean normalised absorbance per particle in frame order.
    rois : list of ParticleRoi
        ROI box of every particle.
    aligned_stacks : list of numpy.ndarray
        Per particle ``(N, h, w)`` float32 background-free OD aligned to frame 0 (NaN frames
        where the particle was not found); empty when ``keep_aligned_stacks`` is False.
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
    rois: list[ParticleRoi] = field(default_factory=list)
    aligned_stacks: list[np.ndarray] = field(default_factory=list)


def _extract(image: np.ndarray, origin: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop ``shape`` at integer ``origin``; outside pixels repeat the nearest edge pixel."""
    r0, c0 = int(origin[0]), int(origin[1])
    h, w = shape
    rows_total, cols_total = image.shape
    if r0 >= 0 and c0 >= 0 and r0 + h <= rows_total and c0 + w <= cols_total:
        return image[r0 : r0 + h, c0 : c0 + w]
    rows = np.clip(np.arange(r0, r0 + h), 0, rows_total - 1)
    cols = np.clip(np.arange(c0, c0 + w), 0, cols_total - 1)
    return image[np.ix_(rows, cols)]


def _inside_fraction(origin: np.ndarray, shape: tuple[int, int], frame: tuple[int, ...]) -> float:
    r0, c0 = origin
    h, w = shape
    rows = max(0, min(r0 + h, frame[0]) - max(r0, 0))
    cols = max(0, min(c0 + w, frame[1]) - max(c0, 0))
    return rows * cols / float(h * w)


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D float array without NaN, by one partition (scratch reordered)."""
    half = values.size // 2
    if values.size % 2:
        values.partition(half)
        return float(values[half])
    values.partition((half - 1, half))
    return float((values[half - 1] + values[half]) / 2)


def _percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) of a 1-D array, by one partition.

    ``values`` is scratch: it is reordered in place.
    """
    virtual = (values.size - 1) * (q / 100)
    previous = int(np.floor(virtual))
    if previous >= values.size - 1:
        return float(values.max())
    values.partition((previous, previous + 1))
    low, high = values[previous], values[previous + 1]
    gamma = virtual - previous
    diff = high - low
    return float(high - diff * (1 - gamma) if gamma >= 0.5 else low + diff * gamma)


def _plane_from_samples(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int], dtype
) -> np.ndarray:
    """Least-squares plane of ``shape`` through samples (outliers beyond 3 MAD dropped)."""
    values = values.astype(np.float64)
    median = _median(values.copy())
    deviation = np.abs(values - median)
    spread = 1.4826 * _median(deviation.copy()) + 1e-12
    keep = deviation <= 3.0 * spread
    if np.count_nonzero(keep) >= 16:
        rows, cols, values = rows[keep], cols[keep], values[keep]
    r_mean, c_mean, v_mean = rows.mean(), cols.mean(), values.mean()
    dr, dc, dv = rows - r_mean, cols - c_mean, values - v_mean
    srr, scc, src = float(dr @ dr), float(dc @ dc), float(dr @ dc)
    srv, scv = float(dr @ dv), float(dc @ dv)
    det = srr * scc - src * src
    if det <= 1e-9:
        return np.full(shape, v_mean, dtype=dtype)
    a = (srv * scc - scv * src) / det
    b = (scv * srr - srv * src) / det
    r = np.arange(shape[0], dtype=np.float64)[:, None] - r_mean
    c = np.arange(shape[1], dtype=np.float64)[None, :] - c_mean
    return (v_mean + a * r + b * c).astype(dtype)


def _plane_samples(where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``where`` a plane is fitted on: at most about 1500, evenly subsampled."""
    rows, cols = np.nonzero(where)
    step = max(1, rows.size // 1500)
    return rows[::step], cols[::step]


def _plane(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Least-squares plane through ``image[where]`` (outliers beyond 3 MAD dropped)."""
    rows, cols = _plane_samples(where)
    return _plane_from_samples(rows, cols, image[rows, cols], image.shape, image.dtype)


def _gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The 1-D kernel ``scipy.ndimage.gaussian_filter`` correlates with (same truncation)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return (phi / phi.sum())[::-1]


class _GradientModel:
    """Gauss-Newton registration of an image to a fixed template on a support.

    Minimises the squared difference between ``moving(x + d)`` and ``template(x)`` over the
    support pixels, linearised with the template gradient. The moving image is interpolated
    bilinearly (edges repeated, as :func:`shift_image`) at the support pixels only.
    """

    def __init__(self, template: np.ndarray, support: np.ndarray) -> None:
        self.rows, self.cols = np.nonzero(support)
        if self.rows.size:
            self.row_range = (int(self.rows.min()), int(self.rows.max()))
            self.col_range = (int(self.cols.min()), int(self.cols.max()))
        else:
            self.row_range = self.col_range = (0, 0)
        gradients = np.gradient(template.astype(np.float64))
        self.gr, self.gc = gradients[0][support], gradients[1][support]
        gr, gc = self.gr, self.gc
        a = np.array([[gr @ gr, gr @ gc], [gr @ gc, gc @ gc]])
        self.degenerate = bool(np.linalg.det(a) <= 1e-9 * max(1.0, float(np.trace(a)) ** 2))
        self.inverse = None if self.degenerate else np.linalg.inv(a)
        self.reference = template[support]
        self._flat_index: tuple[int, np.ndarray] | None = None

    def _warped(self, moving: np.ndarray, d: np.ndarray) -> np.ndarray:
        """``shift_image(moving, -d)`` at the support pixels."""
        h, w = moving.shape
        image = np.asarray(moving, dtype=np.float64)
        row0, col0 = int(np.floor(d[0])), int(np.floor(d[1]))
        fr, fc = float(d[0]) - row0, float(d[1]) - col0
        if (
            row0 + self.row_range[0] >= 0
            and col0 + self.col_range[0] >= 0
            and row0 + self.row_range[1] + 1 < h
            and col0 + self.col_range[1] + 1 < w
        ):
            if self._flat_index is None or self._flat_index[0] != w:
                self._flat_index = (w, self.rows * w + self.cols)
            flat = np.ravel(image)
            index = self._flat_index[1] + (row0 * w + col0)
            top_left, top_right = flat[index], flat[index + 1]
            index += w
            bottom_left, bottom_right = flat[index], flat[index + 1]
        else:
            r, c = self.rows + row0, self.cols + col0
            r_lo, r_hi = np.clip(r, 0, h - 1), np.clip(r + 1, 0, h - 1)
            c_lo, c_hi = np.clip(c, 0, w - 1), np.clip(c + 1, 0, w - 1)
            top_left, top_right = image[r_lo, c_lo], image[r_lo, c_hi]
            bottom_left, bottom_right = image[r_hi, c_lo], image[r_hi, c_hi]
        top = top_left * (1.0 - fc) + top_right * fc
        bottom = bottom_left * (1.0 - fc) + bottom_right * fc
        return (top * (1.0 - fr) + bottom * fr).astype(moving.dtype, copy=False)

    def displacement(self, moving: np.ndarray, start: np.ndarray, iterations: int):
        """Displacement of ``moving`` vs the template; None when the problem is degenerate."""
        if self.inverse is None:
            return None
        d = np.asarray(start, dtype=np.float64).copy()
        for _ in range(iterations):
            residual = self._warped(moving, d) - self.reference
            step = self.inverse @ np.array([self.gr @ residual, self.gc @ residual])
            d = d - step
            if np.max(np.abs(step)) < 0.005:
                break
        return d


_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, ndimage's default


def _box_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a ``(2 radius + 1)`` square, pixels outside the array ignored.

    Same as ``ndimage.maximum_filter(mask, size=2 * radius + 1)`` on a bool mask.
    """
    rows = mask.copy()
    for step in range(1, radius + 1):
        rows[step:] |= mask[:-step]
        rows[:-step] |= mask[step:]
    out = rows.copy()
    for step in range(1, radius + 1):
        out[:, step:] |= rows[:, :-step]
        out[:, :-step] |= rows[:, step:]
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask)``: background not 4-connected to the border is filled.

    One labelling of the background instead of a dilation iterated to convergence.
    """
    background, n = ndimage.label(~mask, structure=_CROSS)
    if n == 0:
        return mask.copy()
    edges = np.concatenate((background[0], background[-1], background[:, 0], background[:, -1]))
    outside = np.zeros(n + 1, dtype=bool)
    outside[edges] = True
    outside[0] = False
    return ~outside[background]


def _fast_len_below(n: int) -> int:
    """Largest FFT-friendly length (factors 2, 3, 5) not above n."""
    for m in range(n, 0, -1):
        if next_fast_len(m, real=True) == m:
            return m
    return n


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks (float32), summed by strided slices."""
    if factor == 1:
        return image.astype(np.float32)
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = np.asarray(image[: h * factor, : w * factor], dtype=np.float32)
    # blocks.reshape(h, f, w, f).mean(axis=(1, 3)) up to float rounding, without its slow loop
    cols = blocks[:, 0::factor] + blocks[:, 1::factor]
    for j in range(2, factor):
        cols += blocks[:, j::factor]
    rows = cols[0::factor] + cols[1::factor]
    for i in range(2, factor):
        rows += cols[i::factor]
    rows /= np.float32(factor * factor)
    return rows


@dataclass(frozen=True)
class _Candidate:
    """A particle-like component found in a search window."""

    com: np.ndarray  # (2,) frame coordinates
    area: float
    silhouette: np.ndarray  # soft mask of the whole window (shared by its candidates)
    background: np.ndarray  # background plane of the window
    origin: np.ndarray  # window origin in the frame


class _Particle:
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
        self.window_shape = (h + 2 * search_px, w + 2 * search_px)
        self.ring_count = int(np.count_nonzero(ring))
        self.cover_count = int(np.count_nonzero(self.cover))
        ring_rows, ring_cols = _plane_samples(ring)
        self.ring_rows, self.ring_cols = ring_rows + search_px, ring_cols + search_px
        self.ring_index = np.ravel_multi_index((self.ring_rows, self.ring_cols), self.window_shape)
        cover_rows, cover_cols = np.nonzero(self.cover)
        self.cover_index = np.ravel_multi_index(
            (cover_rows + search_px, cover_cols + search_px), self.window_shape
        )
        self.smooth_weights = _gaussian_weights(smooth_sigma) if smooth_sigma > 1e-15 else None
        self._template_cache: tuple[int, np.ndarray, tuple[np.ndarray, float, float]] | None = None
        self._model_cache: tuple[int, _GradientModel] | None = None

    def template(self) -> np.ndarray:
        return self._template_state()[1]

    def template_stats(self) -> tuple[np.ndarray, float, float]:
        """Template minus its mean, its mean and variance (for the SSIM)."""
        return self._template_state()[2]

    def gradient_model(self) -> _GradientModel:
        """Gauss-Newton model of the current template on the support (rebuilt on update)."""
        if self._model_cache is None or self._model_cache[0] != self.template_count:
            self._model_cache = (self.template_count, _GradientModel(self.template(), self.support))
        return self._model_cache[1]

    def _template_state(self) -> tuple[int, np.ndarray, tuple[np.ndarray, float, float]]:
        if self._template_cache is None or self._template_cache[0] != self.template_count:
            template = self.template_sum / max(1, self.template_count)
            mean = template.mean()
            stats = (template - mean, float(mean), float(template.var()))
            self._template_cache = (self.template_count, template, stats)
        return self._template_cache


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
        self._particles: list[_Particle] = []
        self._results: list[FrameResult] = []
        self._stacks: list[list[np.ndarray | None]] = []
        self._prev_coarse_image: np.ndarray | None = None
        self._coarse_global = np.zeros(2)
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
        com = np.stack([r.particle_com for r in self._results], axis=1).reshape(n_p, n, 2)
        shift = np.stack([r.particle_shift for r in self._results], axis=1).reshape(n_p, n, 2)
        ssim = np.stack([r.ssim for r in self._results], axis=1).reshape(n_p, n)
        global_shift = np.stack([r.global_shift for r in self._results])
        edge = np.full(self._labels.shape, np.nan, dtype=np.float32)
        white = np.full(self._labels.shape, np.nan, dtype=np.float32)
        jump_map = np.full(self._labels.shape, np.nan, dtype=np.float32)
        spectra = np.full((n_p, n), np.nan)
        stacks: list[np.ndarray] = []
        for k, particle in enumerate(self._particles):
            stack = self._particle_stack(k)
            stacks.append(stack)
            self._particle_maps(k, particle, stack, energies, edge, white, jump_map, spectra)
        return XanesResult(
            labels=self._labels.copy(),
            energies=energies,
            particle_com=com,
            particle_shift=shift,
            global_shift=global_shift,
            ssim=ssim,
            edge_energy=edge,
            whiteline_energy=white,
            edge_jump=jump_map,
            spectra=spectra,
            rois=[p.roi for p in self._particles],
            aligned_stacks=stacks if self.params.keep_aligned_stacks else [],
        )

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
    def _detect(self, od: np.ndarray) -> np.ndarray:
        """Frame-0 labels by the detector ``params.detect.method`` selects."""
        if self.params.detect.method == "learned":
            # imported here: torch loads only when the learned detector is chosen
            from pipelines.xanes.detect_learned import detect_particles_learned

            return detect_particles_learned(od, params=self.params.detect)
        prepared = remove_background(od, params=self.params.prepare)
        return detect_particles(prepared, params=self.params.detect, background_removed=True)

    def _start(self, od: np.ndarray, energy: float) -> FrameResult:
        self._shape = (int(od.shape[0]), int(od.shape[1]))
        labels = self._detect(od)
        self._labels = labels
        tp = self.params.track
        areas = np.bincount(labels.ravel())
        for k, box in enumerate(ndimage.find_objects(labels)):
            if box is None:
                continue
            diameter = 2.0 * np.sqrt(areas[k + 1] / np.pi)
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
            mask = _extract(labels, origin, shape) == k + 1
            if r0 < 0 or c0 < 0:
                mask = mask.copy()
                mask[: max(0, -r0)] = False
                mask[:, : max(0, -c0)] = False
            occupied = _extract(labels, origin, shape) > 0
            ring = ~ndimage.binary_dilation(occupied, iterations=2 + pad)
            com0 = centre_of_mass(labels == k + 1)
            roi = ParticleRoi(origin=(int(r0), int(c0)), shape=shape, mask=mask)
            area = float(mask.sum())
            sigma = max(tp.smooth_sigma_px, tp.smooth_fraction * 2.0 * np.sqrt(area / np.pi))
            self._particles.append(
                _Particle(
                    roi,
                    com0,
                    area,
                    ring,
                    tp.support_px + pad,
                    search_px=tp.search_px,
                    smooth_sigma=sigma,
                )
            )
        n_p = len(self._particles)
        self._stacks = [[] for _ in range(n_p)]
        ssim = np.full(n_p, np.nan)
        for k, particle in enumerate(self._particles):
            crop = self._local_background_free(od, np.array(particle.roi.origin), particle)
            self._stacks[k].append(crop)
            particle.template_sum += self._soft_template_frame0(od, particle)
            particle.template_count = 1
            ssim[k] = 1.0
        self._prev_coarse_image = self._coarse_image(od)
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
        )

    # ------------------------------------------------------------------ frames > 0
    def _coarse_image(self, od: np.ndarray) -> np.ndarray:
        binned = _block_mean(od, self.params.track.coarse_binning)
        rows, cols = binned.shape
        binned = binned[: _fast_len_below(rows), : _fast_len_below(cols)]
        high = binned - ndimage.uniform_filter(binned, 9)
        return high - high.mean()

    def _coarse_step(self, od: np.ndarray) -> np.ndarray:
        image = self._coarse_image(od)
        assert self._prev_coarse_image is not None
        d = PhaseCorrelator(self._prev_coarse_image, upsample=2).displacement(image)[0]
        self._prev_coarse_image = image
        return d * self.params.track.coarse_binning

    def _local_background_free(
        self, od: np.ndarray, origin: np.ndarray, particle: _Particle
    ) -> np.ndarray:
        crop = _extract(od, origin, particle.roi.shape).astype(np.float32)
        if particle.ring.sum() >= 16:
            return crop - _plane(crop, particle.ring)
        return crop - np.float32(np.percentile(crop, 10))

    def _window(self, od: np.ndarray, particle: _Particle, origin: np.ndarray):
        """Smoothed search window around a ROI origin and the window's own origin.

        The smoothing is ``gaussian_filter`` (reflect mode) with the particle's sigma
        (``track.smooth_sigma_px``, at least ``smooth_fraction`` of its diameter), its kernel
        computed once per particle.
        """
        w_origin = origin - self.params.track.search_px
        window = np.asarray(_extract(od, w_origin, particle.window_shape), dtype=np.float32)
        weights = particle.smooth_weights
        if weights is None:
            return w_origin, window.copy()
        smoothed = np.empty(window.shape, dtype=np.float32)
        ndimage.correlate1d(window, weights, axis=0, output=smoothed, mode="reflect")
        ndimage.correlate1d(smoothed, weights, axis=1, output=smoothed, mode="reflect")
        return w_origin, smoothed

    def _track(self, od: np.ndarray, energy: float) -> FrameResult:
        assert self._shape is not None
        self._coarse_global = self._coarse_global + self._coarse_step(od)
        n_p = self.n_particles
        predicted = np.array(
            [p.last_shift + self._coarse_global - p.last_coarse for p in self._particles]
        ).reshape(n_p, 2)
        candidates: list[_Candidate] = []
        shape = self._shape

        def search(k: int) -> list[_Candidate]:
            particle = self._particles[k]
            origin = np.array(particle.roi.origin) + np.round(predicted[k]).astype(int)
            if _inside_fraction(origin, particle.roi.shape, shape) < 0.5:
                return []
            w_origin, window = self._window(od, particle, origin)
            return self._candidates(window, w_origin, particle)

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
                return self._refine(k, candidates[j], od, predicted[k])

            for (k, _), refined in zip(pairs, self._map(refine, pairs), strict=True):
                if refined is not None:
                    shifts[k], ssim[k] = refined
                    found[k] = True
        for k, particle in enumerate(self._particles):
            if found[k]:
                particle.last_shift = shifts[k]
                particle.last_coarse = self._coarse_global.copy()
            else:
                self._stacks[k].append(None)
        global_shift = robust_global_shift(shifts) if found.any() else self._coarse_global.copy()
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
        )

    def _candidates(
        self, window: np.ndarray, w_origin: np.ndarray, particle: _Particle
    ) -> list[_Candidate]:
        """Particle-like components of a search window, with their soft masks and moments.

        The window's background plane (fitted on the reference ring) is removed; the mask is
        the window above ``threshold_fraction`` of the particle level, holes filled; the soft
        mask ramps linearly from the background to that threshold, so its centre of mass is
        sub-pixel and insensitive to the chemistry-dependent contrast inside the particle.
        """
        if particle.ring_count < 16 or particle.cover_count < 4:
            return []
        rows, cols = particle.ring_rows, particle.ring_cols
        samples = np.take(window, particle.ring_index)
        background = _plane_from_samples(rows, cols, samples, window.shape, window.dtype)
        window = window - background
        level = _percentile(np.take(window, particle.cover_index), 90)
        if level <= 0:
            return []
        contrast = self.params.track.threshold_fraction * level
        labels, n = ndimage.label(_fill_holes(window > contrast), structure=_CROSS)
        if n == 0:
            return []
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        kept = np.nonzero(areas[1:] >= max(4.0, 0.2 * particle.area))[0] + 1
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
            grown = _box_dilation(own, 2)
            region = grown & ((near_labels == 0) | own)
            weights = np.where(region, soft[near], np.float32(0.0))
            out.append(
                _Candidate(
                    com=centre_of_mass(weights) + (r0, c0) + w_origin,
                    area=float(areas[lab]),
                    silhouette=soft,
                    background=background,
                    origin=w_origin,
                )
            )
        return out

    def _soft_template_frame0(self, od: np.ndarray, particle: _Particle) -> np.ndarray:
        origin = np.array(particle.roi.origin)
        w_origin, window = self._window(od, particle, origin)
        candidates = self._candidates(window, w_origin, particle)
        if not candidates:
            return np.zeros(particle.roi.shape, dtype=np.float32)
        # the reference centre uses the same estimator (soft-mask moments) as later frames
        best = min(candidates, key=lambda c: float(np.linalg.norm(c.com - particle.com0)))
        particle.com0 = best.com
        return _extract(best.silhouette, origin - best.origin, particle.roi.shape)

    def _refine(
        self, k: int, candidate: _Candidate, od: np.ndarray, predicted: np.ndarray
    ) -> tuple[np.ndarray, float] | None:
        """Sub-pixel shift of particle k from its matched candidate, and its SSIM.

        The moment estimate is refined by registering the particle's silhouette (soft mask,
        insensitive to the chemistry-dependent contrast inside the particle) to its template on
        a fixed support around the reference footprint: Gauss-Newton on the squared difference
        (``refine_method="gradient"``) or cross/phase correlation (``"correlation"``). When the
        matched component is much larger than the particle (merged with a neighbour), the
        moments are taken inside the support only. None when the estimates disagree.
        """
        tp = self.params.track
        particle = self._particles[k]
        template = particle.template()
        template_centred, template_mean, template_var = particle.template_stats()
        ratio = candidate.area / max(particle.area, 1.0)
        if 0.67 <= ratio <= 1.5:
            coarse = candidate.com - particle.com0
        else:
            coarse = np.asarray(predicted, dtype=np.float64)
            support_com = centre_of_mass(template * particle.support)
            for _ in range(3):
                base = np.round(coarse).astype(int)
                moving = _extract(
                    candidate.silhouette,
                    np.array(particle.roi.origin) + base - candidate.origin,
                    particle.roi.shape,
                )
                coarse = base + centre_of_mass(moving * particle.support) - support_com
            if not np.all(np.isfinite(coarse)):
                return None
        base = np.round(coarse).astype(int)
        moving = _extract(
            candidate.silhouette,
            np.array(particle.roi.origin) + base - candidate.origin,
            particle.roi.shape,
        )
        refined: np.ndarray | None
        if tp.refine_method == "gradient":
            refined = particle.gradient_model().displacement(
                moving, coarse - base, tp.refine_iterations
            )
        else:
            correlator = PhaseCorrelator(template, upsample=tp.upsample, whitening=tp.whitening)
            refined = correlator.displacement(moving)[0]
        if refined is None or not np.all(
            np.abs(base + refined - coarse) <= tp.max_refine_disagreement_px
        ):
            return None
        shift = (1.0 - tp.refine_weight) * coarse + tp.refine_weight * (base + refined)
        base = np.round(shift).astype(int)
        residual = shift - base
        origin = np.array(particle.roi.origin) + base
        silhouette = _extract(candidate.silhouette, origin - candidate.origin, particle.roi.shape)
        if tp.template_update:
            silhouette = shift_image(silhouette, -residual).astype(np.float32)
            particle.template_sum += silhouette
            particle.template_count += 1
        # roi_ssim(silhouette, template, data_range=1.0) with the template's moments cached
        values = np.asarray(silhouette, dtype=np.float64)
        mean = values.mean()
        centred = values - mean
        score = ssim_from_moments(
            mean,
            template_mean,
            float((centred * centred).mean()),
            template_var,
            float((centred * template_centred).mean()),
            data_range=1.0,
        )
        crop = np.asarray(_extract(od, origin, particle.roi.shape), dtype=np.float32)
        crop = crop - _extract(candidate.background, origin - candidate.origin, crop.shape)
        self._stacks[k].append(shift_image(crop, -residual).astype(np.float32, copy=False))
        return shift, score

    # ------------------------------------------------------------------ finalize
    def _particle_stack(self, k: int) -> np.ndarray:
        shape = self._particles[k].roi.shape
        nan = np.full(shape, np.nan, dtype=np.float32)
        return np.stack([nan if a is None else a for a in self._stacks[k]])

    def _particle_maps(
        self,
        k: int,
        particle: _Particle,
        stack: np.ndarray,
        energies: np.ndarray,
        edge: np.ndarray,
        white: np.ndarray,
        jump_map: np.ndarray,
        spectra: np.ndarray,
    ) -> None:
        assert self._labels is not None
        found = np.all(np.isfinite(stack.reshape(stack.shape[0], -1)[:, :1]), axis=1)
        mask = particle.roi.mask
        if found.sum() < 8 or not mask.any():
            return
        sp = self.params.spectra
        sub_e = energies[found]
        try:
            pixels = analyse_spectra(sub_e, stack[found][:, mask].T, params=sp)
            mean = analyse_spectra(sub_e, stack[found][:, mask].mean(axis=1), params=sp)
        except ValueError:
            return
        order = np.argsort(sub_e, kind="stable")
        normalised = np.empty(found.sum())
        normalised[order] = mean.normalised
        spectra[k, found] = normalised
        r0, c0 = particle.roi.origin
        rows, cols = np.nonzero(mask)
        rows, cols = rows + r0, cols + c0
        inside = (rows >= 0) & (cols >= 0) & (rows < edge.shape[0]) & (cols < edge.shape[1])
        own = self._labels[rows[inside], cols[inside]] == k + 1
        sel_r, sel_c = rows[inside][own], cols[inside][own]
        edge[sel_r, sel_c] = pixels.edge_energy[inside][own]
        white[sel_r, sel_c] = pixels.whiteline_energy[inside][own]
        jump_map[sel_r, sel_c] = pixels.edge_jump[inside][own]


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
