"""Keep only instances that look like active material to both networks and to the grey levels.

The particle U-Net calls some patches of bright carbon/binder texture and some clusters of small
binder grains "particle". Two physical checks, each with its natural midpoint as the bound (not
fitted to any set), reject them:

- **the envelope network agrees** (:func:`instance_mean`): the mean probability the envelope
  network (:mod:`models.envelope_unet`, trained apart from the particle U-Net's targets) gives
  an instance's voxels is at least one half, i.e. over the instance it calls it particle
  rather than not;
- **the instance holds solid** (:func:`solid_reach`): active material (NMC) is the densest
  phase of a cathode, denser than the carbon/binder (low Z) and the pores. The brightest tenth
  of an instance's voxels must come at least half way from the background level to the solid
  level, both estimated in each slice (:func:`phase_levels`), so the rule carries across
  reconstructions, 8-bit renders and normalisations, and a slab of a volume gets the levels
  the whole volume gets. A cracked or hollow particle still has solid voxels; a blurred small
  particle still has a bright core; a patch of binder never reaches the solid level.

:func:`trim_unlike_voxels` applies the same two bounds to the voxels of the kept instances: a
voxel that is neither envelope nor solid (a rim of faint binder the particle U-Net added to a
particle) leaves its instance.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.cracks.particle_mask import fill_enclosed_holes

#: Share of an instance's brightest voxels whose lower edge :func:`solid_reach` measures.
BRIGHT_QUANTILE = 0.9


def phase_levels(
    normalized: np.ndarray, foreground: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each slice's solid and background grey levels, from the particle U-Net's own split.

    Parameters
    ----------
    normalized : numpy.ndarray
        float (Z, Y, X) normalised grey levels.
    foreground : numpy.ndarray
        float (Z, Y, X) particle probability.
    valid : numpy.ndarray, optional
        bool (Z, Y, X): voxels to use (e.g. inside the reconstruction circle); default all.

    Returns
    -------
    solid, background : numpy.ndarray
        float64 (Z,): per slice, the medians of the grey level where the particle probability
        is >= 0.5 and where it is below; both NaN in a slice where either side is empty or
        the solid level is not above the background (no contrast to measure against).
    """
    img = np.asarray(normalized)
    prob = np.asarray(foreground)
    if img.ndim != 3:
        raise ValueError(f"normalized must be 3-D (Z, Y, X), got shape {img.shape}")
    if img.shape != prob.shape:
        raise ValueError(f"foreground shape {prob.shape} != normalized shape {img.shape}")
    inside = np.ones(img.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if inside.shape != img.shape:
        raise ValueError(f"valid shape {inside.shape} != normalized shape {img.shape}")
    solid = np.full(img.shape[0], np.nan)
    background = np.full(img.shape[0], np.nan)
    for z in range(img.shape[0]):
        particle = prob[z] >= 0.5
        solid_px, background_px = img[z][particle & inside[z]], img[z][~particle & inside[z]]
        if solid_px.size == 0 or background_px.size == 0:
            continue
        s, b = float(np.median(solid_px)), float(np.median(background_px))
        if s > b:
            solid[z], background[z] = s, b
    return solid, background


def reach_map(normalized: np.ndarray, levels: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """float32 (Z, Y, X) ``(grey - background) / (solid - background)`` with each slice's levels
    (1 = as bright as the slice's typical solid, 0 = as dark as its background); NaN in slices
    without levels."""
    img = np.asarray(normalized, dtype=np.float32)
    solid, background = (np.asarray(v, dtype=np.float32) for v in levels)
    if solid.shape != (img.shape[0],) or background.shape != (img.shape[0],):
        raise ValueError(f"levels must hold one value per slice ({img.shape[0]})")
    if np.any(solid <= background):  # NaN compares False: slices without levels pass
        raise ValueError("the solid level must exceed the background level in every slice")
    return (img - background[:, None, None]) / (solid - background)[:, None, None]


def instance_mean(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over each label: float64 (n + 1,), NaN for absent labels and 0."""
    lab = np.asarray(labels)
    if np.shape(values) != lab.shape:
        raise ValueError(f"values shape {np.shape(values)} != labels shape {lab.shape}")
    flat = lab.ravel().astype(np.int64)
    counts = np.bincount(flat)
    sums = np.bincount(flat, weights=np.asarray(values, dtype=np.float64).ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts
    out[counts == 0] = np.nan
    out[0] = np.nan
    return out


def solid_reach(labels: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """How far each instance's bright voxels come from the background to the solid level.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances.
    reach : numpy.ndarray
        float (Z, Y, X) :func:`reach_map`.

    Returns
    -------
    numpy.ndarray
        float64 (n + 1,): per label the :data:`BRIGHT_QUANTILE` quantile of its voxels' reach
        (its voxels in slices without levels left out); NaN for absent labels, label 0 and
        labels lying only in slices without levels.
    """
    lab = np.asarray(labels)
    if np.shape(reach) != lab.shape:
        raise ValueError(f"reach shape {np.shape(reach)} != labels shape {lab.shape}")
    out = np.full(int(lab.max(initial=0)) + 1, np.nan)
    for index, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        values = reach[box][lab[box] == index]
        values = values[np.isfinite(values)]
        if values.size:
            out[index] = float(np.quantile(values, BRIGHT_QUANTILE))
    return out


def drop_unlike_particles(
    labels: np.ndarray,
    normalized: np.ndarray,
    foreground: np.ndarray,
    *,
    envelope: np.ndarray | None = None,
    min_envelope: float = 0.5,
    min_solid_reach: float = 0.5,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Labels without the instances that the envelope network or the grey levels reject.

    An instance is removed when its mean envelope probability is below ``min_envelope``
    (only with an ``envelope``) or its :func:`solid_reach` is below ``min_solid_reach`` (not
    when it has no voxel in a slice with levels). A bound of 0 turns its check off.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances.
    normalized : numpy.ndarray
        float (Z, Y, X) normalised grey levels the networks saw.
    foreground : numpy.ndarray
        float (Z, Y, X) particle probability (for :func:`phase_levels`).
    envelope : numpy.ndarray, optional
        float (Z, Y, X) envelope probability (:func:`models.envelope_unet.predict_envelope`).
    min_envelope, min_solid_reach : float, optional
        Bounds of the two checks (0.5: the midpoint of each scale).
    valid : numpy.ndarray, optional
        bool (Z, Y, X) voxels the levels are estimated on; default all.

    Returns
    -------
    numpy.ndarray
        int32 labels renumbered 1..n.
    """
    return accept_inplace(
        np.array(labels, dtype=np.int32),
        normalized,
        foreground,
        envelope=envelope,
        min_envelope=min_envelope,
        min_solid_reach=min_solid_reach,
        drop=True,
        trim=False,
        valid=valid,
    )


def trim_unlike_voxels(
    labels: np.ndarray,
    normalized: np.ndarray,
    foreground: np.ndarray,
    envelope: np.ndarray,
    *,
    min_envelope: float = 0.5,
    min_solid_reach: float = 0.5,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Labels without the voxels that are neither envelope nor solid; enclosed holes refilled.

    The voxel-level counterpart of :func:`drop_unlike_particles`: a labelled voxel is kept
    when its envelope probability is at least ``min_envelope`` or its :func:`reach_map` is at
    least ``min_solid_reach`` (every voxel of a slice without levels passes this). So a rim of
    faint carbon/binder that the particle U-Net added to a particle goes, while the particle's
    solid and whatever the envelope network counts as particle (its cracks, core and surface
    cracks) stay. Background enclosed by one instance in a slice is given back to it
    afterwards (a crack or core the envelope missed). Every step works slice by slice, so a
    slab gives the voxels the whole volume gives.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances.
    normalized, foreground, envelope : numpy.ndarray
        float (Z, Y, X) normalised grey levels, particle and envelope probability.
    min_envelope, min_solid_reach : float, optional
        The two bounds (0.5: the midpoint of each scale).
    valid : numpy.ndarray, optional
        bool (Z, Y, X) voxels the levels are estimated on; default all.

    Returns
    -------
    numpy.ndarray
        int32 labels (ids unchanged; an instance may lose all its voxels).
    """
    return accept_inplace(
        np.array(labels, dtype=np.int32),
        normalized,
        foreground,
        envelope=envelope,
        min_envelope=min_envelope,
        min_solid_reach=min_solid_reach,
        drop=False,
        trim=True,
        valid=valid,
    )


def trim_dark_outline(
    labels: np.ndarray,
    normalized: np.ndarray,
    foreground: np.ndarray,
    *,
    share: float = 0.5,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Labels without the outline pixels darker than half-way to the instance's own level.

    In each slice, a labelled pixel that touches background (4-connected) leaves its instance
    when its :func:`reach_map` is below ``share`` of the way from the background level to the
    lower of the slice's solid level and the instance's own :func:`solid_reach` (its brightest
    tenth): the half-maximum outline of a blurred edge, with a dim small particle judged
    against its own peak. One pixel layer only, so cracks, cores and surface cracks stay;
    background enclosed by one instance is given back to it afterwards.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances.
    normalized, foreground : numpy.ndarray
        float (Z, Y, X) normalised grey levels and particle probability (for
        :func:`phase_levels`).
    share : float, optional
        Share of the way to the instance's level an outline pixel must reach (0.5: the
        half-maximum).
    valid : numpy.ndarray, optional
        bool (Z, Y, X) voxels the levels are estimated on; default all.

    Returns
    -------
    numpy.ndarray
        int32 labels (ids unchanged; an instance may lose all its voxels).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    lab = np.asarray(labels)
    reach = _voxel_reach(lab, normalized, foreground, valid)
    level = np.minimum(np.nan_to_num(solid_reach(lab, reach), nan=0.0), 1.0)
    cross = ndimage.generate_binary_structure(2, 1)
    outline = (lab > 0) & np.stack([ndimage.binary_dilation(s == 0, cross) for s in lab])
    with np.errstate(invalid="ignore"):
        dark = outline & (reach < share * level[lab])
    return _without(lab, dark)


def _voxel_reach(
    lab: np.ndarray,
    normalized: np.ndarray,
    foreground: np.ndarray,
    valid: np.ndarray | None,
    **others: np.ndarray,
) -> np.ndarray:
    """:func:`reach_map` of every voxel, after checking the per-voxel inputs match ``lab``."""
    for name, array in (("normalized", normalized), *others.items()):
        if np.shape(array) != lab.shape:
            raise ValueError(f"{name} shape {np.shape(array)} != labels shape {lab.shape}")
    return reach_map(normalized, phase_levels(normalized, foreground, valid))


def _without(lab: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """int32 labels without the ``drop`` voxels, background enclosed by one instance in a
    slice given back to it (a crack or core)."""
    trimmed = np.where(drop, 0, lab).astype(np.int32)
    return np.stack([fill_enclosed_holes(s) for s in trimmed]).astype(np.int32)


def accept_inplace(
    labels: np.ndarray,
    normalized: np.ndarray,
    foreground: np.ndarray,
    *,
    envelope: np.ndarray | None,
    min_envelope: float,
    min_solid_reach: float,
    drop: bool,
    trim: bool,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`drop_unlike_particles` (``drop``) then :func:`trim_unlike_voxels` (``trim``, with
    an ``envelope``) of int32 (Z, Y, X) labels of the caller's own, written into them.

    The one implementation of both rules (the two public functions call it on a copy). It
    holds little beyond the labels: the slices' levels are estimated once, the reach is
    computed in each instance's box (for the drop) or slice by slice (for the trim), the
    envelope means are summed per instance in the order ``np.bincount`` sums them
    (:func:`instance_mean`), and the labels are rewritten slice by slice. Dropped instances
    leave the rest renumbered 1..n; trimmed labels are not renumbered.
    """
    lab = labels
    for name, array in (("normalized", normalized), ("foreground", foreground)):
        if np.shape(array) != lab.shape:
            raise ValueError(f"{name} shape {np.shape(array)} != labels shape {lab.shape}")
    if envelope is not None and np.shape(envelope) != lab.shape:
        raise ValueError(f"envelope shape {np.shape(envelope)} != labels shape {lab.shape}")
    if not 0.0 <= min_envelope <= 1.0:
        raise ValueError(f"min_envelope must be in [0, 1], got {min_envelope}")
    if min_solid_reach < 0:
        raise ValueError(f"min_solid_reach must be >= 0, got {min_solid_reach}")
    img = np.asarray(normalized)
    solid, background = phase_levels(img, foreground, valid)
    solid32, background32 = solid.astype(np.float32), background.astype(np.float32)
    if drop:
        _drop_inplace(
            lab,
            img,
            (solid32, background32),
            envelope=envelope,
            min_envelope=min_envelope,
            min_solid_reach=min_solid_reach,
        )
    if trim and envelope is not None:
        env = np.asarray(envelope)
        for z, plane in enumerate(lab):
            reach = reach_map(img[z : z + 1], (solid32[z : z + 1], background32[z : z + 1]))[0]
            keep = (env[z] >= min_envelope) | (reach >= min_solid_reach) | np.isnan(reach)
            trimmed = np.where(~keep, 0, plane).astype(np.int32)
            plane[...] = fill_enclosed_holes(trimmed)
    return lab


def _drop_inplace(
    lab: np.ndarray,
    img: np.ndarray,
    levels: tuple[np.ndarray, np.ndarray],
    *,
    envelope: np.ndarray | None,
    min_envelope: float,
    min_solid_reach: float,
) -> None:
    """:func:`drop_unlike_particles` with the slices' float32 levels, instance by instance."""
    solid, background = levels
    if np.any(solid <= background):  # NaN compares False: slices without levels pass
        raise ValueError("the solid level must exceed the background level in every slice")
    n = int(lab.max(initial=0))
    drop = np.zeros(n + 1, dtype=bool)
    present = np.zeros(n + 1, dtype=bool)
    by_envelope = envelope is not None and min_envelope > 0
    env = None if envelope is None else np.asarray(envelope)
    for index, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        inside = lab[box] == index
        if not inside.any():
            continue
        present[index] = True
        if by_envelope and env is not None:
            values = env[box][inside].astype(np.float64)
            # the sum np.bincount forms: one bin, the voxels in C order
            total = np.bincount(np.zeros(values.size, dtype=np.intp), weights=values)[0]
            if total / values.size < min_envelope:
                drop[index] = True
        if min_solid_reach > 0:
            zs = box[0]
            reach = reach_map(img[box], (solid[zs], background[zs]))[inside]
            reach = reach[np.isfinite(reach)]
            if reach.size and float(np.quantile(reach, BRIGHT_QUANTILE)) < min_solid_reach:
                drop[index] = True
    keep = ~drop & present
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    for plane in lab:
        plane[...] = lut[plane]
