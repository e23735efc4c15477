"""Offline CLIs: ``particles analyze`` and ``particles export-coco``.

``services.cli`` calls :func:`register` with its sub-parsers object and dispatches
``args.func(args)``, which returns the exit code (0 success, 2 bad input).

File contracts
--------------
``beamwatch particles analyze VOLUME.h5 -o OUTPUT.h5 [--cracks CRACKS.h5] [--phase PHASE.h5]``
    Input: ``/entry/data/data`` (Z, Y, X) reconstructed volume, any integer or float dtype;
    z = 0 is the separator side (``--separator last``: the last slice; the statistics by depth
    count from it, the table keeps the file's z). ``--cracks``: ``/cracks/mask`` (Z, Y, X) as
    written by ``beamwatch cracks map``. ``--phase``: ``/entry/data/data`` (Z, Y, X) integer 3-phase
    segmentation with codes ``--pore-value`` / ``--binder-value`` (default: estimated from
    the grey levels). Output group ``/particles`` (attributes ``n_particles``,
    ``particle_weights``, ``flaw_weights``, ``crack_source``, ``phase_source``,
    ``z_convention``, ``statistics`` (JSON of the size/detachment/flaw statistics)):

    - ``labels`` int32 (Z, Y, X), 0 = background, label k = row k - 1 of the table
    - ``table`` compound (n,) with ``label, volume_voxels, equivalent_diameter_px,
      centroid_z, centroid_y, centroid_x, surface_area_px2, sphericity, crack_fraction,
      flawed_slices, flawed, detachment, touches_border, slice_z (10,), slice_scores (10,)``

``beamwatch particles export-coco LABELS.h5 -o DIR/ [--volume VOLUME.h5]``
    Input: ``/particles/labels`` (or ``--dataset``) (Z, Y, X) integer labels. Output:
    ``DIR/annotations.json`` (COCO, one image per z slice, RLE masks); with ``--volume`` also
    the grey-level slices ``DIR/slice_00000.tif`` ... in the volume's own dtype.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from services.cli import slab_commands
from services.cli.inputs import (
    INPUT_HELP,
    add_progress_option,
    add_separator_option,
    as_paths,
    is_beamwatch_layout,
    layout_pixel_size,
    length_attrs,
    read_scan,
    resolve_size,
    separator_attrs,
    volume_from_scan,
)
from services.cli.slab_commands import add_slab_option, dataset_shape, wants_slabs
from services.core.h5io import InputFileError, open_input, read_dataset

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def register(subparsers: Any) -> None:
    """Add the ``particles`` command to an argparse sub-parsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        Result of ``parser.add_subparsers(...)``.
    """
    particles = subparsers.add_parser("particles", help="particle instances and statistics")
    sub = particles.add_subparsers(dest="particles_command", required=True)
    analyze = sub.add_parser(
        "analyze",
        help="crack-robust particle instances, measurements, flaws and detachment",
        description="Identify every particle of /entry/data/data (Z, Y, X) once, even when "
        "cracked, and write labels and a per-particle table.",
    )
    analyze.add_argument(
        "input", type=Path, nargs="+", help=INPUT_HELP.format(layout="/entry/data/data (Z, Y, X)")
    )
    analyze.add_argument("-o", "--output", type=Path, required=True, help="output HDF5 file")
    analyze.add_argument("--cracks", type=Path, default=None, help="HDF5 with /cracks/mask")
    analyze.add_argument(
        "--phase", type=Path, default=None, help="HDF5 with a 3-phase /entry/data/data"
    )
    analyze.add_argument("--pore-value", type=int, default=0, help="pore code in --phase")
    analyze.add_argument("--binder-value", type=int, default=1, help="binder code in --phase")
    analyze.add_argument("--weights", type=Path, default=None, help="particle U-Net weights")
    analyze.add_argument("--flaw-weights", type=Path, default=None, help="flaw CNN weights")
    analyze.add_argument(
        "--voxel-size-um",
        type=float,
        default=None,
        help="voxel size (um); default: from the input file, else unknown (sizes in px, no "
        "small/large split in um)",
    )
    analyze.add_argument(
        "--size-threshold-um", type=float, default=11.0, help="small/large particle threshold"
    )
    analyze.add_argument(
        "--size-threshold-px",
        type=float,
        default=None,
        help="small/large threshold in voxels, for volumes of unknown voxel size",
    )
    add_separator_option(analyze)
    add_slab_option(analyze)
    add_progress_option(analyze)
    analyze.set_defaults(func=analyze_command)

    export = sub.add_parser(
        "export-coco",
        help="COCO instance annotations of a labelled volume, slice by slice",
        description="Write DIR/annotations.json (and with --volume the slices as TIFF).",
    )
    export.add_argument("input", type=Path, help="HDF5 file with integer labels (Z, Y, X)")
    export.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    export.add_argument("--dataset", default="/particles/labels", help="labels dataset path")
    export.add_argument(
        "--volume", type=Path, default=None, help="HDF5 with /entry/data/data grey levels"
    )
    export.add_argument("--min-area", type=int, default=1, help="smallest instance (pixels)")
    export.set_defaults(func=export_coco_command)


def _read_volume(path: Path, dataset: str, *, integer: bool = False) -> np.ndarray:
    with open_input(path) as h5:
        return read_dataset(h5, dataset, path, ndim=(3,), layout="(Z, Y, X)", integer=integer)


def _check_weights(*paths: Path | None) -> None:
    for path in paths:
        if path is not None and not path.is_file():
            raise InputFileError(f"weights file not found: {path}")


def _statistics_json(
    table: np.ndarray,
    depth: int,
    voxel_um: float | None,
    threshold_um: float,
    threshold_px: float | None = None,
) -> str:
    """Statistics as JSON; with an unknown voxel size every length is in px (keys ``*_px``)
    and the small/large split applies only with a threshold in px (else it is null)."""
    from pipelines.particles.stats import StatsParams, particle_statistics

    known = voxel_um is not None
    threshold = threshold_um if known else (threshold_px or 1.0)
    stats = particle_statistics(
        table,
        depth=depth,
        params=StatsParams(voxel_size_um=voxel_um or 1.0, size_threshold_um=threshold),
    )

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    result = plain(dataclasses.asdict(stats))
    if known:
        result.update(length_unit="um", voxel_size_um=voxel_um, size_threshold_um=threshold_um)
        return json.dumps(result)

    def in_px(value: Any) -> Any:
        if isinstance(value, dict):
            return {k.replace("_um", "_px"): in_px(v) for k, v in value.items()}
        if isinstance(value, list):
            return [in_px(v) for v in value]
        return value

    result = in_px(result)
    result.update(length_unit="px", voxel_size_um=None, size_threshold_px=threshold_px)
    if threshold_px is None:
        result["small"] = result["large"] = None
        result["size_split"] = "not applied: voxel size unknown (give --voxel-size-um)"
    return json.dumps(result)


def _from_separator(table: np.ndarray, depth: int, separator: str) -> np.ndarray:
    """The table with ``centroid_z`` counted from the separator side (for the statistics by
    depth); the table written to the file keeps the file's own z."""
    if separator == "first":
        return table
    flipped = table.copy()
    flipped["centroid_z"] = depth - 1 - flipped["centroid_z"]
    return flipped


