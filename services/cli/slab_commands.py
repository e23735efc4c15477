"""``tomo reconstruct``, ``cracks map`` and ``particles analyze`` on volumes larger than memory.

When the float32 volume is larger than ``dask.threshold_mb`` of the settings (or with
``--slabs always``), the commands run slab by slab on the Dask cluster of the settings
(:mod:`services.slabs`): intermediate volumes go to Zarr under ``dask.work_dir`` (default
``<data dir>/slabs``, removed afterwards) and the output HDF5 file is written slab by slab, with
the same datasets as the in-memory path. Inputs must be in beamwatch's HDF5 layout (instrument
formats are read whole and stay on the in-memory path).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from services.cli.inputs import length_attrs, separator_attrs, settings_from_args
from services.core.h5io import InputFileError
from services.core.settings import BeamwatchSettings

logger = logging.getLogger(__name__)

SLAB_CHOICES = ("auto", "always", "never")


def add_slab_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slabs",
        choices=SLAB_CHOICES,
        default="auto",
        help="process slab by slab on the Dask cluster of the settings: 'auto' when the float32 "
        "volume exceeds dask.threshold_mb (default 4096 MB), 'always', or 'never'",
    )


def _quiet(args: argparse.Namespace) -> bool:
    """``--no-progress`` was given: no progress bar on stderr."""
    return bool(getattr(args, "no_progress", False))


def wants_slabs(args: argparse.Namespace, volume_shape: tuple[int, ...]) -> bool:
    """Whether this command runs slab by slab for a volume of ``volume_shape``."""
    choice = getattr(args, "slabs", "auto")
    if choice == "never":
        return False
    if choice == "always":
        return True
    size_mb = float(np.prod(volume_shape)) * 4 / 2**20
    threshold = settings_from_args(args).dask.threshold_mb
    if size_mb > threshold:
        logger.info("%.0f MB volume > dask.threshold_mb %.0f: slab by slab", size_mb, threshold)
        return True
    return False


def dataset_shape(path: Path, dataset: str) -> tuple[int, ...] | None:
    """Shape of ``dataset`` in an HDF5 file, None when it is missing (the reader says why)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return tuple(h5[dataset].shape) if dataset in h5 else None
    except OSError:
        return None


@contextmanager
def slab_session(args: argparse.Namespace) -> Iterator[tuple[Any, BeamwatchSettings, Path]]:
    """The cluster client, the settings and a fresh work directory (removed afterwards)."""
    from services.slabs.cluster import open_client

    settings = settings_from_args(args)
    work = settings.slab_work_dir / f"cli-{uuid.uuid4().hex[:12]}"
    work.mkdir(parents=True, exist_ok=False)
    try:
        with open_client(settings.dask) as client:
            yield client, settings, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_into(ref: Any, dset: Any, step: int) -> None:
    from services.slabs.stores import copy_slices

    def write(z0: int, block: np.ndarray) -> None:
        dset[z0 : z0 + block.shape[0]] = block

    copy_slices(ref, write, step=step)


