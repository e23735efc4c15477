"""Particle (solid) mask that counts the cracks inside a particle as particle.

Three ways to build it per slice:

* :func:`particle_mask_slice`: threshold, add the given cracks, close and fill holes within one
  particle at a time (the original mask);
* :func:`particle_envelope_slice`: threshold, close and fill within one particle; then let the
  particles grow into the crack candidates and merge the pieces whose contact is a large share
  of the smaller piece's perimeter (:func:`pipelines.particles.merge.merge_by_contact`), so a
  crack through a particle or a hollow core stays inside its particle, while a dark gap between
  two particles (which only meet over a short neck) stays outside. It also returns the enclosed
  voids and the bridged cracks, which the crack map reports as cracks;
* a learned envelope (:mod:`models.envelope_unet`, run by the crack pipeline): the particle's
  whole shape as a network sees it; :func:`learned_envelope_voids` gives the dark pixels inside
  it, which the crack map reports as cracks.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from pipelines.particles.merge import contact_graph, merge_on_graph


class ParticleMaskParams(BaseModel):
    """Parameters of :func:`particle_mask`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    smoothing_sigma: float = Field(
        default=0.0, ge=0.0, description="Gaussian smoothing before threshold."
    )
    closing_radius: NonNegativeInt = Field(
        default=2, description="Disk radius of the closing that bridges cracks across a particle."
    )
    separate_particles: bool = Field(
        default=True,
        description="Close and fill holes within one particle at a time (gaps and pores "
        "between particles stay open); False = plain closing and hole filling.",
    )
    min_area: NonNegativeInt = Field(
        default=20, description="Smaller 2-D objects are dropped (pixels)."
    )
    threshold: float | None = Field(
        default=None, description="Solid intensity threshold; None = Otsu (solid_threshold)."
    )
    bridge_px: NonNegativeInt = Field(
        default=4,
        description="particle_envelope_slice: how far (pixels) particles grow into crack "
        "candidates to meet the other side of a crack.",
    )
    merge_min_share: float = Field(
        default=0.12,
        gt=0.0,
        le=1.0,
        description="particle_envelope_slice: pieces merge into one particle when their "
        "contact (after growing) is at least this share of the smaller piece's perimeter.",
    )
    notch_radius: NonNegativeInt = Field(
        default=4,
        description="particle_envelope_slice: crack candidates reached from one particle only "
        "are part of it where the square of this half-width around them holds no other "
        "particle and is at least half particle (a crack open to the particle surface), not "
        "where they lie outside its outline (a dark fringe or a gap).",
    )
    min_void_area: NonNegativeInt = Field(
        default=6,
        description="particle_envelope_slice: smaller enclosed dark holes are not voids "
        "(noise); they still count as particle.",
    )
    void_depth_px: float = Field(
        default=2.0,
        ge=0.0,
        description="learned_envelope_voids: dark pixels count as voids only deeper than this "
        "inside the learned envelope (its rim is the blurred particle outline).",
    )


