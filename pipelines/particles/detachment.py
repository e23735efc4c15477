"""Degree of particle detachment from the carbon/binder domain (CBD).

As in the detachment seed paper, the degree of detachment of a particle is the share of its
surface that faces pore rather than carbon/binder: 0 = fully attached (intact), 1 = fully
detached. The surface is counted in voxel faces: every face between a particle voxel and a
voxel outside that particle is one surface element. Faces towards another particle (contacts)
and towards the outside of the volume count for neither side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from skimage.filters import threshold_otsu

from pipelines.particles.measure import check_labels


class DetachmentParams(BaseModel):
    """Phase codes of the 3-phase segmentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pore_value: int = Field(default=0, ge=0, description="Phase code of pore.")
    binder_value: int = Field(default=1, ge=0, description="Phase code of carbon/binder.")


@dataclass
class DetachmentResult:
    """Surface contacts and degree of detachment, indexed by label (row k = label k).

    Attributes
    ----------
    pore_faces, binder_faces, particle_faces : numpy.ndarray
        int64 (n + 1,) faces of each label towards pore, carbon/binder and other particles.
    detachment : numpy.ndarray
        float64 (n + 1,) ``pore / (pore + binder)``; NaN for labels without such faces
        (and for row 0).
    """

    pore_faces: np.ndarray
    binder_faces: np.ndarray
    particle_faces: np.ndarray
    detachment: np.ndarray


def degree_of_detachment(
    labels: np.ndarray, phase: np.ndarray, params: DetachmentParams | None = None
) -> DetachmentResult:
    """Share of each particle's surface that faces pore rather than carbon/binder.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) particle instances, 0 = not a particle.
    phase : numpy.ndarray
        int (Z, Y, X) 3-phase segmentation with the codes of ``params`` (the particle code is
        not needed: the labels say where the particles are).
    params : DetachmentParams, optional
        Pore and carbon/binder codes (default 0 and 1; the NREL volume uses 0 and 2).

    Returns
    -------
    DetachmentResult
        Face counts and the degree of detachment per label.
    """
    p = params if params is not None else DetachmentParams()
    if p.pore_value == p.binder_value:
        raise ValueError("params.pore_value and params.binder_value must differ")
    lab = check_labels(labels)
    ph = np.asarray(phase)
    if ph.shape != lab.shape:
        raise ValueError(f"phase shape {ph.shape} != labels shape {lab.shape}")
    if not np.issubdtype(ph.dtype, np.integer):
        raise ValueError(f"phase must have an integer dtype, got {ph.dtype}")
    n = int(lab.max()) + 1 if lab.size else 1
    pore = np.zeros(n, dtype=np.int64)
    binder = np.zeros(n, dtype=np.int64)
    contact = np.zeros(n, dtype=np.int64)
    for axis in range(lab.ndim):
        lo = [slice(None)] * lab.ndim
        hi = [slice(None)] * lab.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        for a_sl, b_sl in ((tuple(lo), tuple(hi)), (tuple(hi), tuple(lo))):
            a, b = lab[a_sl], lab[b_sl]
            boundary = (a > 0) & (a != b)
            own = a[boundary]
            other = b[boundary]
            other_phase = ph[b_sl][boundary]
            free = other == 0
            pore += np.bincount(own[free & (other_phase == p.pore_value)], minlength=n)
            binder += np.bincount(own[free & (other_phase == p.binder_value)], minlength=n)
            contact += np.bincount(own[~free], minlength=n)
    total = pore + binder
    with np.errstate(invalid="ignore", divide="ignore"):
        detachment = np.where(total > 0, pore / np.maximum(total, 1), np.nan)
    detachment[0] = np.nan
    return DetachmentResult(
        pore_faces=pore, binder_faces=binder, particle_faces=contact, detachment=detachment
    )


def estimate_phase(
    volume: np.ndarray, labels: np.ndarray, *, sigma: float = 1.0, shell_px: float = 1.0
) -> np.ndarray:
    """Rough 3-phase segmentation from grey levels when none is given.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed volume (particles bright, carbon/binder dim, pore dark).
    labels : numpy.ndarray
        int (Z, Y, X) particle instances.
    sigma : float, optional
        Gaussian smoothing (voxels) before the threshold.
    shell_px : float, optional
        Voxels within this distance of a particle take the grey level of the nearest voxel
        beyond it: blur and phase-contrast fringes make the first voxels next to a bright
        particle look like binder. 0 = no correction.

    Returns
    -------
    numpy.ndarray
        uint8 (Z, Y, X): 0 = pore, 1 = carbon/binder (Otsu threshold of the smoothed grey
        levels outside the particles), 2 = particle.

    Notes
    -----
    Carbon/binder and pore differ little in X-ray attenuation. On reconstructed synthetic
    cathodes the detachment computed with this estimate differed from the one with the true
    phases by 0.06 to 0.18 (mean absolute error per particle, three volumes); give a measured
    3-phase segmentation when one exists.
    """
    lab = check_labels(labels)
    vol = np.asarray(volume, dtype=np.float32)
    if vol.shape != lab.shape:
        raise ValueError(f"volume shape {vol.shape} != labels shape {lab.shape}")
    if sigma < 0 or shell_px < 0:
        raise ValueError(f"sigma and shell_px must be >= 0, got {sigma}, {shell_px}")
    smooth = ndimage.gaussian_filter(vol, sigma) if sigma > 0 else vol
    outside = lab == 0
    phase = np.full(lab.shape, 2, dtype=np.uint8)
    if not outside.any():
        return phase
    values = smooth
    far = outside
    if shell_px > 0 and (~outside).any():
        far = ndimage.distance_transform_edt(outside) > shell_px
        if far.any():
            _, nearest = ndimage.distance_transform_edt(~far, return_indices=True)
            values = smooth[tuple(nearest)]
        else:
            far = outside
    # the threshold comes from the voxels beyond the shell, whose grey levels are used
    sample = smooth[far]
    sample = sample[:: max(1, sample.size // 1_000_000)]
    level = threshold_otsu(sample) if np.ptp(sample) > 0 else float(sample[0])
    phase[outside] = (values[outside] > level).astype(np.uint8)
    return phase
