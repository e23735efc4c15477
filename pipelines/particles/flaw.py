"""Flaw classification of particles, as in the flaw-classification seed paper.

For each particle, :data:`models.flaw_cnn.N_SLICES` slices evenly spaced over the central 80 %
of its height are masked with the particle's label, cropped, resized to 128 x 128 and scored
by the slice classifier (:mod:`models.flaw_cnn`). The particle is flawed when at least
``min_flawed_slices`` (4) of its 10 slices score at least ``slice_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from scipy import ndimage

from models.crack_unet import normalize_slices, reference_levels
from models.flaw_cnn import (
    FlawCNN,
    load_flaw_cnn,
    predict_flaw_scores,
    resize_crops,
    slice_positions,
    square_crop,
)
from pipelines.particles.instances import check_volume
from pipelines.particles.measure import check_labels


class FlawParams(BaseModel):
    """Parameters of :func:`classify_flaws`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_slices: PositiveInt = 10
    height_span: float = Field(default=0.8, gt=0.0, le=1.0)
    slice_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_flawed_slices: PositiveInt = 4
    batch_size: PositiveInt = 64


@dataclass
class FlawResult:
    """Per-particle flaw calls, rows in increasing label order.

    Attributes
    ----------
    label : numpy.ndarray
        int32 (n,) particle labels.
    slice_z : numpy.ndarray
        int32 (n, n_slices) slices that were scored.
    slice_scores : numpy.ndarray
        float32 (n, n_slices) flaw probabilities.
    flawed_slices : numpy.ndarray
        int32 (n,) slices scoring at least the slice threshold.
    flawed : numpy.ndarray
        bool (n,) ``flawed_slices >= min_flawed_slices``.
    """

    label: np.ndarray
    slice_z: np.ndarray
    slice_scores: np.ndarray
    flawed_slices: np.ndarray
    flawed: np.ndarray


def classify_flaws(
    volume: np.ndarray,
    labels: np.ndarray,
    params: FlawParams | None = None,
    *,
    model: FlawCNN | None = None,
    levels: tuple[float, float] | None = None,
    label_ids: np.ndarray | None = None,
    origin_z: int = 0,
) -> FlawResult:
    """Score 10 slices of every particle and call it flawed or not.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed grey-level volume, any integer or float dtype; normalised with
        :func:`models.crack_unet.reference_levels` like the classifier's training data.
    labels : numpy.ndarray
        int (Z, Y, X) particle instances whose masks include their cracks.
    params : FlawParams, optional
        Slice sampling and decision rule.
    model : FlawCNN, optional
        Default the shipped weights.
    levels : tuple of float, optional
        Normalisation levels (low, high); default those of ``volume``.
    label_ids : numpy.ndarray, optional
        Only these labels (default every label present).
    origin_z : int, optional
        z of the first slice of ``volume`` in a larger volume it was cut from (slice
        positions and ``slice_z`` are then in the larger volume's z).

    Returns
    -------
    FlawResult
        Slices, scores and calls per label present.
    """
    p = params if params is not None else FlawParams()
    vol = check_volume(volume)
    lab = check_labels(labels)
    if vol.shape != lab.shape:
        raise ValueError(f"labels shape {lab.shape} != volume shape {vol.shape}")
    low, high = reference_levels(vol) if levels is None else levels
    ids, zs = [], []
    wanted = None if label_ids is None else set(np.asarray(label_ids).tolist())
    # (label, z, box) of every distinct slice to score; a short particle repeats slices
    todo: list[tuple[int, int, tuple[slice, slice]]] = []
    for k, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None or (wanted is not None and k not in wanted):
            continue
        positions = slice_positions(
            box[0].start + origin_z, box[0].stop - 1 + origin_z, p.n_slices, p.height_span
        )
        ids.append(k)
        zs.append(positions)
        todo.extend((k, int(z), (box[1], box[2])) for z in np.unique(positions))
    n = len(ids)
    if n == 0:
        empty = np.zeros((0, p.n_slices))
        return FlawResult(
            label=np.zeros(0, dtype=np.int32),
            slice_z=empty.astype(np.int32),
            slice_scores=empty.astype(np.float32),
            flawed_slices=np.zeros(0, dtype=np.int32),
            flawed=np.zeros(0, dtype=bool),
        )
    net = model if model is not None else load_flaw_cnn()
    # crops are prepared and scored a chunk at a time: a 512^3 volume has ~10^5 slices to
    # score, too many 128 x 128 images to hold at once
    distinct = np.empty(len(todo), dtype=np.float32)
    chunk = 16 * p.batch_size
    for c0 in range(0, len(todo), chunk):
        crops = []
        for k, z, (ys, xs) in todo[c0 : c0 + chunk]:
            image = normalize_slices(vol[z - origin_z, ys, xs], low, high)
            crops.append(square_crop(image, lab[z - origin_z, ys, xs] == k))
        distinct[c0 : c0 + len(crops)] = predict_flaw_scores(net, resize_crops(crops), p.batch_size)
    score_of = {(k, z): distinct[i] for i, (k, z, _) in enumerate(todo)}
    scores = np.array(
        [[score_of[(k, int(z))] for z in positions] for k, positions in zip(ids, zs, strict=True)],
        dtype=np.float32,
    )
    flawed_slices = (scores >= p.slice_threshold).sum(axis=1).astype(np.int32)
    return FlawResult(
        label=np.asarray(ids, dtype=np.int32),
        slice_z=np.stack(zs).astype(np.int32),
        slice_scores=scores.astype(np.float32),
        flawed_slices=flawed_slices,
        flawed=flawed_slices >= p.min_flawed_slices,
    )
