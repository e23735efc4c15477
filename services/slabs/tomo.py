"""Reconstruction, crack map, quantification and particles of a tomogram, slab by slab.

The orchestration runs in the calling process and holds only small things (per-slice
numbers, correlation samples, border planes, the particle table); the tasks run in the
workers, each reading the slices of its slab (with the context its stage needs) from a
chunked store and writing its core slices to Zarr under the work directory. Slab sizes come
from the workers' memory cap (:func:`slab_slices`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.slabs.cluster import run_tasks
from services.slabs.stores import (
    StoredSlices,
    VolumeRef,
    create_zarr,
    open_volume,
    write_slices,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int], None] | None

#: Resident memory of a worker before it holds any data (Python, NumPy, SciPy, torch and the
#: networks): 370-390 MB measured (getrusage) on this machine.
WORKER_BASELINE_MB = 400.0
#: Working bytes per voxel of a slab (input, intermediates, outputs), by stage, with margin over
#: the peaks measured on a 48 x 384 x 384 cathode slab at 1 thread: crack map with
#: quantification 27.4; on 8 and 24 slices of 1024 x 1024 (2026-11-30): the particle networks'
#: maps 25 (plus their activations, below); one instance task from the stored maps (Zarr
#: slices read on use, VmHWM over the process before the task) on 49 slices of 1024 x 1024
#: (1 core slice, halo 24): 20.6 (a cathode whose largest foreground component spans the slab,
#: 51 particles) and 20.4 (3229 particles), 2026-11-30 (it was 52.6-62.3 before the lean
#: labelling): 26 lets a 1024 x 1024 slab with halo 24 run under a 2048 MB cap.
BYTES_PER_VOXEL = {"cracks": 40.0, "maps": 32.0, "particles": 26.0, "measure": 40.0}
#: Activations of the particle and envelope networks, bytes per pixel of each slice of a batch
#: (one network at a time): 220 measured at 1024 x 1024 (881 MB for a batch of 4 slices).
NETWORK_BYTES_PER_BATCH_PIXEL = 250.0


def slab_slices(
    memory_limit_mb: float,
    plane_voxels: int,
    stage: str,
    *,
    halo: int = 0,
    share: float = 0.85,
    batch: int = 0,
) -> int:
    """Core slices per slab so that a task of ``stage`` stays within ``share`` of the cap.

    ``batch`` is the number of slices a network of the stage sees at once (its activations
    come on top of the slab's voxels).

    Raises
    ------
    ValueError
        When not even one core slice (with its context) fits.
    """
    budget = (memory_limit_mb * share - WORKER_BASELINE_MB) * 1e6
    budget -= batch * NETWORK_BYTES_PER_BATCH_PIXEL * plane_voxels
    fit = int(budget // (BYTES_PER_VOXEL[stage] * plane_voxels)) - 2 * halo
    if fit < 1:
        raise ValueError(
            f"a {stage} slab of one {plane_voxels}-voxel slice with {halo} slices of context "
            f"does not fit in a worker memory limit of {memory_limit_mb:.0f} MB"
        )
    return fit


def _use_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ---- reconstruction -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectionFile:
    """Projections in an HDF5 file: ``data`` (N, rows, cols), optional ``flat`` / ``dark``."""

    path: str
    data: str = "/entry/data/data"
    flat: str | None = None
    dark: str | None = None


def recon_rows(n_angles: int, cols: int, memory_limit_mb: float, share: float = 0.85) -> int:
    """Detector rows per reconstruction slab within ``share`` of the worker cap."""
    per_row = n_angles * cols * 4 * 4 + cols * cols * 4 * 4
    budget = (memory_limit_mb * share - WORKER_BASELINE_MB) * 1e6
    rows = int(budget // per_row)
    if rows < 1:
        raise ValueError(
            f"one detector row ({n_angles} angles x {cols} columns) does not fit in a worker "
            f"memory limit of {memory_limit_mb:.0f} MB"
        )
    return rows


def _recon_task(
    source: ProjectionFile,
    angles: np.ndarray,
    params: dict[str, Any],
    r0: int,
    r1: int,
    out: VolumeRef,
    step: int,
    threads: int,
) -> np.ndarray:
    import h5py

    from pipelines.slabs import regular_sample
    from pipelines.tomo.fbp import ReconParams, reconstruct

    _use_threads(threads)
    with h5py.File(source.path, "r") as h5:
        projections = h5[source.data][:, r0:r1, :]
        flat = h5[source.flat][..., r0:r1, :] if source.flat else None
        dark = h5[source.dark][..., r0:r1, :] if source.dark else None
    volume = reconstruct(
        projections,
        angles,
        flat=flat,
        dark=dark,
        params=ReconParams(**params),
    )
    del projections
    write_slices(out, r0, volume)
    return regular_sample(volume, r0, step)


class _FrameReader:
    """Whole frames of an HDF5 projection dataset by index (for the centre estimate)."""

    def __init__(self, dataset: Any) -> None:
        self._ds = dataset
        self.shape = dataset.shape

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.stack([self._ds[int(i)] for i in np.atleast_1d(index)])


def resolve_file_center(source: ProjectionFile, angles: np.ndarray, params: Any) -> float:
    """:func:`pipelines.tomo.fbp.resolve_center` reading only the frames it needs."""
    import h5py

    from pipelines.tomo.fbp import resolve_center

    with h5py.File(source.path, "r") as h5:
        flat = h5[source.flat][()] if source.flat else None
        dark = h5[source.dark][()] if source.dark else None
        reader = _FrameReader(h5[source.data])
        return round(resolve_center(reader, angles, params, flat, dark), 3)  # type: ignore[arg-type]


@dataclass
class ReconResult:
    volume: VolumeRef
    shape: tuple[int, int, int]
    center: float
    sample: np.ndarray
    """The regular subsample of the volume (:func:`pipelines.slabs.regular_sample`)."""


def reconstruct_slabs(
    client: Any,
    source: ProjectionFile,
    angles: np.ndarray,
    params: Any,
    work_dir: Path,
    *,
    memory_limit_mb: float,
    rows: int | None = None,
    threads: int = 1,
    progress: Progress = None,
) -> ReconResult:
    """Filtered back projection of an HDF5 projection file into a Zarr volume, rows by rows.

    ``params`` is a :class:`pipelines.tomo.fbp.ReconParams`; its centre is resolved once for
    the whole scan. Each task reads all angles of its detector rows.
    """
    import h5py

    from pipelines.slabs import sample_step

    with h5py.File(source.path, "r") as h5:
        n_angles, n_rows, cols = h5[source.data].shape
    center = resolve_file_center(source, angles, params)
    p = params.model_copy(update={"center": center})
    per_slab = rows or recon_rows(n_angles, cols, memory_limit_mb)
    shape = (n_rows, cols, cols)
    # float32 grey levels hardly compress: stored raw, written at disk speed
    out = create_zarr(work_dir / "reconstruction.zarr", shape, np.float32, per_slab, compress=False)
    step = sample_step(shape)
    bounds = [(r0, min(r0 + per_slab, n_rows)) for r0 in range(0, n_rows, per_slab)]
    logger.info(
        "reconstructing %s: %d slabs of %d rows on the cluster, axis %.3f",
        source.path,
        len(bounds),
        per_slab,
        center,
    )
    samples = run_tasks(
        client,
        _recon_task,
        [
            (source, angles, p.model_dump(mode="json"), r0, r1, out, step, threads)
            for r0, r1 in bounds
        ],
        progress=progress,
        weights=[r1 - r0 for r0, r1 in bounds],
    )
    return ReconResult(out, shape, center, np.concatenate(samples))


# ---- levels -------------------------------------------------------------------------------


def _sample_task(volume: VolumeRef, z0: int, z1: int, step: int) -> np.ndarray:
    from pipelines.slabs import regular_sample

    with open_volume(volume) as array:
        return regular_sample(np.asarray(array[z0:z1]), z0, step)


def volume_sample(client: Any, volume: VolumeRef, shape: tuple[int, ...], slab: int) -> np.ndarray:
    """The regular subsample of a stored volume, read slab by slab on the cluster."""
    from pipelines.slabs import sample_step

    step = sample_step(shape)
    bounds = [(z0, min(z0 + slab, shape[0])) for z0 in range(0, shape[0], slab)]
    parts = run_tasks(client, _sample_task, [(volume, a, b, step) for a, b in bounds])
    return np.concatenate(parts)


# ---- crack map and quantification ---------------------------------------------------------


@dataclass
class CrackSlabResult:
    """Crack map of a stored volume: volumes in Zarr, per-slice and volume numbers here."""

    crack_mask: VolumeRef
    particle_mask: VolumeRef
    damage_density: VolumeRef
    particle_density: VolumeRef
    crack_area: np.ndarray
    particle_area: np.ndarray
    depth_profile: np.ndarray
    damage_histogram: np.ndarray
    histogram_edges: np.ndarray
    volume_fit: Any
    layer_slope: np.ndarray
    layer_intercept: np.ndarray
    layer_pearson_r: np.ndarray
    window: int
    solid_threshold: float
    levels: tuple[float, float]


@functools.lru_cache(maxsize=2)
def _crack_model(weights: str | None) -> Any:
    from models.crack_unet import load_crack_unet
    from pipelines.cracks.segment import unet_tile_model

    return unet_tile_model(load_crack_unet(weights))


def _with_neighbours(volume: VolumeRef, z0: int, z1: int) -> tuple[np.ndarray, slice]:
    """Slices ``z0:z1`` with one neighbour on each side where the volume has one (the 2.5-D
    networks' context), and where the core slices lie in what was read."""
    with open_volume(volume) as array:
        lo, hi = max(0, z0 - 1), min(array.shape[0], z1 + 1)
        slab = np.asarray(array[lo:hi])
    return slab, slice(z0 - lo, z1 - lo)


def _crack_task(
    volume: VolumeRef,
    z0: int,
    z1: int,
    levels: tuple[float, float, float],
    params: dict[str, Any],
    weights: str | None,
    outs: dict[str, VolumeRef],
    threads: int,
) -> Any:
    from pipelines.cracks.quantify import slab_damage
    from pipelines.cracks.segment import CrackParams
    from pipelines.slabs import crack_slab

    _use_threads(threads)
    p = CrackParams(**params)
    slab, core = _with_neighbours(volume, z0, z1)
    cracks, particles = crack_slab(slab, core, levels, p, model=_crack_model(weights))
    del slab
    write_slices(outs["mask"], z0, cracks)
    write_slices(outs["particle_mask"], z0, particles)
    damage = slab_damage(cracks, particles, p.quantify, workers=threads)
    write_slices(outs["damage_density"], z0, damage.damage_density)
    write_slices(outs["particle_density"], z0, damage.particle_density)
    damage.damage_density = damage.particle_density = np.zeros(0, np.float32)
    return damage


def _histogram_task(
    damage: VolumeRef, particles: VolumeRef, z0: int, z1: int, edges: np.ndarray
) -> np.ndarray:
    from pipelines.cracks.quantify import damage_histograms

    with open_volume(damage) as d, open_volume(particles) as m:
        return damage_histograms(np.asarray(d[z0:z1]), np.asarray(m[z0:z1]), edges)


def map_cracks_slabs(
    client: Any,
    volume: VolumeRef,
    shape: tuple[int, int, int],
    params: Any,
    work_dir: Path,
    *,
    memory_limit_mb: float,
    slab: int | None = None,
    sample: np.ndarray | None = None,
    threads: int = 1,
    progress: Progress = None,
    weights: str | None = None,
) -> CrackSlabResult:
    """:func:`pipelines.cracks.segment.map_cracks` of a stored volume, slab by slab.

    ``params`` is a :class:`pipelines.cracks.segment.CrackParams`; ``sample`` the volume's
    regular subsample when already known (from :func:`reconstruct_slabs`); ``weights`` the
    crack U-Net checkpoint each worker loads (None: the shipped weights).
    """
    from models.crack_unet import levels_from_sample
    from pipelines.cracks.particle_mask import solid_threshold_from_sample
    from pipelines.cracks.quantify import depth_profile, fit_line, histogram_edges

    per_slab = slab or slab_slices(memory_limit_mb, shape[1] * shape[2], "cracks", halo=1)
    if sample is None:
        sample = volume_sample(client, volume, shape, per_slab)
    low, high = levels_from_sample(sample)
    threshold = (
        params.particle.threshold
        if params.particle.threshold is not None
        else solid_threshold_from_sample(sample)
    )
    outs = {
        "mask": create_zarr(work_dir / "crack_mask.zarr", shape, np.uint8, per_slab),
        "particle_mask": create_zarr(work_dir / "particle_mask.zarr", shape, np.uint8, per_slab),
        "damage_density": create_zarr(
            work_dir / "damage_density.zarr", shape, np.float32, per_slab
        ),
        "particle_density": create_zarr(
            work_dir / "particle_density.zarr", shape, np.float32, per_slab
        ),
    }
    bounds = [(z0, min(z0 + per_slab, shape[0])) for z0 in range(0, shape[0], per_slab)]
    logger.info("crack map of %s: %d slabs of %d slices", volume.path, len(bounds), per_slab)
    runs = run_tasks(
        client,
        _crack_task,
        [
            (
                volume,
                a,
                b,
                (low, high, threshold),
                params.model_dump(mode="json"),
                weights,
                outs,
                threads,
            )
            for a, b in bounds
        ],
        progress=progress,
        weights=[b - a for a, b in bounds],
    )
    edges = histogram_edges(params.quantify, max(r.damage_max for r in runs))
    hists = run_tasks(
        client,
        _histogram_task,
        [(outs["damage_density"], outs["particle_mask"], a, b, edges) for a, b in bounds],
    )
    crack_area = np.concatenate([r.crack_area for r in runs])
    particle_area = np.concatenate([r.particle_area for r in runs])
    return CrackSlabResult(
        crack_mask=outs["mask"],
        particle_mask=outs["particle_mask"],
        damage_density=outs["damage_density"],
        particle_density=outs["particle_density"],
        crack_area=crack_area,
        particle_area=particle_area,
        depth_profile=depth_profile(crack_area, particle_area),
        damage_histogram=np.concatenate(hists),
        histogram_edges=edges,
        volume_fit=fit_line(
            np.concatenate([r.particle_samples for r in runs]),
            np.concatenate([r.damage_samples for r in runs]),
        ),
        layer_slope=np.concatenate([r.layer_slope for r in runs]),
        layer_intercept=np.concatenate([r.layer_intercept for r in runs]),
        layer_pearson_r=np.concatenate([r.layer_pearson_r for r in runs]),
        window=params.quantify.window,
        solid_threshold=float(threshold),
        levels=(low, high),
    )


# ---- particles ----------------------------------------------------------------------------


@dataclass
class ParticleSlabResult:
    """Particles of a stored volume: merged labels in Zarr, the table and timings here."""

    labels: VolumeRef
    table: np.ndarray
    seconds: dict[str, float]
    n_slabs: int
    #: the particle networks' maps (foreground, distance, envelope) the instances came from
    maps: dict[str, VolumeRef]


@functools.lru_cache(maxsize=2)
def _particle_model(weights: str | None) -> Any:
    from models.particle_unet import load_particle_unet

    return load_particle_unet(weights)


@functools.lru_cache(maxsize=2)
def _flaw_model(weights: str | None) -> Any:
    from models.flaw_cnn import load_flaw_cnn

    return load_flaw_cnn(weights)


@functools.lru_cache(maxsize=1)
def _envelope_model() -> Any:
    from models.envelope_unet import load_envelope_unet

    return load_envelope_unet()


#: The particle networks' maps stored between the maps and the instance stage.
MAP_NAMES = ("foreground", "distance", "envelope")


def _instance_maps_task(
    volume: VolumeRef,
    z0: int,
    z1: int,
    levels: tuple[float, float],
    params: dict[str, Any],
    weights: str | None,
    outs: dict[str, VolumeRef],
    threads: int,
) -> None:
    from pipelines.particles.instances import InstanceParams
    from pipelines.slabs import instance_maps_slab

    _use_threads(threads)
    p = InstanceParams(**params)
    slab, core = _with_neighbours(volume, z0, z1)
    maps = instance_maps_slab(
        slab,
        core,
        levels,
        p,
        model=_particle_model(weights),
        envelope_model=_envelope_model() if p.envelope_merge else None,
    )
    del slab
    for name in MAP_NAMES:
        data = getattr(maps, name)
        if data is not None:
            write_slices(outs[name], z0, data)


def _instance_task(
    volume: VolumeRef,
    maps: dict[str, VolumeRef],
    z0: int,
    z1: int,
    halo: int,
    levels: tuple[float, float],
    params: dict[str, Any],
    out: VolumeRef,
    threads: int,
) -> dict[str, Any]:
    from scipy import ndimage

    from pipelines.particles.instances import InstanceMaps, InstanceParams
    from pipelines.slabs import instance_slab

    _use_threads(threads)
    p = InstanceParams(**params)
    with open_volume(volume) as array:
        depth = array.shape[0]
    lo, hi = max(0, z0 - halo), min(depth, z1 + halo)
    # read by the steps that need them (the slab's peak memory: BYTES_PER_VOXEL)
    stored: dict[str, Any] = {name: StoredSlices(ref, lo, hi) for name, ref in maps.items()}
    labels = instance_slab(StoredSlices(volume, lo, hi), levels, InstanceMaps(**stored), p)
    core = labels[z0 - lo : z1 - lo]
    write_slices(out, z0, core)
    # the two planes around each border: (z0 - 1, z0) below, (z1 - 1, z1) above
    below = labels[z0 - 1 - lo : z0 + 1 - lo] if z0 > 0 else None
    above = labels[z1 - 1 - lo : z1 + 1 - lo] if z1 < depth else None
    boxes = ndimage.find_objects(core)
    extents = {
        k: (s[0].start + z0, s[0].stop + z0) for k, s in enumerate(boxes, start=1) if s is not None
    }
    return {
        "count": int(labels.max(initial=0)),
        "present": np.array(sorted(extents), dtype=np.int64),
        "extents": extents,
        "below": below,
        "above": above,
    }


def _relabel_task(labels: VolumeRef, z0: int, z1: int, table: np.ndarray) -> None:
    with open_volume(labels) as array:
        core = np.asarray(array[z0:z1])
    write_slices(labels, z0, table[core])


def _measure_task(
    volume: VolumeRef,
    labels: VolumeRef,
    cracks: VolumeRef | None,
    z0: int,
    z1: int,
    ids: np.ndarray,
    levels: tuple[float, float],
    flaw_params: dict[str, Any],
    flaw_weights: str | None,
    zero_is_outside: bool,
    threads: int,
) -> tuple[np.ndarray, Any]:
    from pipelines.particles.flaw import FlawParams, classify_flaws
    from pipelines.particles.measure import measure_particles

    _use_threads(threads)
    with open_volume(volume) as array:
        depth = array.shape[0]
        vol = np.asarray(array[z0:z1])
    with open_volume(labels) as array:
        lab = np.asarray(array[z0:z1])
    crack = None
    if cracks is not None:
        with open_volume(cracks) as array:
            crack = np.asarray(array[z0:z1]).astype(bool)
    measures = measure_particles(
        lab,
        crack_mask=crack,
        unobserved=(vol == 0) if zero_is_outside else None,
        label_ids=ids,
        origin_z=z0,
        depth=depth,
    )
    p = FlawParams(**flaw_params)
    flaws = classify_flaws(
        vol, lab, p, model=_flaw_model(flaw_weights), levels=levels, label_ids=ids, origin_z=z0
    )
    return measures, flaws


def _measure_groups(
    extents: dict[int, tuple[int, int]], depth: int, max_slices: int
) -> list[tuple[int, int, np.ndarray]]:
    """Particles grouped by z so that each group's slices (one margin slice each side) are few."""
    order = sorted(extents, key=lambda k: extents[k][0])
    groups: list[tuple[int, int, np.ndarray]] = []
    current: list[int] = []
    lo = hi = 0
    for k in order:
        a, b = max(0, extents[k][0] - 1), min(depth, extents[k][1] + 1)
        if current and max(hi, b) - lo > max_slices:
            groups.append((lo, hi, np.array(current)))
            current = []
        if not current:
            lo, hi = a, b
        current.append(k)
        hi = max(hi, b)
    if current:
        groups.append((lo, hi, np.array(current)))
    return groups


def analyze_particles_slabs(
    client: Any,
    volume: VolumeRef,
    shape: tuple[int, int, int],
    params: Any,
    work_dir: Path,
    *,
    memory_limit_mb: float,
    crack_mask: VolumeRef | None = None,
    halo: int = 24,
    slab: int | None = None,
    levels: tuple[float, float] | None = None,
    threads: int = 1,
    progress: Progress = None,
    particle_weights: str | None = None,
    flaw_weights: str | None = None,
) -> ParticleSlabResult:
    """Particle instances, measurements and flaws of a stored volume, slab by slab.

    Instances: each slab is segmented with ``halo`` slices of context on each side
    (:func:`pipelines.slabs.instance_slab`); the labels of neighbouring slabs are matched on
    the planes around their border and merged (:class:`pipelines.slabs.LabelMerger`). The
    measurements and flaw calls then read each particle's slices whole. The degree of
    detachment is not computed on this path (its learned phase estimate chooses one cut for
    the whole volume): the table holds NaN there.

    ``params`` is a :class:`pipelines.particles.analyze.ParticleParams`; ``particle_weights``
    and ``flaw_weights`` the checkpoints each worker loads (None: the shipped weights).
    """
    import time

    from models.crack_unet import levels_from_sample
    from pipelines.particles.analyze import table_dtype
    from pipelines.slabs import LabelMerger, border_matches

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    plane = shape[1] * shape[2]
    per_slab = slab or slab_slices(memory_limit_mb, plane, "particles", halo=halo)
    if levels is None:
        levels = levels_from_sample(volume_sample(client, volume, shape, per_slab))
    instance_params = params.instances.model_dump(mode="json")
    maps = _predict_instance_maps(
        client,
        volume,
        shape,
        params.instances,
        work_dir,
        memory_limit_mb=memory_limit_mb,
        slab=slab,
        levels=levels,
        threads=threads,
        weights=particle_weights,
    )
    seconds["maps"] = time.perf_counter() - clock
    out = create_zarr(work_dir / "particle_labels.zarr", shape, np.int32, per_slab)
    bounds = [(z0, min(z0 + per_slab, shape[0])) for z0 in range(0, shape[0], per_slab)]
    logger.info(
        "particles of %s: %d slabs of %d slices, %d slices of context",
        volume.path,
        len(bounds),
        per_slab,
        halo,
    )
    parts = run_tasks(
        client,
        _instance_task,
        [(volume, maps, a, b, halo, levels, instance_params, out, threads) for a, b in bounds],
        progress=progress,
        weights=[b - a for a, b in bounds],
    )
    seconds["instances"] = time.perf_counter() - clock - seconds["maps"]
    merger = LabelMerger([part["count"] for part in parts])
    for i in range(len(parts) - 1):
        for a, b in border_matches(parts[i]["above"], parts[i + 1]["below"]):
            merger.union(i, a, i + 1, b)
    tables = merger.lookup_tables([part["present"] for part in parts])
    relabel = [(out, a, b, t) for (a, b), t in zip(bounds, tables, strict=True)]
    run_tasks(client, _relabel_task, relabel)
    extents: dict[int, tuple[int, int]] = {}
    for part, table in zip(parts, tables, strict=True):
        for k, (a, b) in part["extents"].items():
            g = int(table[k])
            old = extents.get(g)
            extents[g] = (a, b) if old is None else (min(old[0], a), max(old[1], b))
    seconds["merge"] = time.perf_counter() - clock - sum(seconds.values())
    max_slices = max(
        4, slab_slices(memory_limit_mb, plane, "measure") if slab is None else 2 * slab
    )
    groups = _measure_groups(extents, shape[0], max_slices)
    results = run_tasks(
        client,
        _measure_task,
        [
            (
                volume,
                out,
                crack_mask,
                a,
                b,
                ids,
                levels,
                params.flaw.model_dump(mode="json"),
                flaw_weights,
                params.instances.zero_is_outside,
                threads,
            )
            for a, b, ids in groups
        ],
    )
    seconds["measure_flaw"] = time.perf_counter() - clock - sum(seconds.values())
    table = _particle_table(results, table_dtype(params.flaw.n_slices))
    return ParticleSlabResult(out, table, seconds, len(bounds), maps)


def _predict_instance_maps(
    client: Any,
    volume: VolumeRef,
    shape: tuple[int, int, int],
    params: Any,
    work_dir: Path,
    *,
    memory_limit_mb: float,
    slab: int | None,
    levels: tuple[float, float],
    threads: int,
    weights: str | None,
) -> dict[str, VolumeRef]:
    """The particle networks' maps of every slice, once, in Zarr (halo 1: the nets are 2.5-D).

    Slabs are a multiple of the network batch so that the batches are those of the in-memory
    path (which batches from slice 0): the same maps to the last bit.
    """
    per_slab = slab or slab_slices(
        memory_limit_mb, shape[1] * shape[2], "maps", halo=1, batch=params.batch_size
    )
    per_slab = max(params.batch_size, per_slab - per_slab % params.batch_size)
    names = MAP_NAMES if params.envelope_merge else MAP_NAMES[:2]
    maps = {
        name: create_zarr(work_dir / f"particle_{name}.zarr", shape, np.float32, per_slab)
        for name in names
    }
    bounds = [(z0, min(z0 + per_slab, shape[0])) for z0 in range(0, shape[0], per_slab)]
    logger.info("particle maps of %s: %d slabs of %d slices", volume.path, len(bounds), per_slab)
    run_tasks(
        client,
        _instance_maps_task,
        [
            (volume, a, b, levels, params.model_dump(mode="json"), weights, maps, threads)
            for a, b in bounds
        ],
    )
    return maps


def _particle_table(results: list[tuple[np.ndarray, Any]], dtype: np.dtype) -> np.ndarray:
    from pipelines.particles.measure import MEASURE_DTYPE

    parts = [m for m, _ in results]
    measures: Any = np.concatenate(parts) if parts else np.zeros(0, dtype=MEASURE_DTYPE)
    measures = measures[np.argsort(measures["label"], kind="stable")]
    table = np.zeros(len(measures), dtype=dtype)
    for name in measures.dtype.names or ():
        if name in (dtype.names or ()):
            table[name] = measures[name]
    if not len(measures):
        return table
    flaw_label = np.concatenate([f.label for _, f in results])
    row = {int(k): i for i, k in enumerate(flaw_label)}
    idx = np.array([row[int(k)] for k in table["label"]])
    table["flawed_slices"] = np.concatenate([f.flawed_slices for _, f in results])[idx]
    table["flawed"] = np.concatenate([f.flawed for _, f in results])[idx]
    table["slice_z"] = np.concatenate([f.slice_z for _, f in results])[idx]
    table["slice_scores"] = np.concatenate([f.slice_scores for _, f in results])[idx]
    table["detachment"] = math.nan
    return table
