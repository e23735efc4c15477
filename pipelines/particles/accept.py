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
  of an instance's voxels must come at least half way from the volume's background level to
  its solid level (both estimated on the volume itself, :func:`phase_levels`), so the rule
  carries across reconstructions, 8-bit renders and normalisations. A cracked or hollow
  particle still has solid voxels; a blurred small particle still has a bright core; a patch
  of binder never reaches the solid level.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Share of an instance's brightest voxels whose lower edge :func:`solid_reach` measures.
BRIGHT_QUANTILE = 0.9


def phase_levels(
    normalized: np.ndarray, foreground: np.ndarray, valid: np.ndarray | None = None
) -> tuple[float, float] | None:
    """The volume's solid and background grey levels, from the particle U-Net's own split.

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
    tuple of float or None
        (solid, background): the medians of the grey level where the particle probability
        is >= 0.5 and where it is below. None when either side is empty or the solid level
        is not above the background (no contrast to measure against).
    """
    img = np.asarray(normalized)
    prob = np.asarray(foreground)
    if img.shape != prob.shape:
        raise ValueError(f"foreground shape {prob.shape} != normalized shape {img.shape}")
    inside = np.ones(img.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if inside.shape != img.shape:
        raise ValueError(f"valid shape {inside.shape} != normalized shape {img.shape}")
    particle = prob >= 0.5
    solid_px, background_px = img[particle & inside], img[~particle & inside]
    if solid_px.size == 0 or background_px.size == 0:
        return None
    solid, background = float(np.median(solid_px)), float(np.median(background_px))
    if not solid > background:
        return None
    return solid, background


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


def solid_reach(
    labels: np.ndarray, normalized: np.ndarray, levels: tuple[float, float]
) -> np.ndarray:
    """How far each instance's bright voxels come from the background to the solid level.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances.
    normalized : numpy.ndarray
        float (Z, Y, X) normalised grey levels.
    levels : tuple of float
        (solid, background) of :func:`phase_levels`.

    Returns
    -------
    numpy.ndarray
        float64 (n + 1,): per label ``(q - background) / (solid - background)`` with ``q``
        the :data:`BRIGHT_QUANTILE` quantile of its grey levels (1 = as bright as the
        volume's typical solid, 0 = as dark as its background); NaN for absent labels and 0.
    """
    lab = np.asarray(labels)
    img = np.asarray(normalized)
    if img.shape != lab.shape:
        raise ValueError(f"normalized shape {img.shape} != labels shape {lab.shape}")
    solid, background = levels
    if not solid > background:
        raise ValueError(f"solid level {solid} must exceed the background level {background}")
    out = np.full(int(lab.max(initial=0)) + 1, np.nan)
    for index, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        grey = img[box][lab[box] == index]
        out[index] = (np.quantile(grey, BRIGHT_QUANTILE) - background) / (solid - background)
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
    (only with an ``envelope``) or its :func:`solid_reach` is below ``min_solid_reach`` (only
    when :func:`phase_levels` finds a solid level above the background). A bound of 0 turns
    its check off.

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
    lab = np.asarray(labels)
    if not 0.0 <= min_envelope <= 1.0:
        raise ValueError(f"min_envelope must be in [0, 1], got {min_envelope}")
    if min_solid_reach < 0:
        raise ValueError(f"min_solid_reach must be >= 0, got {min_solid_reach}")
    n = int(lab.max(initial=0))
    drop = np.zeros(n + 1, dtype=bool)
    if envelope is not None and min_envelope > 0:
        drop |= instance_mean(lab, envelope) < min_envelope
    if min_solid_reach > 0:
        levels = phase_levels(normalized, foreground, valid)
        if levels is not None:
            drop |= solid_reach(lab, normalized, levels) < min_solid_reach
    keep = ~drop & (np.bincount(lab.ravel().astype(np.int64), minlength=n + 1) > 0)
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[lab]