def _analyze_slabs(args: argparse.Namespace) -> int:
    """``particles analyze`` slab by slab (:mod:`services.cli.slab_commands`)."""
    from pipelines.particles.analyze import ParticleParams

    voxel_um = resolve_size(args.voxel_size_um, layout_pixel_size(args.input), str(args.input))
    params = ParticleParams()
    depth = dataset_shape(args.input, "/entry/data/data")[0]  # type: ignore[index]

    def statistics(table: np.ndarray) -> str:
        return _statistics_json(
            _from_separator(table, depth, args.separator),
            depth,
            voxel_um,
            args.size_threshold_um,
            args.size_threshold_px,
        )

    return slab_commands.particles_analyze_command(args, params, voxel_um, statistics)


def analyze_command(args: argparse.Namespace) -> int:
    """Run ``particles analyze``; returns the exit code."""
    import h5py
    from tqdm import tqdm

    paths = as_paths(args.input)
    try:
        _check_weights(args.weights, args.flaw_weights)
        if (args.voxel_size_um is not None and args.voxel_size_um <= 0) or (
            args.size_threshold_um <= 0
        ):
            raise InputFileError("--voxel-size-um and --size-threshold-um must be > 0")
        if args.size_threshold_px is not None and args.size_threshold_px <= 0:
            raise InputFileError("--size-threshold-px must be > 0")
        if args.pore_value == args.binder_value:
            raise InputFileError("--pore-value and --binder-value must differ")
        if not args.output.parent.is_dir():
            raise InputFileError(f"output directory does not exist: {args.output.parent}")
        if is_beamwatch_layout(paths):
            args.input = paths[0]
            shape = dataset_shape(args.input, "/entry/data/data")
            if shape is not None and len(shape) == 3 and wants_slabs(args, shape):
                return _analyze_slabs(args)
            volume = _read_volume(args.input, "/entry/data/data")
            file_voxel = layout_pixel_size(args.input)
        else:
            scan = read_scan(paths)
            args.input = paths[0] if len(paths) == 1 else paths[0].parent
            volume = volume_from_scan(scan, str(args.input))
            file_voxel = scan.pixel_size_um
        voxel_um = resolve_size(args.voxel_size_um, file_voxel, str(args.input))
        if voxel_um is None:
            logger.warning(
                "%s: voxel size unknown; sizes are in px and the %g um split is not applied",
                args.input,
                args.size_threshold_um,
            )
        cracks = None
        if args.cracks is not None:
            cracks = _read_volume(args.cracks, "/cracks/mask", integer=True)
            if cracks.shape != volume.shape:
                raise InputFileError(
                    f"{args.cracks}: /cracks/mask shape {cracks.shape} != volume shape "
                    f"{volume.shape}"
                )
        phase = None
        if args.phase is not None:
            phase = _read_volume(args.phase, "/entry/data/data", integer=True)
            if phase.shape != volume.shape:
                raise InputFileError(
                    f"{args.phase}: phase shape {phase.shape} != volume shape {volume.shape}"
                )
    except InputFileError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT

    from models.flaw_cnn import load_flaw_cnn
    from models.particle_unet import load_particle_unet
    from pipelines.particles.analyze import ParticleParams, analyze_particles
    from pipelines.particles.detachment import DetachmentParams

    params = ParticleParams(
        detachment=DetachmentParams(pore_value=args.pore_value, binder_value=args.binder_value)
    )
    particle_model = load_particle_unet(args.weights)
    flaw_model = load_flaw_cnn(args.flaw_weights)
    logger.info("analysing particles in %s %s (%s)", args.input, volume.shape, volume.dtype)
    with tqdm(
        total=volume.shape[0], desc="particles", unit="slice", disable=args.no_progress
    ) as bar:
        result = analyze_particles(
            volume,
            crack_mask=cracks,
            phase=phase,
            params=params,
            particle_model=particle_model,
            flaw_model=flaw_model,
            progress=bar.update,
        )
    table = result.table
    logger.info(
        "%d particles; seconds per stage: %s",
        len(table),
        ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()),
    )
    if args.phase:
        phase_source = str(args.phase)
    elif params.detachment.estimate == "learned":
        phase_source = "estimated by the learned classifier (models/weights/phase_net.pt)"
    else:
        phase_source = "estimated from grey levels"
    with h5py.File(args.output, "w") as out:
        grp = out.create_group("particles")
        opts = {"compression": "gzip", "compression_opts": 1}
        grp.create_dataset("labels", data=result.labels, dtype=np.int32, **opts)
        grp.create_dataset("table", data=table)
        grp.attrs.update(
            {
                "n_particles": len(table),
                "particle_weights": str(args.weights) if args.weights else "shipped",
                "flaw_weights": str(args.flaw_weights) if args.flaw_weights else "shipped",
                "crack_source": str(args.cracks) if args.cracks else "none",
                "phase_source": phase_source,
                **separator_attrs(args.separator, volume.shape[0]),
                "stage_seconds": json.dumps(result.seconds),
                "statistics": _statistics_json(
                    _from_separator(table, volume.shape[0], args.separator),
                    volume.shape[0],
                    voxel_um,
                    args.size_threshold_um,
                    args.size_threshold_px,
                ),
                **length_attrs(voxel_um, "voxel"),
            }
        )
    logger.info(
        "wrote %s: %d particles, %d flawed, %d touching the border",
        args.output,
        len(table),
        int(table["flawed"].sum()),
        int(table["touches_border"].sum()),
    )
    return EXIT_OK


