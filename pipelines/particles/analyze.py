"""Whole-volume particle analysis: instances, measurements, flaws and detachment in one table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict

from models.flaw_cnn import FlawCNN
from models.particle_unet import ParticleUNet
from models.phase_net import PhaseNet
from pipelines.particles.detachment import (
    DetachmentParams,
    degree_of_detachment,
    estimate_phase,
    estimate_phase_learned,
)
from pipelines.particles.flaw import FlawParams, classify_flaws
from pipelines.particles.instances import InstanceParams, check_volume, segment_instances
from pipelines.particles.measure import measure_particles


class ParticleParams(BaseModel):
    """Parameters of :func:`analyze_particles`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instances: InstanceParams = InstanceParams()
    flaw: FlawParams = FlawParams()
    detachment: DetachmentParams = DetachmentParams()


def table_dtype(n_slices: int = 10) -> np.dtype:
    """Structured dtype of the particle table (``slice_scores`` holds ``n_slices`` values)."""
    return np.dtype(
        [
            ("label", np.int32),
            ("volume_voxels", np.int64),
            ("equivalent_diameter_px", np.float64),
            ("centroid_z", np.float64),
            ("centroid_y", np.float64),
            ("centroid_x", np.float64),
            ("surface_area_px2", np.float64),
            ("sphericity", np.float64),
            ("crack_fraction", np.float64),
            ("flawed_slices", np.int32),
            ("flawed", np.bool_),
            ("detachment", np.float64),
            ("touches_border", np.bool_),
            ("slice_z", np.int32, (n_slices,)),
            ("slice_scores", np.float32, (n_slices,)),
        ]
    )


@dataclass
class ParticleResult:
    """Result of :func:`analyze_particles`.

    Attributes
    ----------
    labels : numpy.ndarray
        int32 (Z, Y, X), 0 = background, 1..n particles (row i of ``table`` is label i + 1).
    table : numpy.ndarray
        Structured array of :func:`table_dtype`, one row per particle. Lengths in voxels;
        ``centroid_z`` is the depth (z = 0 separator side); ``crack_fraction`` NaN without a
        crack mask; ``detachment`` NaN when the particle has no face to pore or binder;
        ``touches_border`` also when the particle reaches the unobserved region (voxels exactly
        0 outside the reconstruction circle, with ``params.instances.zero_is_outside``).
    phase : numpy.ndarray
        uint8/int (Z, Y, X) 3-phase segmentation used for the detachment (the given one, or
        the estimate chosen by ``params.detachment.estimate``:
        :func:`~pipelines.particles.detachment.estimate_phase_learned` by default, or
        :func:`~pipelines.particles.detachment.estimate_phase`).
    seconds : dict
        Wall time of each stage: ``instances``, ``measure``, ``flaw``, ``phase`` (0 when a
        phase segmentation was given), ``detachment``.
    """

    labels: np.ndarray
    table: np.ndarray
    phase: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


def analyze_particles(
    volume: np.ndarray,
    *,
    crack_mask: np.ndarray | None = None,
    phase: np.ndarray | None = None,
    params: ParticleParams | None = None,
    particle_model: ParticleUNet | None = None,
    flaw_model: FlawCNN | None = None,
    phase_model: PhaseNet | None = None,
    progress: Callable[[int], None] | None = None,
) -> ParticleResult:
    """Identify every particle once, even when cracked, and tabulate what each one is like.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed grey-level volume (e.g. ``pipelines.tomo.fbp.reconstruct`` of
        a cathode scan), any integer or float dtype, particles bright; z is the depth
        (z = 0 separator side).
    crack_mask : numpy.ndarray, optional
        (Z, Y, X) bool or 0/1 crack voxels (e.g. ``pipelines.cracks.segment.map_cracks``);
        gives ``crack_fraction``.
    phase : numpy.ndarray, optional
        (Z, Y, X) integer 3-phase segmentation with ``params.detachment`` codes; when None one
        is estimated (codes 0 pore / 1 binder): by default with the learned binder/pore
        classifier next to the particle surfaces
        (:func:`~pipelines.particles.detachment.estimate_phase_learned`), with
        ``params.detachment.estimate="grey"`` from the grey levels alone
        (:func:`~pipelines.particles.detachment.estimate_phase`).
    params : ParticleParams, optional
        Instance, flaw and detachment settings.
    particle_model, flaw_model, phase_model : optional
        Networks to use instead of the shipped weights (``phase_model`` only for the learned
        phase estimate).
    progress : callable, optional
        Called with the number of slices done by the instance network.

    Returns
    -------
    ParticleResult
        Labels, table and the phase segmentation used.
    """
    p = params if params is not None else ParticleParams()
    vol = check_volume(volume)
    cracks = None
    if crack_mask is not None:
        cracks = np.asarray(crack_mask)
        if cracks.shape != vol.shape:
            raise ValueError(f"crack_mask shape {cracks.shape} != volume shape {vol.shape}")
        cracks = cracks.astype(bool)
    detachment_params = p.detachment
    if phase is not None:
        ph = np.asarray(phase)
        if ph.shape != vol.shape:
            raise ValueError(f"phase shape {ph.shape} != volume shape {vol.shape}")
        if not np.issubdtype(ph.dtype, np.integer):
            raise ValueError(f"phase must have an integer dtype, got {ph.dtype}")

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now

    labels = segment_instances(vol, p.instances, model=particle_model, progress=progress).labels
    lap("instances")
    unobserved = (vol == 0) if p.instances.zero_is_outside else None
    measures = measure_particles(labels, crack_mask=cracks, unobserved=unobserved)
    lap("measure")
    flaws = classify_flaws(vol, labels, p.flaw, model=flaw_model)
    lap("flaw")
    if phase is None:
        if detachment_params.estimate == "learned":
            ph = estimate_phase_learned(vol, labels, model=phase_model)
        else:
            ph = estimate_phase(vol, labels)
        detachment_params = DetachmentParams(pore_value=0, binder_value=1)
    lap("phase")
    detachment = degree_of_detachment(labels, ph, detachment_params).detachment
    lap("detachment")

    table = np.zeros(len(measures), dtype=table_dtype(p.flaw.n_slices))
    for name in measures.dtype.names or ():
        if name in table.dtype.names:  # type: ignore[operator]
            table[name] = measures[name]
    table["flawed_slices"] = flaws.flawed_slices
    table["flawed"] = flaws.flawed
    table["slice_z"] = flaws.slice_z
    table["slice_scores"] = flaws.slice_scores
    table["detachment"] = detachment[measures["label"]]
    return ParticleResult(labels=labels, table=table, phase=ph, seconds=seconds)
