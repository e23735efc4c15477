"""Particle detection in TXM optical-density frames.

The classical baseline: background removal, smoothing, a threshold (Otsu, floored by a multiple
of the robust noise level), hole filling, removal of small and faint objects and a watershed on
the distance transform to split touching particles. Labels are numbered by decreasing area.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import local_maxima
from skimage.segmentation import watershed

from pipelines.xanes.params import DetectParams, PrepareParams
from pipelines.xanes.prepare import remove_background

__all__ = [
    "background_sigma",
    "detect_particles",
    "own_peak_mask",
    "relabel_by_area",
    "robust_noise_sigma",
]


def robust_noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation from the median absolute pixel-to-pixel difference.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.

    Returns
    -------
    float
        Estimated per-pixel noise sd (same units as the image).
    """
    diff = np.diff(np.asarray(image, dtype=np.float64), axis=1)
    mad = np.median(np.abs(diff - np.median(diff)))
    return float(1.4826 * mad / np.sqrt(2.0))


def background_sigma(image: np.ndarray) -> float:
    """Spread of the background of an image from the lower side of its background class.

    Particles only add positive values, so below the median of the background class (the
    lower Otsu class) there are only background pixels; their median distance to it is
    0.6745 sd for Gaussian noise. Spatially correlated structure (beam pattern, smoothing) is
    included, unlike :func:`robust_noise_sigma`.

    Parameters
    ----------
    image : numpy.ndarray
        Background-free image (background about 0).

    Returns
    -------
    float
        Background standard deviation estimate.
    """
    values = np.asarray(image, dtype=np.float64).ravel()
    centre, spread = _background_level(values)
    del centre
    return spread