def export_coco_command(args: argparse.Namespace) -> int:
    """Run ``particles export-coco``; returns the exit code."""
    try:
        if args.min_area < 1:
            raise InputFileError(f"--min-area must be >= 1, got {args.min_area}")
        if args.output.exists() and not args.output.is_dir():
            raise InputFileError(f"output exists and is not a directory: {args.output}")
        labels = _read_volume(args.input, args.dataset, integer=True)
        if labels.size and labels.min() < 0:
            raise InputFileError(f"{args.input}: {args.dataset} has negative labels")
        volume = None
        if args.volume is not None:
            volume = _read_volume(args.volume, "/entry/data/data")
            if volume.shape != labels.shape:
                raise InputFileError(
                    f"{args.volume}: volume shape {volume.shape} != labels shape {labels.shape}"
                )
    except InputFileError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT

    from pipelines.particles.coco import coco_from_labels

    file_name = "slice_{z:05d}.tif"
    coco = coco_from_labels(labels, file_name=file_name, min_area=args.min_area)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "annotations.json").write_text(json.dumps(coco))
    if volume is not None:
        import tifffile

        for z, plane in enumerate(volume):
            tifffile.imwrite(args.output / file_name.format(z=z), plane)
    logger.info(
        "wrote %s: %d images, %d annotations",
        args.output / "annotations.json",
        len(coco["images"]),
        len(coco["annotations"]),
    )
    return EXIT_OK