def solid_threshold(volume: np.ndarray, max_samples: int = 2_000_000) -> float:
    """Intensity separating particle solid from carbon/binder and pores.

    Parameters
    ----------
    volume : numpy.ndarray
        Reconstructed volume or slice, any real dtype.
    max_samples : int, optional
        Size of the regular subsample the threshold is computed on.

    Returns
    -------
    float
        Otsu threshold of the non-zero voxels (zeros are outside the reconstruction circle):
        the dense NMC particles against the carbon/binder and pores together. (A 3-class Otsu
        is unstable here: phase-contrast fringes make a bright tail it may split off.)
    """
    flat = np.asarray(volume).ravel()
    return solid_threshold_from_sample(flat[:: max(1, flat.size // max_samples)])


def solid_threshold_from_sample(sample: np.ndarray) -> float:
    """:func:`solid_threshold` of a regular subsample already taken (e.g. slab by slab).

    Parameters
    ----------
    sample : numpy.ndarray
        The voxels ``volume.ravel()[::step]`` (any real dtype), zeros included.

    Returns
    -------
    float
        Otsu threshold of the non-zero values.
    """
    sample = np.asarray(sample).ravel().astype(np.float64)
    sample = sample[sample != 0]
    if sample.size < 3 or np.ptp(sample) == 0:
        raise ValueError("volume has too few distinct non-zero values to find a solid threshold")
    return float(threshold_otsu(sample))


def particle_mask_slice(
    image: np.ndarray,
    threshold: float,
    params: ParticleMaskParams | None = None,
    *,
    cracks: np.ndarray | None = None,
) -> np.ndarray:
    """Particle mask of one slice.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) reconstructed slice.
    threshold : float
        Solid threshold (:func:`solid_threshold`).
    params : ParticleMaskParams, optional
        Smoothing, closing radius, minimum area.
    cracks : numpy.ndarray, optional
        (Y, X) crack mask of the slice (e.g. from the U-Net); cracks are added to the solid
        before closing so that a particle split by a crack stays one particle.

    Returns
    -------
    numpy.ndarray
        bool (Y, X): thresholded solid, closed with a disk and with enclosed holes filled so
        that cracks inside particles are part of the particle. Closing and hole filling act
        within one particle at a time: gaps and pores between particles stay open.
    """
    p = params if params is not None else ParticleMaskParams()
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if p.smoothing_sigma > 0:
        img = ndimage.gaussian_filter(img, p.smoothing_sigma)
    solid = img > threshold
    if cracks is not None:
        if cracks.shape != solid.shape:
            raise ValueError(f"cracks shape {cracks.shape} != image shape {solid.shape}")
        solid |= cracks.astype(bool)
    if p.separate_particles:
        if p.closing_radius > 0:
            solid = _close_within_particles(solid, p.closing_radius)
        solid = _fill_holes_within_particles(solid)
    else:
        if p.closing_radius > 0:
            r = p.closing_radius
            padded = np.pad(solid, r, mode="edge")
            solid = ndimage.binary_closing(padded, structure=disk(r))[r:-r, r:-r]
        solid = ndimage.binary_fill_holes(solid)
    if p.min_area > 0:
        labels, n = ndimage.label(solid)
        if n:
            areas = np.bincount(labels.ravel())
            small = areas < p.min_area
            small[0] = False
            solid[small[labels]] = False
    return solid


_NO_LABEL = np.iinfo(np.int32).max


def _offsets(footprint: np.ndarray) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of the True pixels of a centred footprint."""
    cy, cx = footprint.shape[0] // 2, footprint.shape[1] // 2
    return [(int(y) - cy, int(x) - cx) for y, x in np.argwhere(footprint)]


def _shifted(padded: np.ndarray, pad: int, dy: int, dx: int, shape: tuple[int, ...]) -> np.ndarray:
    """View of ``padded`` (padded by ``pad`` on every side) moved by (dy, dx) over ``shape``."""
    return padded[pad + dy : pad + dy + shape[0], pad + dx : pad + dx + shape[1]]


def _zero_padded(mask: np.ndarray, pad: int) -> np.ndarray:
    """``np.pad(mask, pad, constant_values=False)`` of a 2-D mask, without np.pad's overhead."""
    padded = np.zeros((mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad), dtype=bool)
    padded[pad : pad + mask.shape[0], pad : pad + mask.shape[1]] = mask
    return padded


def _factors(footprint: np.ndarray) -> list[list[tuple[int, int]]]:
    """Offsets of footprints whose successive dilations make ``footprint``: a full odd square
    is a row and a column, a diamond (``|dy| + |dx| <= r``) r crosses; else itself."""
    fp = np.asarray(footprint, dtype=bool)
    side = fp.shape[0]
    half = side // 2
    if fp.ndim == 2 and fp.shape == (side, side) and side % 2 == 1 and side >= 3:
        steps = range(-half, half + 1)
        if fp.all():
            return [[(0, d) for d in steps], [(d, 0) for d in steps]]
        dy, dx = np.indices(fp.shape) - half
        if half >= 2 and np.array_equal(fp, np.abs(dy) + np.abs(dx) <= half):
            return [[(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]] * half
    return [_offsets(fp)]


def _shift_reduce(mask: np.ndarray, offsets: list[tuple[int, int]], dilate: bool) -> np.ndarray:
    """OR (``dilate``) or AND of ``mask`` moved by each offset, outside the image False."""
    if not offsets:
        return np.full(mask.shape, not dilate)
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = _zero_padded(mask, pad)
    first, *rest = offsets
    out = _shifted(padded, pad, *first, mask.shape).copy()
    for dy, dx in rest:
        if dilate:
            out |= _shifted(padded, pad, dy, dx, mask.shape)
        else:
            out &= _shifted(padded, pad, dy, dx, mask.shape)
    return out


def binary_dilate(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, footprint)`` (symmetric footprint, outside False).

    An OR of shifted copies: for the small footprints used here it is many times faster than
    scipy's generic binary morphology. A full square or a diamond is dilated by its factors
    (a row and a column; crosses), which is the same set with fewer passes.
    """
    out = np.asarray(mask, dtype=bool)
    for offsets in _factors(footprint):
        out = _shift_reduce(out, offsets, dilate=True)
    return out


def binary_erode(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, footprint)`` (symmetric footprint, outside False);
    by the factors of :func:`binary_dilate` (outside False, so the same set)."""
    out = np.asarray(mask, dtype=bool)
    for offsets in _factors(footprint):
        out = _shift_reduce(out, offsets, dilate=False)
    return out


def _true_points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero(mask)`` of a 2-D mask (same order and dtype), from the flat indices: a
    2-D ``nonzero`` costs several times a 1-D one on a 512 x 512 slice."""
    flat = np.flatnonzero(mask)
    rows, cols = np.divmod(flat, mask.shape[1])
    return rows, cols


def _square_indices(
    shape: tuple[int, ...], points: tuple[np.ndarray, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the size x size square around each point, clipped to the image.

    Returns the (size * size, n) flat indices (a coordinate beyond the border is moved onto
    it, like ``mode="nearest"``) and, as (size * size, n) bool, whether the unclipped row and
    column lie inside the image.
    """
    ys, xs = points
    half = size // 2
    steps = np.arange(-half, half + 1)[:, np.newaxis]
    rows, cols = ys[np.newaxis, :] + steps, xs[np.newaxis, :] + steps
    row_inside = (rows >= 0) & (rows < shape[0])
    col_inside = (cols >= 0) & (cols < shape[1])
    inside = row_inside[:, np.newaxis, :] & col_inside[np.newaxis, :, :]
    return _square_flat(shape, points, size), inside.reshape(size * size, ys.size)


def _square_flat(shape: tuple[int, ...], points: tuple[np.ndarray, ...], size: int) -> np.ndarray:
    """The (size * size, n) flat indices of :func:`_square_indices` alone."""
    ys, xs = points
    half = size // 2
    steps = np.arange(-half, half + 1)
    # the centres' flat indices plus fixed offsets; only the squares that reach beyond the
    # border are recomputed with clipped rows and columns
    offsets = (steps[:, np.newaxis] * shape[1] + steps[np.newaxis, :]).reshape(-1, 1)
    flat = offsets + (ys * shape[1] + xs)[np.newaxis, :]
    near = (ys < half) | (ys >= shape[0] - half) | (xs < half) | (xs >= shape[1] - half)
    if near.any():
        rows = np.clip(ys[near][np.newaxis, :] + steps[:, np.newaxis], 0, shape[0] - 1)
        cols = np.clip(xs[near][np.newaxis, :] + steps[:, np.newaxis], 0, shape[1] - 1)
        clipped = rows[:, np.newaxis, :] * shape[1] + cols[np.newaxis, :, :]
        flat[:, near] = clipped.reshape(size * size, -1)
    return flat


def _neighbourhood_extremes(
    labels: np.ndarray,
    points: tuple[np.ndarray, ...],
    size: int,
    *,
    lowest: bool = True,
    flat: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Highest label and lowest non-zero label in the size x size square around each point.

    Pixels beyond the border repeat the border (``mode="nearest"``); the lowest is
    :data:`_NO_LABEL` where the square holds no label (None when ``lowest`` is False).
    Only the squares around the points are read (one flat gather, indices clipped to the
    image), never a padded copy of the whole slice. ``flat``: the squares' indices
    (:func:`_square_flat`) if already computed.
    """
    if flat is None:
        flat = _square_flat(labels.shape, points, size)
    window = np.take(labels.ravel(), flat)
    highest = window.max(axis=0) if points[0].size else np.zeros(0, dtype=labels.dtype)
    if not lowest:
        return highest, None
    if not points[0].size:
        return highest, np.zeros(0, dtype=np.int64)
    # labels are >= 0: minus one, read as unsigned, 0 becomes the largest value, so the
    # minimum is the lowest non-zero label minus one (the largest value where there is none)
    np.subtract(window, 1, out=window)
    unsigned = window.view(np.dtype(f"u{window.itemsize}"))
    low = unsigned.min(axis=0)
    none = low == np.iinfo(unsigned.dtype).max
    low = low.astype(np.int64) + 1
    low[none] = _NO_LABEL
    return highest, low


def _close_within_particles(solid: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing that only adds pixels whose neighbourhood holds a single particle.

    A plain closing also bridges the thin binder gaps between neighbouring particles; here a
    pixel added by the closing is kept only when every solid pixel within ``radius`` (in a
    square neighbourhood) belongs to the same connected component.
    """
    footprint = disk(radius)
    padded = np.pad(solid, radius, mode="edge")
    closed = binary_erode(binary_dilate(padded, footprint), footprint)
    added = closed[radius:-radius, radius:-radius] & ~solid
    if not added.any():
        return solid
    labels, _ = ndimage.label(solid)
    # a square neighbourhood is slightly stricter than the disk; it is only looked at around
    # the added pixels
    points = _true_points(added)
    highest, lowest = _neighbourhood_extremes(labels, points, 2 * radius + 1)
    keep = (highest == lowest) & (highest > 0)
    out = solid.copy()
    out[points[0][keep], points[1][keep]] = True
    return out


def _holes(solid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background components labelled 1..n, and which of them are holes (do not touch the
    image border), as a bool array indexed by component label."""
    background, n = ndimage.label(~solid)
    is_hole = np.ones(n + 1, dtype=bool)
    if n:
        edges = np.concatenate((background[0], background[-1], background[:, 0], background[:, -1]))
        is_hole[edges] = False
    is_hole[0] = False
    return background, is_hole


def _fill_holes_within_particles(solid: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Fill the holes that are enclosed by one particle (not pores ringed by several).

    ``labels`` (optional) says which pixels form one particle; default the connected
    components of ``solid``.
    """
    return _fill_holes_and_background(solid, labels)[0]


def _fill_holes_and_background(
    solid: np.ndarray, labels: np.ndarray | None = None, relabel: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_fill_holes_within_particles` and the background components it filled from
    (``ndimage.label(~solid)``): each filled hole is one whole component. ``relabel``
    (optional): the particle of a pixel of ``solid`` is ``relabel[labels]`` there."""
    background, is_hole = _holes(solid)
    if not is_hole.any():
        return solid, background
    holes = _lut_mask(is_hole, background)
    if labels is None:
        labels, _ = ndimage.label(solid)
    square = np.ones((3, 3), dtype=bool)
    ring = binary_dilate(holes, square) & solid
    points = _true_points(ring)
    # the hole next to each ring pixel (the highest one where a pixel touches several)
    around = np.take(background.ravel(), _square_flat(solid.shape, points, 3))
    hole_of_ring = np.where(is_hole[around], around, 0).max(axis=0, initial=0)
    particle_of_ring = labels[points]
    if relabel is not None:
        particle_of_ring = np.take(relabel, particle_of_ring)
    highest = np.zeros(is_hole.size, dtype=np.int64)
    lowest = np.full(is_hole.size, _NO_LABEL, dtype=np.int64)
    np.maximum.at(highest, hole_of_ring, particle_of_ring)
    np.minimum.at(lowest, hole_of_ring, particle_of_ring)
    enclosed_by_one = (highest == lowest) & (highest > 0)
    enclosed_by_one[0] = False
    # the filled holes are the holes but those ringed by several particles (usually none)
    return solid | (holes & ~_lut_mask(is_hole & ~enclosed_by_one, background)), background


_FEW_LABELS = 4
"""Up to this many labels a look-up is made by comparisons (each costs about a tenth of a
``np.take`` of the label image, which converts the labels to intp first)."""


def _lut_mask(lut: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``np.take(lut, labels)`` of a bool look-up table, for labels >= 0; what it gives for
    labels past the table's end is unspecified (callers mask those pixels out)."""
    true = np.flatnonzero(lut)
    if true.size <= _FEW_LABELS:
        out = np.zeros(labels.shape, dtype=bool)
        for t in true.tolist():
            out |= labels == t
        return out
    false = np.flatnonzero(~lut)
    if false.size <= _FEW_LABELS:
        out = np.ones(labels.shape, dtype=bool)
        for f in false.tolist():
            out &= labels != f
        return out
    return np.take(lut, labels, mode="clip")


def _drop_small_holes(holes: np.ndarray, background: np.ndarray, min_area: int) -> np.ndarray:
    """``holes`` without its 4-connected pieces smaller than ``min_area`` pixels, where every
    piece of ``holes`` is a whole component of ``background`` (labels 1..n, 0 elsewhere).

    Distinct background components never touch (4-neighbours), so the pieces of ``holes``
    are those components and their sizes are counted without labelling ``holes`` again.
    """
    sizes = np.bincount(background[holes])
    small = (sizes > 0) & (sizes < min_area)
    if not small.any():
        return holes
    # labels past ``sizes`` hold no hole pixel: what the look-up gives there is masked out
    return holes & ~_lut_mask(small, background)


def fill_enclosed_holes(labels: np.ndarray) -> np.ndarray:
    """2-D labels with every background hole enclosed by a single label given that label.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Y, X) instance labels, 0 = background.

    Returns
    -------
    numpy.ndarray
        Labels of the same dtype; holes ringed by two or more labels (pores between
        particles) stay background.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {lab.shape}")
    solid = lab > 0
    filled = _fill_holes_within_particles(solid, lab)
    added = filled & ~solid
    if not added.any():
        return lab.copy()
    holes, _ = ndimage.label(added)
    points = np.nonzero(added)
    # each added hole takes the label of the pixels ringing it (one label by construction)
    ring = binary_dilate(added, np.ones((3, 3), dtype=bool)) & solid
    owner = np.zeros(int(holes.max()) + 1, dtype=lab.dtype)
    ring_points = np.nonzero(ring)
    hole_of_ring, _ = _neighbourhood_extremes(holes, ring_points, 3, lowest=False)
    owner[hole_of_ring] = lab[ring_points]
    out = lab.copy()
    out[points] = owner[holes[points]]
    return out


def _grow_into(
    labels: np.ndarray,
    reach: np.ndarray,
    steps: int,
    *,
    points: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow labels into the ``reach`` pixels, one 4-neighbour step at a time.

    Returns the grown labels (highest neighbour label) and, for each pixel, the lowest label
    that reached it at the same step (``_NO_LABEL`` where none), so ``lowest == grown`` marks
    pixels reached from one particle only. Only the candidate pixels are visited:
    ``points``, if given, must be ``np.nonzero(reach & (labels == 0))``.
    """
    height, width = labels.shape
    # label dtype (int32 from ndimage.label, which also holds _NO_LABEL): no int64 copies
    high_pad = np.zeros((height + 2, width + 2), dtype=np.result_type(labels, np.int32))
    high_pad[1:-1, 1:-1] = labels
    low_pad = np.where(high_pad > 0, high_pad, _NO_LABEL).astype(high_pad.dtype, copy=False)
    ys, xs = np.nonzero(reach & (labels == 0)) if points is None else points
    cand = (ys + 1) * (width + 2) + (xs + 1)
    offsets = np.array([-1, 1, -(width + 2), width + 2])
    high_flat, low_flat = high_pad.ravel(), low_pad.ravel()
    for _ in range(steps):
        if cand.size == 0:
            break
        around = cand[:, None] + offsets[None, :]
        high = np.take(high_flat, around).max(axis=1)
        hit = high > 0
        low = np.take(low_flat, around[hit]).min(axis=1)
        # all reads of this step happen before its writes: one synchronous growth step
        reached = cand[hit]
        high_flat[reached] = high[hit]
        low_flat[reached] = low
        cand = cand[~hit]
    return high_pad[1:-1, 1:-1], low_pad[1:-1, 1:-1]


def _box_share(
    mask: np.ndarray,
    points: tuple[np.ndarray, ...],
    radius: int,
    *,
    flat: np.ndarray | None = None,
) -> np.ndarray:
    """Share of ``mask`` in the (2 radius + 1)^2 square around each point (the square is
    clipped at the image border); only the squares around the points are read (``flat``:
    their indices, :func:`_square_flat`, if already computed)."""
    size = 2 * radius + 1
    ys, xs = points
    if flat is None:
        flat = _square_flat(mask.shape, points, size)
    window = np.take(mask.ravel(), flat)
    count = np.full(ys.size, size * size, dtype=np.int64)
    near = (ys < radius) | (ys >= mask.shape[0] - radius)
    near |= (xs < radius) | (xs >= mask.shape[1] - radius)
    if near.any():
        # only the squares that reach beyond the border have pixels to leave out
        _, inside = _square_indices(mask.shape, (ys[near], xs[near]), size)
        window[:, near] &= inside
        count[near] = inside.sum(axis=0)
    return window.sum(axis=0) / count


def particle_envelope_slice(
    image: np.ndarray,
    threshold: float,
    params: ParticleMaskParams | None = None,
    *,
    bridge: np.ndarray | None = None,
    cracks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Particle envelope of one slice and the voids and cracks it encloses.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) reconstructed slice.
    threshold : float
        Solid threshold (:func:`solid_threshold`).
    params : ParticleMaskParams, optional
        ``smoothing_sigma``, ``closing_radius``, ``min_area``, ``bridge_px``,
        ``merge_min_share``, ``min_void_area``.
    bridge : numpy.ndarray, optional
        (Y, X) bool crack candidates (e.g. the network's crack probability above a low level)
        into which particles may grow to meet across a crack; default none (only holes
        enclosed by one particle are then bridged).
    cracks : numpy.ndarray, optional
        Accepted for symmetry with :func:`particle_mask_slice`; crack candidates reached from
        one particle only and flanked by it are part of it whether confident or not.

    Returns
    -------
    envelope : numpy.ndarray
        bool (Y, X): particles with their cracks and core voids.
    voids : numpy.ndarray
        bool (Y, X): dark holes of at least ``min_void_area`` pixels enclosed by one particle,
        and the crack pixels that join the pieces of one particle.
    """
    p = params if params is not None else ParticleMaskParams()
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if bridge is not None and np.shape(bridge) != img.shape:
        raise ValueError(f"bridge shape {np.shape(bridge)} != image shape {img.shape}")
    if p.smoothing_sigma > 0:
        img = ndimage.gaussian_filter(img, p.smoothing_sigma)
    solid = img > threshold
    closed = _close_within_particles(solid, p.closing_radius) if p.closing_radius else solid
    labels, n = ndimage.label(closed)
    grown = labels
    # only the bridge candidates outside ``closed`` can be grown into: what concerns grown
    # pixels is computed at those points alone, not over the whole slice
    reach_at: tuple[np.ndarray, ...] = (np.zeros(0, dtype=np.intp),) * 2
    grown_at = np.zeros(0, dtype=labels.dtype)
    single_at = np.zeros(0, dtype=bool)  # reached from one particle only
    if bridge is not None and n and p.bridge_px:
        reach = np.asarray(bridge, dtype=bool) & ~closed
        reach_at = _true_points(reach)
        # labels == 0 exactly off ``closed``: the reach pixels are the growth candidates
        grown, lowest = _grow_into(labels, reach, p.bridge_px, points=reach_at)
        grown = np.ascontiguousarray(grown)  # contact_graph reads it flat
        grown_at = grown[reach_at]
        single_at = (grown_at > 0) & (lowest[reach_at] == grown_at)
    if n:
        surface, contacts = contact_graph(grown)
        mapping = merge_on_graph(surface, contacts, min_share=p.merge_min_share)
    else:
        mapping = {}
    # merged labels (merge_by_contact's relabelling) as a look-up table; bridge pixels are
    # kept only where they joined pieces of one particle
    merged_of = np.arange(n + 1, dtype=grown.dtype)
    joined = np.zeros(n + 1, dtype=bool)
    for old, new in mapping.items():
        merged_of[old] = new
        joined[old] = joined[new] = True
    bridged_at = joined[grown_at]
    bridged = np.zeros(closed.shape, dtype=bool)
    bridged[reach_at] = bridged_at
    # the particles: ``closed``, the bridged pixels and the notches below; on each of their
    # pixels the particle's label is ``merged_of[grown]`` (read where needed, never for the
    # whole slice)
    in_group = closed | bridged
    if p.notch_radius and bridge is not None:
        reached = single_at & ~bridged_at
        if reached.any():
            # a crack open to one particle's surface is flanked by that particle: most of its
            # neighbourhood is particle (a dark fringe or gap outside the outline has less)
            points = (reach_at[0][reached], reach_at[1][reached])
            size = 2 * p.notch_radius + 1
            squares = _square_flat(labels.shape, points, size)
            highest, lowest_near = _neighbourhood_extremes(labels, points, size, flat=squares)
            flanked = highest == lowest_near
            if flanked.any():
                # the share of particle only where the square holds one particle
                one = (points[0][flanked], points[1][flanked])
                share = _box_share(in_group, one, p.notch_radius, flat=squares[:, flanked])
                flanked[flanked] = share >= 0.5
            in_group[points[0][flanked], points[1][flanked]] = True
    envelope, background = _fill_holes_and_background(in_group, grown, merged_of)
    if p.min_area > 0:
        comp, m = ndimage.label(envelope)
        if m:
            small = np.bincount(comp.ravel()) < p.min_area
            small[0] = False
            if small.any():
                envelope &= ~_lut_mask(small, comp)
    # voids: dark holes enclosed by one particle (at least min_void_area pixels), the cracks
    # that join its pieces and the dark pixels the closing added right beside those
    holes = envelope & ~in_group
    if p.min_void_area > 1 and holes.any():
        # the holes are whole background components of in_group: filled whole, and the
        # min_area step drops whole envelope components
        holes = _drop_small_holes(holes, background, p.min_void_area)
    joins = bridged | holes
    beside = closed & ~solid & binary_dilate(joins, np.ones((3, 3), dtype=bool))
    return envelope, (joins | beside) & envelope


def learned_envelope_voids(
    image: np.ndarray,
    threshold: float,
    envelope: np.ndarray,
    params: ParticleMaskParams | None = None,
) -> np.ndarray:
    """Dark pixels inside a learned particle envelope: the cracks and core voids it holds.

    The envelope (:mod:`models.envelope_unet`) already counts a particle's cracks and core as
    particle, so the dark (not solid) pixels inside it are its cracks and voids, except on its
    rim, where the blurred outline is dark too.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) reconstructed slice.
    threshold : float
        Solid threshold (:func:`solid_threshold`).
    envelope : numpy.ndarray
        bool (Y, X) envelope.
    params : ParticleMaskParams, optional
        ``smoothing_sigma``, ``void_depth_px``, ``min_void_area``.

    Returns
    -------
    numpy.ndarray
        bool (Y, X): dark pixels deeper than ``void_depth_px`` inside the envelope, in pieces of
        at least ``min_void_area`` pixels.
    """
    p = params if params is not None else ParticleMaskParams()
    img = np.asarray(image, dtype=np.float32)
    env = np.asarray(envelope, dtype=bool)
    if img.ndim != 2 or env.shape != img.shape:
        raise ValueError(f"image {img.shape} and envelope {env.shape} must be one 2-D shape")
    if p.smoothing_sigma > 0:
        img = ndimage.gaussian_filter(img, p.smoothing_sigma)
    dark = env & (img <= threshold)
    if p.void_depth_px > 0 and dark.any():
        dark &= ndimage.distance_transform_edt(np.pad(env, 1))[1:-1, 1:-1] > p.void_depth_px
    if p.min_void_area > 1 and dark.any():
        pieces, _ = ndimage.label(dark, structure=np.ones((3, 3), dtype=bool))
        big = np.bincount(pieces.ravel()) >= p.min_void_area
        big[0] = False
        dark = big[pieces]
    return dark


def surface_inlets(
    image: np.ndarray,
    threshold: float,
    envelope: np.ndarray,
    *,
    radius: int,
    depth_ratio: float = 4.0,
    min_depth_px: float = 2.0,
) -> np.ndarray:
    """Dark, narrow and deep inlets into one particle's envelope: cracks open to its surface.

    The envelope is closed with a disk of ``radius`` within one particle (an added pixel whose
    square neighbourhood of half-width ``radius`` holds a single envelope component); of the
    dark pixels this adds, those deeper inside the closed shape than ``depth_ratio`` times
    their distance to the envelope plus ``min_depth_px`` are an inlet (chessboard distances).
    A crack or gap that runs into a particle is narrow and deep; a bay of a rough outline is
    about as deep as it is wide and stays out.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) reconstructed slice.
    threshold : float
        Solid threshold (:func:`solid_threshold`): inlet pixels are at or below it.
    envelope : numpy.ndarray
        bool (Y, X) particle envelope (e.g. :func:`particle_envelope_slice`).
    radius : int
        Closing radius: inlets up to about 2 ``radius`` wide.
    depth_ratio, min_depth_px : float
        Depth bound (see above).

    Returns
    -------
    numpy.ndarray
        bool (Y, X) inlet pixels, outside ``envelope``.
    """
    img = np.asarray(image, dtype=np.float32)
    env = np.asarray(envelope, dtype=bool)
    if img.ndim != 2 or env.shape != img.shape:
        raise ValueError(f"image {img.shape} and envelope {env.shape} must be one 2-D shape")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    if depth_ratio < 0 or min_depth_px < 0:
        raise ValueError("depth_ratio and min_depth_px must be >= 0")
    none = np.zeros(env.shape, dtype=bool)
    if not env.any():
        return none
    footprint = disk(radius).astype(bool)
    padded = np.pad(env, radius, mode="edge")
    closed = binary_erode(binary_dilate(padded, footprint), footprint)[
        radius:-radius, radius:-radius
    ]
    candidates = closed & ~env & (img <= threshold)
    if not candidates.any():
        return none
    labels, _ = ndimage.label(env)
    size = 2 * radius + 1
    highest = ndimage.maximum_filter(labels, size=size, mode="nearest")
    lowest = -ndimage.maximum_filter(
        np.where(labels > 0, -labels, -_NO_LABEL), size=size, mode="nearest"
    )
    one_particle = (highest == lowest) & (highest > 0)
    candidates &= one_particle
    closed = env | (closed & one_particle)
    if not candidates.any():
        return none
    depth = ndimage.distance_transform_cdt(np.pad(closed, 1), metric="chessboard")[1:-1, 1:-1]
    half_width = ndimage.distance_transform_cdt(~env, metric="chessboard")
    return candidates & (depth >= depth_ratio * half_width + min_depth_px)


def drop_small_pieces(mask: np.ndarray, min_area: int) -> np.ndarray:
    """A 2-D mask without its (4-connected) pieces smaller than ``min_area`` pixels."""
    out = np.asarray(mask, dtype=bool).copy()
    if min_area > 0 and out.any():
        pieces, n = ndimage.label(out)
        small = np.bincount(pieces.ravel(), minlength=n + 1) < min_area
        small[0] = False
        out[small[pieces]] = False
    return out


def drop_edge_specks(cracks: np.ndarray, envelope: np.ndarray, min_pixels: int) -> np.ndarray:
    """Crack mask of one slice without the small pieces on the particle outline.

    A crack component (8-connected) of fewer than ``min_pixels`` pixels that touches the
    outside of the particle envelope is dropped: a speck where the outline is rough or a
    fringe darkens it, not a crack (a crack open to the surface runs into the particle and is
    longer). Enclosed voids and pieces away from the outline are kept whatever their size.

    Parameters
    ----------
    cracks : numpy.ndarray
        bool (Y, X) crack mask.
    envelope : numpy.ndarray
        bool (Y, X) particle envelope (cracks included).
    min_pixels : int
        Smallest kept size of a component touching the outside; 0 keeps everything.

    Returns
    -------
    numpy.ndarray
        bool (Y, X), a subset of ``cracks``.
    """
    crack = np.asarray(cracks, dtype=bool)
    env = np.asarray(envelope, dtype=bool)
    if crack.ndim != 2 or crack.shape != env.shape:
        raise ValueError(f"cracks {crack.shape} and envelope {env.shape} must be one 2-D shape")
    if min_pixels <= 0 or not crack.any():
        return crack.copy()
    comp, n = ndimage.label(crack, structure=np.ones((3, 3), dtype=bool))
    # the crack pixels listed once; sizes and outline contacts read there
    at = np.flatnonzero(crack)
    comp_at = comp.ravel()[at]
    sizes = np.bincount(comp_at, minlength=n + 1)
    outer = binary_dilate(~env, np.ones((3, 3), dtype=bool))
    touching = np.bincount(comp_at[outer.ravel()[at]], minlength=n + 1) > 0
    drop = touching & (sizes < min_pixels)
    drop[0] = False
    if not drop.any():
        return crack.copy()
    return crack & ~_lut_mask(drop, comp)


def particle_mask(
    volume: np.ndarray,
    params: ParticleMaskParams | None = None,
    *,
    cracks: np.ndarray | None = None,
) -> np.ndarray:
    """Particle mask of a volume, slice by slice.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed volume, any real dtype.
    params : ParticleMaskParams, optional
        See :class:`ParticleMaskParams`.
    cracks : numpy.ndarray, optional
        (Z, Y, X) crack mask added to the solid (see :func:`particle_mask_slice`).

    Returns
    -------
    numpy.ndarray
        bool (Z, Y, X), True on particles including their cracks.
    """
    p = params if params is not None else ParticleMaskParams()
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D (Z, Y, X), got shape {vol.shape}")
    if cracks is not None and np.shape(cracks) != vol.shape:
        raise ValueError(f"cracks shape {np.shape(cracks)} != volume shape {vol.shape}")
    threshold = p.threshold if p.threshold is not None else solid_threshold(vol)
    return np.stack(
        [
            particle_mask_slice(s, threshold, p, cracks=None if cracks is None else cracks[z])
            for z, s in enumerate(vol)
        ]
    )


CONVENTIONAL = ParticleMaskParams(closing_radius=3, separate_particles=False)
"""Particle mask of the conventional (no U-Net) pipeline used by the threshold baseline."""
