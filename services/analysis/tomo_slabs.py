"""The after-scan stages of a tomogram too large for memory, slab by slab on Dask.

:class:`services.analysis.tomo_live.CracksPipeline` hands its projections here when the float32
volume exceeds ``dask.threshold_mb``: they are written frame by frame to an HDF5 file under the
work directory, reconstructed, crack-mapped and analysed for particles slab by slab
(:mod:`services.slabs.tomo`), and the results go to Tiled slab by slab (``rows``), under the
same keys as the in-memory path. The work directory of the run is removed afterwards.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from services.analysis.results import ResultWriter
from services.core.settings import DaskSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlabConfig:
    """Where and how the live service runs big tomograms."""

    settings: DaskSettings
    work_dir: Path

    def wanted(self, rows: int, cols: int) -> bool:
        """Whether a (rows, cols, cols) float32 volume goes slab by slab."""
        return rows * cols * cols * 4 / 2**20 > self.settings.threshold_mb


def _write_projections(path: Path, frames: dict[str, list[np.ndarray]], angles: list[float]) -> Any:
    import h5py

    from services.slabs.tomo import ProjectionFile

    primary = frames["primary"]
    with h5py.File(path, "w") as h5:
        data = h5.create_dataset(
            "/entry/data/data", (len(primary), *primary[0].shape), dtype=primary[0].dtype
        )
        for i, frame in enumerate(primary):
            data[i] = frame
        h5["/entry/data/rotation_angle"] = np.asarray(angles, dtype=np.float64)
        for name in ("flat", "dark"):
            if frames[name]:
                h5[f"/entry/data/{name}"] = np.stack(frames[name])
    return ProjectionFile(
        str(path),
        flat="/entry/data/flat" if frames["flat"] else None,
        dark="/entry/data/dark" if frames["dark"] else None,
    )


def _rows_to(out: ResultWriter, key: str, ref: Any, step: int) -> None:
    from services.slabs.stores import copy_slices

    def write(_: int, block: np.ndarray) -> None:
        out.rows(key, block, dims=["z", "y", "x"])

    copy_slices(ref, write, step=step)


def run_slab_stages(
    config: SlabConfig,
    *,
    uid: str,
    frames: dict[str, list[np.ndarray]],
    angles: list[float],
    recon_params: Any,
    crack_params: Any,
    particle_params: Any,
    out: ResultWriter,
    crack_weights: str | None = None,
    particle_weights: str | None = None,
    cracks_done: Callable[[Any, dict[str, Any]], None],
    particles_done: Callable[[Any, Any, ResultWriter, float], None],
) -> None:
    """Reconstruction, crack map, quantification and particles of one run, slab by slab.

    ``cracks_done(q, numbers)`` writes the crack stage's figures and metadata from ``q`` (the
    quantification, its density maps as read-only Zarr arrays) and returns after announcing
    the particle stage; ``particles_done(table, stats_input, writer, seconds)`` writes the
    particle stage's statistics, figures and metadata. ``crack_weights`` and
    ``particle_weights`` are checked checkpoint files the workers load (None: shipped).
    """
    from services.slabs.cluster import open_client
    from services.slabs.stores import open_volume
    from services.slabs.tomo import analyze_particles_slabs, map_cracks_slabs, reconstruct_slabs

    s = config.settings
    work = config.work_dir / uid
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.monotonic()
        source = _write_projections(work / "projections.h5", frames, angles)
        with open_client(s) as client:
            recon = reconstruct_slabs(
                client,
                source,
                np.asarray(angles),
                recon_params,
                work,
                memory_limit_mb=s.memory_limit_mb,
                rows=s.slab_slices,
                threads=s.threads_per_worker,
            )
            t_recon = time.monotonic() - t0
            step = max(1, int(64e6 // (4 * recon.shape[1] * recon.shape[2])))
            _rows_to(out, "reconstruction", recon.volume, step)
            q = map_cracks_slabs(
                client,
                recon.volume,
                recon.shape,
                crack_params,
                work,
                memory_limit_mb=s.memory_limit_mb,
                slab=s.slab_slices,
                sample=recon.sample,
                threads=s.threads_per_worker,
                weights=crack_weights,
            )
            _rows_to(out, "mask", q.crack_mask, step)
            _rows_to(out, "particle_mask", q.particle_mask, step)
            _rows_to(out, "damage_density", q.damage_density, step)
            _rows_to(out, "particle_density", q.particle_density, step)
            t_cracks = time.monotonic() - t0 - t_recon
            with open_volume(q.damage_density) as damage, open_volume(q.particle_density) as pd:
                quant = SimpleNamespace(
                    damage_density=damage,
                    particle_density=pd,
                    crack_area=q.crack_area,
                    particle_area=q.particle_area,
                    depth_profile=q.depth_profile,
                    damage_histogram=q.damage_histogram,
                    histogram_edges=q.histogram_edges,
                    volume_fit=q.volume_fit,
                    layer_slope=q.layer_slope,
                    layer_intercept=q.layer_intercept,
                    layer_pearson_r=q.layer_pearson_r,
                    window=q.window,
                )
                cracks_done(
                    quant,
                    {
                        "shape": list(recon.shape),
                        "crack_fraction": float(q.crack_area.sum() / max(1, q.particle_area.sum())),
                        "seconds_reconstruction": t_recon,
                        "seconds_cracks": t_cracks,
                        "seconds_total": time.monotonic() - t0,
                        "slabs": True,
                    },
                )
            particles_out = out.sibling("particles")
            t1 = time.monotonic()
            result = analyze_particles_slabs(
                client,
                recon.volume,
                recon.shape,
                particle_params,
                work,
                memory_limit_mb=s.memory_limit_mb,
                crack_mask=q.crack_mask,
                halo=s.particle_halo,
                slab=s.slab_slices,
                levels=q.levels,
                threads=s.threads_per_worker,
                particle_weights=particle_weights,
            )
            _rows_to(particles_out, "labels", result.labels, step)
            particles_done(result.table, recon.shape, particles_out, time.monotonic() - t1)
        logger.info(
            "tomogram %s: %s volume slab by slab in %.1f s",
            uid,
            recon.shape,
            time.monotonic() - t0,
            extra={"run_uid": uid},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
