"""Learned particle detection in TXM optical-density frames (U-Net, ``models.txm_particle_net``).

The network, trained on synthetic frames only, gives a particle probability per pixel (it runs
at about 256 px: a 1024 x 1024 frame is binned by 4). The probability is thresholded, holes are
filled, and the same rules as the classical baseline (:func:`pipelines.xanes.detect
.detect_particles`) finish the job: objects smaller than ``learned_min_area_fraction`` of the
frame are dropped, touching particles are split by a watershed of the distance transform, and
particles touching the frame border are dropped (with ``exclude_border``). Splitting comes
before the border rule here, so a particle that touches a detected strip along the border (the
SSRL frames have one) is kept. Labels are numbered by decreasing area, as by the classical detector.

The network sees the optical density itself: no background removal is needed, slow gradients
and edge bands are what it was trained to ignore.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from models.txm_particle_net import (
    TxmParticleNet,
    predict_probability,
    shipped_txm_particle_net,
)
from pipelines.xanes.detect import _split_touching, relabel_by_area
from pipelines.xanes.params import DetectParams

__all__ = ["detect_particles_learned", "particle_probability"]


def _model_for(params: DetectParams, model: TxmParticleNet | None) -> TxmParticleNet:
    return model if model is not None else shipped_txm_particle_net()


def particle_probability(
    od: np.ndarray,
    *,
    params: DetectParams = DetectParams(),
    model: TxmParticleNet | None = None,
) -> np.ndarray:
    """Particle probability of every pixel of an optical-density frame.

    Parameters
    ----------
    od : numpy.ndarray
        ``(H, W)`` optical density (particles absorb: positive), any float or integer dtype.
    params : DetectParams
        ``average_transforms``.
    model : TxmParticleNet, optional
        Network in eval mode; default the shipped one.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 in [0, 1].
    """
    od = np.asarray(od)
    if od.ndim != 2:
        raise ValueError(f"od must be 2-D, got shape {od.shape}")
    if min(od.shape) < 16:
        raise ValueError(f"od must be at least 16 x 16 px, got shape {od.shape}")
    return predict_probability(
        _model_for(params, model), od, average_transforms=params.average_transforms
    )


def detect_particles_learned(
    od: np.ndarray,
    *,
    params: DetectParams = DetectParams(),
    model: TxmParticleNet | None = None,
) -> np.ndarray:
    """Segment cathode particles in an optical-density frame with the U-Net.

    Parameters
    ----------
    od : numpy.ndarray
        ``(H, W)`` optical density (particles absorb: positive); the slow background need not
        be removed.
    params : DetectParams
        ``probability_threshold``, ``average_transforms`` and the shared
        ``learned_min_area_fraction``,
        ``exclude_border``, ``split_touching`` and ``split_min_distance_fraction``.
    model : TxmParticleNet, optional
        Network in eval mode; default the shipped one.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` int32 labels, 0 background, particles 1..P by decreasing area (the output
        contract of :func:`pipelines.xanes.detect.detect_particles`).
    """
    probability = particle_probability(od, params=params, model=model)
    mask = ndimage.binary_fill_holes(probability >= params.probability_threshold)
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(probability.shape, dtype=np.int32)
    min_area = max(params.learned_min_area_fraction * probability.size, params.min_area_px)
    labels = _drop(labels, np.bincount(labels.ravel(), minlength=n + 1) < min_area)
    if params.split_touching and labels.any():
        labels = _split_touching(labels, params, min_area)
    if params.exclude_border:
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        labels = _drop(labels, np.isin(np.arange(labels.max() + 1), border))
    return relabel_by_area(_drop(labels, np.bincount(labels.ravel()) < min_area))


def _drop(labels: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """``labels`` with the labels where ``drop`` (indexed by label) is True set to 0."""
    lut = np.where(drop, 0, np.arange(drop.size)).astype(np.int32)
    lut[0] = 0
    return lut[labels]