def _background_level(values: np.ndarray) -> tuple[float, float]:
    """Background level (median of the lower Otsu class) and its lower-side spread."""
    sample = values[:: max(1, values.size // 65536)]
    if np.ptp(sample) <= 0:
        return float(sample[0]) if sample.size else 0.0, 0.0
    lower = sample[sample <= threshold_otsu(sample)]
    centre = float(np.median(lower))
    below = centre - lower[lower < centre]
    if below.size < 16:
        return centre, robust_noise_sigma(values.reshape(1, -1))
    return centre, float(1.4826 * np.median(below))


def relabel_by_area(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..P by decreasing area (ties by raster order of the first pixel).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image, 0 is background.

    Returns
    -------
    numpy.ndarray
        int32 label image with consecutive labels.
    """
    labels = np.asarray(labels)
    ids, first, counts = np.unique(labels.ravel(), return_index=True, return_counts=True)
    keep = ids != 0
    ids, first, counts = ids[keep], first[keep], counts[keep]
    order = np.lexsort((first, -counts))
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[ids[order]] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels]


def detect_particles(
    od: np.ndarray,
    *,
    params: DetectParams = DetectParams(),
    prepare: PrepareParams = PrepareParams(),
    background_removed: bool = False,
) -> np.ndarray:
    """Segment cathode particles in an optical-density frame.

    Parameters
    ----------
    od : numpy.ndarray
        ``(H, W)`` optical density (particles absorb: positive).
    params : DetectParams
        Threshold, size and splitting parameters.
    prepare : PrepareParams
        Background-removal parameters (unused when ``background_removed``).
    background_removed : bool
        True when ``od`` is already free of its slow background.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` int32 labels, 0 background, particles 1..P by decreasing area.
    """
    od = np.asarray(od)
    if od.ndim != 2:
        raise ValueError(f"od must be 2-D, got shape {od.shape}")
    if not np.all(np.isfinite(od[:: max(1, od.shape[0] // 64), :: max(1, od.shape[1] // 64)])):
        od = np.nan_to_num(od, nan=0.0, posinf=0.0, neginf=0.0)
    flat = od.astype(np.float32) if background_removed else remove_background(od, params=prepare)
    sigma = params.smooth_sigma_px
    smooth = ndimage.gaussian_filter(flat, sigma) if sigma > 0 else flat
    level, smooth_noise = _background_level(smooth.ravel())
    # white noise after the Gaussian smoothing: the floor of the background spread
    white = robust_noise_sigma(flat) / max(1.0, 2.0 * np.sqrt(np.pi) * sigma)
    smooth_noise = max(smooth_noise, white)
    sample = smooth[:: max(1, smooth.shape[0] // 256), :: max(1, smooth.shape[1] // 256)]
    otsu = float(threshold_otsu(sample)) if np.ptp(sample) > 0 else 0.0
    threshold = max(
        level + params.threshold_factor * (otsu - level),
        level + params.min_noise_sigmas * smooth_noise,
    )
    mask = smooth > threshold
    if params.own_peak_noise_sigmas is not None:
        own, cut = own_peak_mask(
            smooth,
            level,
            smooth_noise,
            low_sigmas=params.own_peak_noise_sigmas,
            min_dip=max(params.min_noise_sigmas * smooth_noise, 0.0),
            min_dip_fraction=params.own_peak_min_dip_fraction,
            fraction=params.threshold_factor,
            frame_threshold=threshold,
            outline=ndimage.gaussian_filter(flat, min(sigma, 1.5)) if sigma > 1.5 else smooth,
        )
        # the half-maximum outline is at the edge already: grow it by what the erosion for the
        # frame threshold's spread (below) takes away again
        shrink = int(round(sigma - 1.5))
        if shrink > 0:
            own = ndimage.binary_dilation(own, iterations=shrink, mask=smooth > level)
        mask = (mask | own) & ~cut
    mask = ndimage.binary_opening(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    if params.faint_noise_sigmas is not None:
        mask |= _faint_objects(smooth, level, smooth_noise, params)
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(od.shape, dtype=np.int32)
    min_area = max(params.min_area_fraction * od.size, params.min_area_px)
    idx = np.arange(1, n + 1)
    areas = ndimage.sum_labels(mask, labels, idx)
    peaks = label_maxima(smooth, labels, n)
    brightest = float(np.max(peaks[areas >= min_area])) if np.any(areas >= min_area) else 0.0
    keep = (
        (areas >= min_area)
        & (peaks >= params.min_contrast_fraction * brightest)
        & (peaks >= level + (params.min_noise_sigmas + 2.0) * smooth_noise)
    )
    if params.exclude_border:
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        keep[border[border > 0] - 1] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[idx[keep]] = idx[keep]
    labels = lut[labels]
    if params.split_touching and np.any(keep):
        labels = _split_touching(labels, params, min_area)
    # the smoothing spreads a particle's edge outwards by about its excess over 1.5 px
    shrink = int(round(sigma - 1.5))
    if shrink > 0:
        labels = np.where(ndimage.binary_erosion(labels > 0, iterations=shrink), labels, 0)
    return relabel_by_area(labels)


def own_peak_mask(
    smooth: np.ndarray,
    level: float,
    noise: float,
    *,
    low_sigmas: float,
    min_dip: float,
    min_dip_fraction: float,
    fraction: float,
    frame_threshold: float = np.inf,
    outline: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Objects cut at a fraction of their own peak (a per-object, component-tree threshold).

    The frame's threshold is a fraction of the Otsu level, which the brightest particles set,
    so a small or thin particle far above the noise can lie below it. Here every pixel above
    ``low_sigmas`` noise sd is given to the intensity maximum it climbs to (a watershed of the
    smoothed image). A maximum is an object of its own when its dip (peak minus the highest
    saddle toward a brighter maximum) is at least ``min_dip`` and ``min_dip_fraction`` of its
    height over ``level``; otherwise it is a bump of the brighter one (a bright particle's
    blurred rim, grain texture, a ring of the beam crossing the rim) and joins it, highest
    saddles first, as in a max-tree. Each object keeps its pixels above
    ``level + fraction * (own peak - level)``: its half-maximum outline for ``fraction`` 0.5.

    Parameters
    ----------
    smooth : numpy.ndarray
        2-D smoothed, background-free optical density.
    level : float
        Background level of ``smooth``.
    noise : float
        Background sd of ``smooth`` (beam structure included), > 0.
    low_sigmas : float
        Candidate pixels lie above ``level + low_sigmas * noise``.
    min_dip : float
        Smallest dip (same units as ``smooth``) of an object of its own.
    min_dip_fraction : float
        Smallest dip as a fraction of the maximum's height over ``level``.
    fraction : float
        Each object is cut at this fraction of its own peak over ``level``.
    frame_threshold : float
        The frame's own threshold: where two objects of their own meet and the fainter one
        peaks below it (the frame's threshold alone would not find it), the brighter one's
        pixels along their watershed line are returned in ``cut`` so that they stay apart.
    outline : numpy.ndarray, optional
        The same frame smoothed less, where each object is cut (default ``smooth``). Heavy
        smoothing lowers a small particle's peak and pulls its half-maximum outline inside its
        edge (a 15 px particle smoothed by 3 px keeps about 60 % of its area); the peak and
        the objects are still taken on ``smooth``, where the noise is lower.

    Returns
    -------
    own : numpy.ndarray
        bool mask of the objects at their own fraction of peak.
    cut : numpy.ndarray
        bool mask of the pixels that keep a faint object apart from a brighter neighbour.
    """
    smooth = np.asarray(smooth)
    if smooth.ndim != 2:
        raise ValueError(f"smooth must be 2-D, got shape {smooth.shape}")
    if not noise > 0:
        raise ValueError(f"noise must be > 0, got {noise}")
    candidate = smooth > level + low_sigmas * noise
    empty = np.zeros(smooth.shape, dtype=bool)
    if not candidate.any():
        return empty, empty
    seeds, n = ndimage.label(local_maxima(smooth) & candidate)
    basins = watershed(-smooth, seeds, mask=candidate)
    peaks = np.concatenate([[level], label_maxima(smooth, basins, n)])
    root = _join_bumps(smooth, basins, peaks, level, min_dip, min_dip_fraction)
    objects = root[basins]
    cut_image = smooth if outline is None else np.asarray(outline)
    if cut_image.shape != smooth.shape:
        raise ValueError(f"outline must have shape {smooth.shape}, got {cut_image.shape}")
    own = candidate & (cut_image > level + fraction * (peaks[objects] - level))
    cut = empty.copy()
    for a_slice, b_slice in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        a, b = objects[a_slice], objects[b_slice]
        meet = (a != b) & own[a_slice] & own[b_slice]
        faint_a = peaks[a] < peaks[b]
        fainter_peak = np.where(faint_a, peaks[a], peaks[b])
        meet &= fainter_peak <= frame_threshold
        # the brighter side gives up its pixel on the line
        cut[a_slice] |= meet & ~faint_a
        cut[b_slice] |= meet & faint_a
    return own, cut


def _join_bumps(
    smooth: np.ndarray,
    basins: np.ndarray,
    peaks: np.ndarray,
    level: float,
    min_dip: float,
    min_dip_fraction: float,
) -> np.ndarray:
    """Root basin of every basin after joining the maxima too shallow to stand alone.

    ``peaks[k]`` is basin ``k``'s maximum (``peaks[0]`` the background). Neighbouring basins
    are visited by decreasing saddle (the highest value on their common boundary); the
    fainter of the two joins the brighter when its peak stands less than ``min_dip`` or
    ``min_dip_fraction`` of its height over ``level`` above that saddle.
    """
    n = peaks.size - 1
    parent = np.arange(n + 1)
    lows, highs, saddles = _saddles(basins, smooth, n)
    if saddles.size == 0:
        return parent
    best = peaks.astype(np.float64).copy()

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for idx in np.argsort(-saddles, kind="stable"):
        ra, rb = find(int(lows[idx])), find(int(highs[idx]))
        if ra == rb:
            continue
        bright, faint = (ra, rb) if best[ra] >= best[rb] else (rb, ra)
        dip = best[faint] - float(saddles[idx])
        if dip < max(min_dip, min_dip_fraction * (best[faint] - level)):
            parent[faint] = bright
    return _resolve(parent)


def _saddles(
    labels: np.ndarray, values: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of 4-adjacent regions (labels 1..``n``, 0 is background) and its saddle:
    the highest ``min(value, neighbour's value)`` over their common boundary.

    Returns the lower labels, the higher labels (int64) and the saddles, one entry per pair,
    in ascending order of the pair.
    """
    keys_list, values_list = [], []
    for a, b, va, vb in (
        (labels[:, :-1], labels[:, 1:], values[:, :-1], values[:, 1:]),
        (labels[:-1], labels[1:], values[:-1], values[1:]),
    ):
        edge = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[edge], b[edge]).astype(np.int64)
        hi = np.maximum(a[edge], b[edge]).astype(np.int64)
        keys_list.append(lo * (n + 1) + hi)
        values_list.append(np.minimum(va[edge], vb[edge]))
    keys = np.concatenate(keys_list)
    saddle_values = np.concatenate(values_list)
    if keys.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, saddle_values
    order = np.argsort(keys, kind="stable")
    keys, saddle_values = keys[order], saddle_values[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(keys))[0] + 1])
    pair_keys = keys[starts]
    return pair_keys // (n + 1), pair_keys % (n + 1), np.maximum.reduceat(saddle_values, starts)


def _faint_objects(
    smooth: np.ndarray, level: float, noise: float, params: DetectParams
) -> np.ndarray:
    """Pixels of objects too faint for the frame's threshold, by their local contrast.

    The frame's threshold is a fraction of the Otsu level, which the brightest particles set:
    a particle dimmer than that (a small or thin one, or one whose edge comes later) is lost
    however far above the noise it stands. A pixel above ``faint_noise_sigmas`` noise sd is
    also kept when it is above ``threshold_factor`` of the highest value within
    ``local_contrast_px`` of it (over the background), as the frame's threshold is of the Otsu
    level: a faint particle keeps its own half-maximum outline, the blurred rim of a bright
    one stays out (it is below half of that particle's plateau a radius away), and a faint
    particle touching a bright one is cut off from it where the bright one is in reach.
    """
    sigmas = params.faint_noise_sigmas
    assert sigmas is not None
    size = 2 * int(round(params.local_contrast_px)) + 1
    local_max = ndimage.maximum_filter(smooth, size=size)
    faint = (smooth > level + sigmas * noise) & (
        smooth > level + params.threshold_factor * (local_max - level)
    )
    faint = ndimage.binary_opening(faint, iterations=2)
    return ndimage.binary_fill_holes(faint)


def label_maxima(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """``ndimage.maximum(values, labels, np.arange(1, n + 1))`` without sorting the frame.

    scipy sorts every pixel of the frame by value for it (a 1024 x 1024 frame: ~0.1 s); the
    maxima are the same (a maximum does not depend on the order it is taken in).
    """
    inside = labels > 0
    peaks = np.full(n + 1, -np.inf, dtype=values.dtype)
    np.maximum.at(peaks, labels[inside], values[inside])
    return peaks[1:]


def _split_touching(labels: np.ndarray, params: DetectParams, min_area: float) -> np.ndarray:
    """Split touching particles by a watershed on the distance transform.

    ``split_seeds="typical_spacing"``: seeds closer than ``split_min_distance_fraction`` of a
    typical diameter (that of a disc of 0.2 % of the frame) are merged. ``"size_scaled"``: a
    seed closer to a higher one than ``split_min_distance_fraction`` of that seed's inscribed
    diameter (twice its distance value) is merged into it, so a small particle touching a large
    one keeps its own seed (on a ragged faint mask it also cuts more fragments: see
    :meth:`pipelines.xanes.tracker.XanesTracker`, which uses it only on re-detected objects that
    hold a tracked particle). ``"small_beside_large"``: the typical-spacing seeds plus the
    size-scaled ones they lack whose inscribed disc is at least the smallest object kept and
    whose height is at most ``split_small_height_ratio`` of the neighbour's they touch (see
    :func:`_merge_unless_small`); the watershed is then run again from the seeds kept.
    Fragments smaller than 30 % of the typical disc (size-scaled seeds and the extra
    small-beside-large ones: than ``min_area``, the smallest object kept) go to their largest
    neighbour.
    """
    mask = labels > 0
    distance = ndimage.distance_transform_edt(mask)
    radius_typ = float(np.sqrt(0.002 * labels.size / np.pi))
    if params.split_seeds == "size_scaled":
        peaks = peak_local_max(distance, min_distance=2, labels=labels, exclude_border=False)
        peaks = _size_scaled_seeds(peaks, distance, params.split_min_distance_fraction)
    else:
        min_distance = max(3, int(round(params.split_min_distance_fraction * 2 * radius_typ)))
        peaks = peak_local_max(
            distance, min_distance=min_distance, labels=labels, exclude_border=False
        )
    n_typical = len(peaks)
    if params.split_seeds == "small_beside_large":
        extra = peak_local_max(distance, min_distance=2, labels=labels, exclude_border=False)
        extra = _size_scaled_seeds(extra, distance, params.split_min_distance_fraction)
        if len(extra) and len(peaks):
            # an extra seed near a typical one is that one
            gap = np.hypot(*(extra[:, None, :] - peaks[None, :, :]).transpose(2, 0, 1))
            near = gap.min(axis=1) < np.maximum(3.0, distance[tuple(extra.T)])
            extra = extra[~near]
        # a seed whose inscribed disc is smaller than the smallest object kept is a spur of a
        # ragged outline, not a particle of its own
        extra = extra[distance[tuple(extra.T)] >= np.sqrt(min_area / np.pi)]
        peaks = np.concatenate([peaks, extra]) if len(extra) else peaks
    markers = np.zeros(labels.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    split = watershed(-distance, markers, mask=mask)
    if params.split_seeds == "small_beside_large" and len(peaks) > n_typical:
        heights = np.concatenate([[0.0], distance[tuple(peaks.T)]])
        merged = _merge_unless_small(
            split, distance, heights, n_typical, params.split_small_height_ratio
        )
        # the watershed again from the seeds kept, so that one dropped leaves no trace
        kept = np.unique(merged[tuple(peaks.T)])
        peaks = peaks[kept[kept > 0] - 1]
        markers = np.zeros(labels.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        split = watershed(-distance, markers, mask=mask)
    areas = np.bincount(split.ravel())
    floor = np.full(areas.shape, min_area)
    if params.split_seeds != "size_scaled":
        # extra (small) regions are particles of their own: only the smallest object size
        floor[: n_typical + 1] = 0.3 * np.pi * radius_typ**2
    small = np.nonzero(areas < floor)[0]
    if small.size:
        split = _merge_small(split, small)
    return split


def _size_scaled_seeds(peaks: np.ndarray, distance: np.ndarray, fraction: float) -> np.ndarray:
    """Keep distance maxima, highest first, that lie farther from every kept one than
    ``fraction`` x the kept one's inscribed diameter (at least 3 px)."""
    if len(peaks) == 0:
        return peaks
    values = distance[tuple(peaks.T)]
    order = np.argsort(-values, kind="stable")
    kept: list[int] = []
    for i in order:
        if kept:
            others = peaks[kept]
            gap = np.hypot(*(others - peaks[i]).T)
            reach = np.maximum(3.0, fraction * 2.0 * values[kept])
            if np.any(gap < reach):
                continue
        kept.append(int(i))
    return peaks[kept]


def _merge_unless_small(
    split: np.ndarray, distance: np.ndarray, heights: np.ndarray, n_typical: int, ratio: float
) -> np.ndarray:
    """Merge each extra watershed region (label > ``n_typical``) into its neighbour unless it
    is much smaller than that neighbour.

    The neighbour is the region it shares the highest distance value with on their common
    boundary (the widest passage). A small particle touching a large one has an inscribed
    radius (its seed's height) well below the large one's; a lobe or bump of a large ragged
    particle, or a second maximum on its plateau, is about as high as the maximum next to it.
    An extra region whose seed is higher than ``ratio`` x its neighbour's joins it; lowest
    seeds first, and a merged region keeps the higher seed, so a chain of bumps collapses.
    """
    n = len(heights) - 1
    saddle = np.zeros((n + 1, n + 1))
    lows, highs, values = _saddles(split, distance, n)
    saddle[lows, highs] = values
    saddle[highs, lows] = values
    heights = heights.astype(np.float64).copy()
    lut = np.arange(n + 1)
    for lab in sorted(range(n_typical + 1, n + 1), key=lambda i: heights[i]):
        row = saddle[lab].copy()
        other = int(np.argmax(row))
        if row[other] <= 0 or heights[lab] <= ratio * heights[other]:
            continue
        lut[lab] = other
        # the merged region: the union of both boundaries, the higher seed
        saddle[other] = np.maximum(saddle[other], row)
        saddle[:, other] = saddle[other]
        saddle[other, other] = 0.0
        saddle[lab] = 0.0
        saddle[:, lab] = 0.0
        heights[other] = max(heights[other], heights[lab])
    return _resolve(lut)[split]


def _resolve(lut: np.ndarray) -> np.ndarray:
    """Follow chains in a merge table until each entry points to a fixed point."""
    while True:
        nxt = lut[lut]
        if np.array_equal(nxt, lut):
            return lut
        lut = nxt


def _merge_small(split: np.ndarray, small: np.ndarray) -> np.ndarray:
    """Merge watershed fragments that are too small into their largest touching neighbour."""
    out = split.copy()
    for lab in small:
        if lab == 0:
            continue
        region = out == lab
        ring = ndimage.binary_dilation(region) & ~region
        neighbours = out[ring]
        neighbours = neighbours[(neighbours != 0) & (neighbours != lab)]
        if neighbours.size:
            out[region] = np.bincount(neighbours).argmax()
        else:
            out[region] = 0
    return out