def _slices_per_copy(shape: tuple[int, ...]) -> int:
    """Slices copied at a time into the output file (about 256 MB of float32)."""
    return max(1, int(256e6 // (4 * shape[1] * shape[2])))


def _input_volume(path: Any) -> tuple[Any, tuple[int, int, int]]:
    """The reconstruction of a beamwatch-layout file as a lazily read volume and its shape."""
    from services.slabs.stores import VolumeRef

    shape = dataset_shape(path, "/entry/data/data")
    if shape is None or len(shape) != 3:
        raise InputFileError(
            f"{path}: /entry/data/data must be a 3-D reconstruction (z, y, x); found {shape}"
        )
    return VolumeRef(str(path), "/entry/data/data"), (shape[0], shape[1], shape[2])


def reconstruct_command(
    args: argparse.Namespace, center: Any, pixel_um: float | None, filters: Any
) -> int:
    """``tomo reconstruct`` slab by slab; ``args.input`` is a beamwatch-layout file."""
    import h5py
    from tqdm import tqdm

    from pipelines.tomo.fbp import ReconParams
    from services.slabs.tomo import ProjectionFile, reconstruct_slabs

    with h5py.File(args.input, "r") as h5:
        angles = np.asarray(h5["/entry/data/rotation_angle"][()], dtype=np.float64)
        n_angles, rows, cols = h5["/entry/data/data"].shape
        flat = "/entry/data/flat" if "/entry/data/flat" in h5 else None
        dark = "/entry/data/dark" if "/entry/data/dark" in h5 else None
    if angles.shape != (n_angles,):
        raise InputFileError(
            f"{args.input}: /entry/data/rotation_angle has {angles.size} angles but "
            f"/entry/data/data has {n_angles} projections"
        )
    if args.line_integrals and (flat or dark):
        raise InputFileError("--line-integrals cannot be used with flat/dark datasets")
    params = ReconParams(
        filter_name=args.filter_name,
        center=center,
        input_kind="line_integral" if args.line_integrals else "intensity",
        memory_budget_mb=args.memory_mb,
    )
    source = ProjectionFile(str(args.input), flat=flat, dark=dark)
    with slab_session(args) as (client, settings, work):
        with tqdm(
            total=rows, desc="reconstruct (slabs)", unit="slice", disable=_quiet(args)
        ) as bar:
            result = reconstruct_slabs(
                client,
                source,
                angles,
                params,
                work,
                memory_limit_mb=settings.dask.memory_limit_mb,
                rows=settings.dask.slab_slices,
                threads=settings.dask.threads_per_worker,
                progress=bar.update,
            )
        with h5py.File(args.output, "w") as out:
            dset = out.create_dataset(
                "/entry/data/data",
                shape=result.shape,
                dtype=np.float32,
                chunks=(1, cols, cols),
            )
            _copy_into(result.volume, dset, _slices_per_copy(result.shape))
            dset.attrs["rotation_center"] = result.center
            dset.attrs["rotation_center_units"] = "px"
            dset.attrs["filter_name"] = args.filter_name
            dset.attrs.update(length_attrs(pixel_um, "voxel"))
    logger.info("wrote %s %s (slab by slab)", args.output, result.shape)
    return 0


def cracks_map_command(args: argparse.Namespace, params: Any, voxel_um: float | None) -> int:
    """``cracks map`` slab by slab; ``args.input`` is a beamwatch-layout file."""
    import h5py
    from tqdm import tqdm

    from services.slabs.tomo import map_cracks_slabs

    if args.baseline:
        raise InputFileError(
            "--baseline needs the whole volume in memory; it is not available slab by slab "
            "(--slabs never)"
        )
    volume, shape = _input_volume(args.input)
    with slab_session(args) as (client, settings, work):
        with tqdm(total=shape[0], desc="cracks (slabs)", unit="slice", disable=_quiet(args)) as bar:
            q = map_cracks_slabs(
                client,
                volume,
                shape,
                params,
                work,
                memory_limit_mb=settings.dask.memory_limit_mb,
                slab=settings.dask.slab_slices,
                threads=settings.dask.threads_per_worker,
                progress=bar.update,
                weights=str(args.weights) if args.weights is not None else None,
            )
        with h5py.File(args.output, "w") as out:
            grp = out.create_group("cracks")
            grp.attrs.update(
                {
                    "window": q.window,
                    "threshold": args.threshold,
                    "solid_threshold": q.solid_threshold,
                    "weights": str(args.weights) if args.weights is not None else "shipped",
                    **separator_attrs(args.separator, shape[0]),
                    "window_units": "px",
                    "window_um": q.window * voxel_um if voxel_um is not None else float("nan"),
                    **length_attrs(voxel_um, "voxel"),
                }
            )
            step = _slices_per_copy(shape)
            chunks = (1, *shape[1:])
            opts = {"compression": "gzip", "compression_opts": 1, "chunks": chunks}
            for name, ref, dtype in (
                ("mask", q.crack_mask, np.uint8),
                ("particle_mask", q.particle_mask, np.uint8),
                ("damage_density", q.damage_density, np.float32),
                ("particle_density", q.particle_density, np.float32),
            ):
                dset = grp.create_dataset(name, shape=shape, dtype=dtype, **opts)
                _copy_into(ref, dset, step)
            grp.create_dataset("depth_profile", data=q.depth_profile, dtype=np.float64)
            if voxel_um is not None:
                z = np.arange(shape[0])
                slices_below = z if args.separator == "first" else shape[0] - 1 - z
                grp.create_dataset("depth_um", data=(slices_below + 0.5) * voxel_um)
            grp.create_dataset("crack_area", data=q.crack_area, dtype=np.int64)
            grp.create_dataset("particle_area", data=q.particle_area, dtype=np.int64)
            grp.create_dataset("damage_histogram", data=q.damage_histogram, dtype=np.float64)
            grp.create_dataset("histogram_edges", data=q.histogram_edges, dtype=np.float64)
            corr = grp.create_group("correlation")
            fit = q.volume_fit
            corr.attrs.update(
                {
                    "slope": fit.slope,
                    "intercept": fit.intercept,
                    "pearson_r": fit.pearson_r,
                    "n_samples": fit.n_samples,
                }
            )
            corr.create_dataset("layer_slope", data=q.layer_slope, dtype=np.float64)
            corr.create_dataset("layer_intercept", data=q.layer_intercept, dtype=np.float64)
            corr.create_dataset("layer_pearson_r", data=q.layer_pearson_r, dtype=np.float64)
    logger.info(
        "wrote %s (slab by slab): crack fraction of particle volume %.4f",
        args.output,
        float(q.crack_area.sum()) / max(1, int(q.particle_area.sum())),
    )
    return 0


def particles_analyze_command(
    args: argparse.Namespace, params: Any, voxel_um: float | None, statistics_json: Any
) -> int:
    """``particles analyze`` slab by slab; ``args.input`` is a beamwatch-layout file.

    The degree of detachment is not computed on this path (NaN in the table; its phase
    estimate chooses one cut for the whole volume), so ``--phase`` is refused.
    """
    import h5py
    from tqdm import tqdm

    from services.slabs.stores import VolumeRef
    from services.slabs.tomo import analyze_particles_slabs

    if args.phase is not None:
        raise InputFileError(
            "--phase: the degree of detachment is not computed slab by slab; use --slabs never"
        )
    volume, shape = _input_volume(args.input)
    cracks = None
    if args.cracks is not None:
        crack_shape = dataset_shape(args.cracks, "/cracks/mask")
        if crack_shape != shape:
            raise InputFileError(
                f"{args.cracks}: /cracks/mask shape {crack_shape} != volume shape {shape}"
            )
        cracks = VolumeRef(str(args.cracks), "/cracks/mask")
    with slab_session(args) as (client, settings, work):
        with tqdm(
            total=shape[0], desc="particles (slabs)", unit="slice", disable=_quiet(args)
        ) as bar:
            result = analyze_particles_slabs(
                client,
                volume,
                shape,
                params,
                work,
                memory_limit_mb=settings.dask.memory_limit_mb,
                crack_mask=cracks,
                halo=settings.dask.particle_halo,
                slab=settings.dask.slab_slices,
                threads=settings.dask.threads_per_worker,
                progress=bar.update,
                particle_weights=str(args.weights) if args.weights else None,
                flaw_weights=str(args.flaw_weights) if args.flaw_weights else None,
            )
        table = result.table
        with h5py.File(args.output, "w") as out:
            grp = out.create_group("particles")
            dset = grp.create_dataset(
                "labels",
                shape=shape,
                dtype=np.int32,
                chunks=(1, *shape[1:]),
                compression="gzip",
                compression_opts=1,
            )
            _copy_into(result.labels, dset, _slices_per_copy(shape))
            grp.create_dataset("table", data=table)
            grp.attrs.update(
                {
                    "n_particles": len(table),
                    "particle_weights": str(args.weights) if args.weights else "shipped",
                    "flaw_weights": str(args.flaw_weights) if args.flaw_weights else "shipped",
                    "crack_source": str(args.cracks) if args.cracks else "none",
                    "phase_source": "not computed (slab by slab): detachment is NaN",
                    **separator_attrs(args.separator, shape[0]),
                    "stage_seconds": json.dumps(result.seconds),
                    "slabs": result.n_slabs,
                    "statistics": statistics_json(table),
                    **length_attrs(voxel_um, "voxel"),
                }
            )
    logger.info(
        "wrote %s (slab by slab): %d particles, %d flawed, %d touching the border",
        args.output,
        len(table),
        int(table["flawed"].sum()),
        int(table["touches_border"].sum()),
    )
    return 0
