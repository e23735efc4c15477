"""Degree of particle detachment from the carbon/binder domain (CBD).

As in the detachment seed paper, the degree of detachment of a particle is the share of its
surface that faces pore rather than carbon/binder: 0 = fully attached (intact), 1 = fully
detached. The surface is counted in voxel faces: every face between a particle voxel and a
voxel outside that particle is one surface element. Faces towards another particle (contacts)
and towards the outside of the volume count for neither side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from skimage.filters import threshold_otsu

from models.crack_unet import normalize_slices, reference_levels
from models.phase_net import (
    PhaseNet,
    load_phase_net,
    matched_calls,
    phase_features,
    predict_binder,
)
from pipelines.particles.measure import check_labels


class DetachmentParams(BaseModel):
    """Phase codes of the 3-phase segmentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pore_value: int = Field(default=0, ge=0, description="Phase code of pore.")
    binder_value: int = Field(default=1, ge=0, description="Phase code of carbon/binder.")
    estimate: Literal["learned", "grey"] = Field(
        default="learned",
        description=(
            "How the phases are estimated when no segmentation is given: the learned "
            "classifier (estimate_phase_learned) or the grey-level threshold (estimate_phase)."
        ),
    )


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
        Voxels within this distance of a particle take the grey level of the voxels beyond it
        (:func:`fill_from`: the mean of the neighbouring voxels beyond the shell, filled
        inwards): blur and phase-contrast fringes make the first voxels next to a bright
        particle look like binder. 0 = no correction.

    Returns
    -------
    numpy.ndarray
        uint8 (Z, Y, X): 0 = pore, 1 = carbon/binder (Otsu threshold of the smoothed grey
        levels outside the particles), 2 = particle.

    Notes
    -----
    Carbon/binder and pore differ little in X-ray attenuation. On three reconstructed synthetic
    cathodes (48 x 128 x 128, seeds 990101-990103, true particle labels) the detachment computed
    with this estimate differed from the one with the true phases by 0.21 to 0.27 (mean
    absolute error per particle; biases -0.16 to +0.10). :func:`estimate_phase_learned` (the
    default of :func:`~pipelines.particles.analyze.analyze_particles`) brings this to 0.12 to
    0.21; give a measured 3-phase segmentation when one exists.
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
        r = int(np.floor(shell_px))
        zz, yy, xx = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
        ball = zz**2 + yy**2 + xx**2 <= shell_px**2
        # the shell: outside voxels within shell_px of a particle (a dilation by a ball is
        # exactly a Euclidean distance test, and much cheaper than a distance transform)
        shell = ndimage.binary_dilation(~outside, ball) & outside
        far = outside & ~shell
        if far.any():
            values = fill_from(smooth, far, shell, steps=r + 2)
        else:
            far = outside
    # the threshold comes from the voxels beyond the shell, whose grey levels are used
    sample = smooth[far]
    sample = sample[:: max(1, sample.size // 1_000_000)]
    level = threshold_otsu(sample) if np.ptp(sample) > 0 else float(sample[0])
    phase[outside] = (values[outside] > level).astype(np.uint8)
    return phase


def estimate_phase_learned(
    volume: np.ndarray,
    labels: np.ndarray,
    *,
    model: PhaseNet | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """3-phase segmentation with a learned binder/pore call next to the particle surfaces.

    The voxels that decide the degree of detachment, those sharing a face with a particle, are
    classified by the phase network (:class:`models.phase_net.PhaseNet`: a small perceptron
    over multi-scale grey levels of the non-particle voxels, the particle share of the
    neighbourhood and per-volume levels, :func:`models.phase_net.phase_features`). The other
    non-particle voxels take the grey-level call: binder where the grey level smoothed over the
    voxels beyond the one-voxel shell (sigma 2) exceeds the Otsu level between pore and binder.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed volume, any real dtype (particles bright, carbon/binder dim,
        pore dark); voxels exactly 0 are outside the reconstruction circle. It is normalised
        with :func:`models.crack_unet.reference_levels` as for the particle network.
    labels : numpy.ndarray
        int (Z, Y, X) particle instances (0 = not a particle).
    model : PhaseNet, optional
        Network to use instead of the shipped weights (:func:`models.phase_net.load_phase_net`).
    threshold : float, optional
        Binder probability above which a surface neighbour is called carbon/binder, in (0, 1).
        Default: the cut that keeps the expected number of binder faces
        (:func:`models.phase_net.matched_calls`, the surface neighbours weighted by their
        faces towards particles); a fixed 0.5 cut calls uncertain voxels binder, the majority
        next to particles, and underestimates the detachment.

    Returns
    -------
    numpy.ndarray
        uint8 (Z, Y, X): 0 = pore, 1 = carbon/binder, 2 = particle.

    Notes
    -----
    On three reconstructed synthetic cathodes never used in training (48 x 128 x 128, seeds
    990101-990103, crack density 1.5) the detachment computed with this estimate differed from
    the one with the true phases by 0.12, 0.12 and 0.21 (mean absolute error per particle,
    mean 0.151; biases -0.03, 0.00, -0.20) with the true particle labels, against 0.21, 0.24
    and 0.27 (mean 0.239) for the grey-level :func:`estimate_phase`; with the particle labels
    of :func:`~pipelines.particles.instances.segment_instances` (each matched to the true
    particle it overlaps most) 0.07, 0.17 and 0.11 (mean 0.119) against 0.18, 0.15 and 0.30
    (mean 0.209). The surface neighbours were called right 82 % of the time (grey levels 70 %);
    the other voxels within 2 px of a particle take the grey-level call (72 % right within
    2 px, grey levels 72 %). Measured by ``python -m benchmarks.particles_benchmark``. On a
    64 x 512 x 512 slab (1 thread) it took 5 to 6 s against 1.3 to 1.7 s for
    :func:`estimate_phase`: about 40 to 50 s for a 512^3 volume instead of 10 to 13 s. The
    network was trained on synthetic volumes only, in which the binder prefers the particle
    surfaces; on real data read the detachment as an estimate and give a measured 3-phase
    segmentation when one exists.
    """
    lab = check_labels(labels)
    vol = np.asarray(volume)
    if vol.shape != lab.shape:
        raise ValueError(f"volume shape {vol.shape} != labels shape {lab.shape}")
    if not (np.issubdtype(vol.dtype, np.integer) or np.issubdtype(vol.dtype, np.floating)):
        raise ValueError(f"volume must have a real dtype, got {vol.dtype}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    solid = lab > 0
    phase = np.full(lab.shape, 2, dtype=np.uint8)
    if solid.all():
        return phase
    if not solid.any():
        # no surfaces to classify: the grey-level estimate is all there is
        return estimate_phase(vol, lab)
    observed = vol != 0
    low, high = reference_levels(vol)
    features = phase_features(normalize_slices(vol, low, high), solid, observed=observed)
    net = model if model is not None else load_phase_net()
    phase[~solid] = features.grey_binder[~solid].astype(np.uint8)
    probability = predict_binder(net, features.values)
    if threshold is None:
        binder = matched_calls(probability, features.faces)
    else:
        binder = probability > np.float32(threshold)
    phase.ravel()[features.index] = binder.astype(np.uint8)
    return phase


def fill_from(values: np.ndarray, known: np.ndarray, unknown: np.ndarray, steps: int) -> np.ndarray:
    """Fill ``unknown`` voxels with the mean of their known 3 x 3 x 3 neighbours, inwards.

    Each step fills the unknown voxels that have at least one known neighbour (the known set
    then grows by them); after ``steps`` steps unknown voxels still without a known neighbour
    keep their own value. Only the unknown voxels are visited (their 26 neighbours gathered),
    so the cost follows the size of the shell, not of the volume.

    Parameters
    ----------
    values : numpy.ndarray
        float (Z, Y, X) grey levels.
    known, unknown : numpy.ndarray
        bool (Z, Y, X) voxels whose value is trusted, and those to replace (disjoint).
    steps : int
        Maximum number of inward steps.

    Returns
    -------
    numpy.ndarray
        float32 copy of ``values`` with the filled voxels replaced.
    """
    shape = np.shape(values)
    # one voxel of padding (never known) so that neighbour offsets cannot wrap around
    val = np.pad(np.asarray(values, dtype=np.float32), 1)
    have = np.pad(np.asarray(known, dtype=bool) & ~np.asarray(unknown, dtype=bool), 1)
    todo = np.flatnonzero(np.pad(np.asarray(unknown, dtype=bool), 1))
    padded = val.shape
    offsets = np.array(
        [
            (dz * padded[1] + dy) * padded[2] + dx
            for dz in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if (dz, dy, dx) != (0, 0, 0)
        ]
    )
    flat_val, flat_have = val.ravel(), have.ravel()
    for _ in range(steps):
        if todo.size == 0:
            break
        total = np.zeros(todo.size, dtype=np.float32)
        count = np.zeros(todo.size, dtype=np.float32)
        for off in offsets:
            neighbour = todo + off
            weight = flat_have[neighbour]
            total += np.where(weight, flat_val[neighbour], np.float32(0.0))
            count += weight
        reach = count > 0
        filled = todo[reach]
        flat_val[filled] = total[reach] / count[reach]
        flat_have[filled] = True
        todo = todo[~reach]
    return val[1:-1, 1:-1, 1:-1].reshape(shape).copy()
