"""Offline CLIs: ``tomo reconstruct`` and ``cracks map``.

``services.cli`` calls :func:`register` with its sub-parsers object and dispatches
``args.func(args)``, which returns the exit code (0 success, 2 bad input).

File contracts
--------------
``beamwatch tomo reconstruct PROJ.h5 -o VOLUME.h5``
    Input: ``/entry/data/data`` (N, rows, cols) projections (any real dtype),
    ``/entry/data/rotation_angle`` (N,) degrees, optional ``/entry/data/flat`` and
    ``/entry/data/dark`` ((rows, cols) or (n, rows, cols)). Without flat/dark the projections
    are taken as flat-corrected transmission (``--line-integrals``: already ``-log``).
    Output: ``/entry/data/data`` (rows, cols, cols) float32, attributes ``rotation_center``,
    ``filter_name``.

``beamwatch cracks map VOLUME.h5 -o OUTPUT.h5``
    Input: ``/entry/data/data`` (Z, Y, X), any integer or float dtype; z = 0 is the separator
    side (``--separator last``: the last slice; attributes ``z_convention``,
    ``separator_slice``, and ``depth_um`` counts from it). Output group ``/cracks``
    (attributes ``window``, ``threshold``, ``solid_threshold``,
    ``weights``, ``z_convention``):

    - ``mask`` uint8 (Z, Y, X), 1 = crack
    - ``particle_mask`` uint8 (Z, Y, X), 1 = particle including its cracks
    - ``depth_profile`` float64 (Z,), crack area / particle area per slice (NaN: no particle)
    - ``crack_area``, ``particle_area`` int64 (Z,) pixel counts
    - ``damage_density`` float32 (Z, Y, X), crack share of the moving window
    - ``particle_density`` float32 (Z, Y, X), particle share of the moving window
    - ``damage_histogram`` float64 (Z, bins), distribution of damage density over the
      particle pixels of each slice; ``histogram_edges`` float64 (bins + 1,)
    - ``correlation`` group: attributes ``slope``, ``intercept``, ``pearson_r``,
      ``n_samples`` (whole volume: damage density vs particle density), datasets
      ``layer_slope``, ``layer_intercept``, ``layer_pearson_r`` float64 (Z,)
    - ``baseline_mask`` uint8 (Z, Y, X) with ``--baseline`` (Otsu threshold inside the
      particle mask)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.cli import slab_commands
from services.cli.inputs import (
    INPUT_HELP,
    add_progress_option,
    add_separator_option,
    add_size_option,
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
FILTERS = ("ramp", "shepp-logan", "cosine", "hann", "hamming")


def register(subparsers: Any) -> None:
    """Add the ``tomo`` and ``cracks`` commands to an argparse sub-parsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        Result of ``parser.add_subparsers(...)``.
    """
    tomo = subparsers.add_parser("tomo", help="tomography reconstruction")
    tomo_sub = tomo.add_subparsers(dest="tomo_command", required=True)
    rec = tomo_sub.add_parser(
        "reconstruct",
        help="filtered back projection of an HDF5 projection file",
        description="Reconstruct projections (filtered back projection) into a (rows, cols, "
        "cols) volume written to /entry/data/data: from the beamwatch layout or instrument "
        "files, with their flats, darks and stored angles (--angles for files without).",
    )
    rec.add_argument(
        "input",
        type=Path,
        nargs="+",
        help=INPUT_HELP.format(layout="/entry/data/data and rotation_angle"),
    )
    rec.add_argument("-o", "--output", type=Path, required=True, help="output HDF5 file")
    rec.add_argument(
        "--filter",
        dest="filter_name",
        choices=FILTERS,
        default="ramp",
        help="reconstruction filter (default ramp)",
    )
    rec.add_argument(
        "--center",
        default="auto",
        help="rotation axis in detector columns (px, column i at i), 'auto' (default: the "
        "projections 180 degrees apart, refined across the 180-degree seam when the scan stops "
        "short of it) or 'detector' (cols // 2)",
    )
    rec.add_argument(
        "--line-integrals",
        action="store_true",
        help="projections are already -log(I/I0); no flat/dark normalisation",
    )
    rec.add_argument("--memory-mb", type=float, default=4096.0, help="memory budget (MB)")
    rec.add_argument(
        "--angles",
        nargs=2,
        type=float,
        metavar=("START", "STOP"),
        default=None,
        help="rotation angles (degrees, evenly spaced, both included) for files that store none",
    )
    add_size_option(rec)
    add_slab_option(rec)
    add_progress_option(rec)
    rec.set_defaults(func=reconstruct_command)

    cracks = subparsers.add_parser("cracks", help="crack segmentation and damage maps")
    cracks_sub = cracks.add_subparsers(dest="cracks_command", required=True)
    cmap = cracks_sub.add_parser(
        "map",
        help="U-Net crack map, particle mask and damage quantification of a volume",
        description="Segment cracks in /entry/data/data (Z, Y, X) and quantify the damage.",
    )
    cmap.add_argument(
        "input", type=Path, nargs="+", help=INPUT_HELP.format(layout="/entry/data/data (Z, Y, X)")
    )
    cmap.add_argument("-o", "--output", type=Path, required=True, help="output HDF5 file")
    cmap.add_argument("--weights", type=Path, default=None, help="U-Net weights (.pt)")
    cmap.add_argument(
        "--window",
        type=int,
        default=50,
        help="side of the damage-density window (px; 50 as in the crack paper; the output "
        "states it in um too when the voxel size is known)",
    )
    cmap.add_argument("--threshold", type=float, default=0.5, help="crack probability threshold")
    cmap.add_argument(
        "--inlet-radius",
        type=int,
        default=0,
        help="also report dark, narrow, deep inlets into a particle up to about twice this wide "
        "(px) as cracks: cracks open to the surface that the network misses (0 = off; "
        "CrackParams.inlet_radius_px)",
    )
    cmap.add_argument(
        "--tile-size",
        type=int,
        default=512,
        help="U-Net tile side (px) for large slices (tiles may be up to 1/8 longer)",
    )
    cmap.add_argument("--overlap", type=int, default=32, help="overlap of the tiles (px)")
    cmap.add_argument(
        "--baseline", action="store_true", help="also write the Otsu threshold baseline mask"
    )
    add_size_option(cmap, "--voxel-size-um")
    add_separator_option(cmap)
    add_slab_option(cmap)
    add_progress_option(cmap)
    cmap.set_defaults(func=cracks_map_command)


def _read_dataset(h5: Any, path: str, ndim: tuple[int, ...], filename: Path) -> np.ndarray:
    return read_dataset(h5, path, filename, ndim=ndim)


def _parse_center(value: str) -> float | Literal["auto", "detector"]:
    if value == "auto":
        return "auto"
    if value == "detector":
        return "detector"
    try:
        return float(value)
    except ValueError as exc:
        raise InputFileError(
            f"--center must be a number, 'auto' or 'detector', got {value!r}"
        ) from exc


def _read_layout_projections(path: Path) -> tuple[np.ndarray, ...]:
    """Projections, angles (degrees), flat and dark of a beamwatch-layout file."""
    with open_input(path) as h5:
        projections = _read_dataset(h5, "/entry/data/data", (3,), path)
        angles = _read_dataset(h5, "/entry/data/rotation_angle", (1,), path)
        flat = (
            _read_dataset(h5, "/entry/data/flat", (2, 3), path)
            if "/entry/data/flat" in h5
            else None
        )
        dark = (
            _read_dataset(h5, "/entry/data/dark", (2, 3), path)
            if "/entry/data/dark" in h5
            else None
        )
    return projections, angles, flat, dark  # type: ignore[return-value]


def _read_instrument_projections(paths: list[Path], args: argparse.Namespace) -> tuple[Any, ...]:
    """Projections, angles (degrees), flat, dark and pixel size (um) of instrument files.

    Frames whose flats depend on the frame (Xradia: per energy or embedded) or that are already
    normalised are handed over as transmission, without flat and dark.
    """
    scan = read_scan(paths, needs="" if args.angles is not None else "angles")
    if args.angles is not None:
        if scan.angles_rad is not None:
            raise InputFileError(
                f"{scan.files[0]}: the file stores its rotation angles; --angles is for files "
                "that do not"
            )
        angles = np.linspace(args.angles[0], args.angles[1], scan.n_frames)
    else:
        assert scan.angles_rad is not None  # read_scan(needs="angles") checked it
        angles = np.rad2deg(scan.angles_rad)
    if scan.normalized or scan.per_frame_flats:
        projections = np.stack([scan.transmission(i) for i in range(scan.n_frames)])
        return projections, angles, None, None, scan.pixel_size_um
    if scan.flats is None:
        logger.warning(
            "%s: no flat frames; the projections are taken as flat-corrected transmission",
            scan.source,
        )
    return scan.frames, angles, scan.flats, scan.darks, scan.pixel_size_um


def reconstruct_command(args: argparse.Namespace) -> int:
    """Run ``tomo reconstruct``; returns the exit code."""
    import h5py
    from tqdm import tqdm

    paths = as_paths(args.input)
    try:
        center = _parse_center(args.center)
        if is_beamwatch_layout(paths):
            args.input = paths[0]
            if args.angles is not None:
                raise InputFileError(
                    f"{args.input}: /entry/data/rotation_angle holds the angles; --angles is for "
                    "files that store none"
                )
            proj_shape = dataset_shape(args.input, "/entry/data/data")
            if proj_shape is not None and len(proj_shape) == 3:
                volume_shape = (proj_shape[1], proj_shape[2], proj_shape[2])
                if wants_slabs(args, volume_shape):
                    pixel = resolve_size(
                        args.pixel_size_um, layout_pixel_size(args.input), str(args.input)
                    )
                    return slab_commands.reconstruct_command(args, center, pixel, FILTERS)
            projections, angles, flat, dark = _read_layout_projections(args.input)
            file_pixel = layout_pixel_size(args.input)
        else:
            projections, angles, flat, dark, file_pixel = _read_instrument_projections(paths, args)
            args.input = paths[0] if len(paths) == 1 else paths[0].parent
        pixel_um = resolve_size(args.pixel_size_um, file_pixel, str(args.input))
        if angles.shape[0] != projections.shape[0]:
            raise InputFileError(
                f"{args.input}: /entry/data/rotation_angle has {angles.shape[0]} angles but "
                f"/entry/data/data has {projections.shape[0]} projections"
            )
        for name, frame in (("flat", flat), ("dark", dark)):
            if frame is not None and frame.shape[-2:] != projections.shape[1:]:
                raise InputFileError(
                    f"{args.input}: /entry/data/{name} frame shape {frame.shape[-2:]} != "
                    f"projection shape {projections.shape[1:]}"
                )
        if args.line_integrals and (flat is not None or dark is not None):
            raise InputFileError("--line-integrals cannot be used with flat/dark datasets")
    except InputFileError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT

    from pipelines.tomo.fbp import ReconParams, reconstruct, resolve_center

    params = ReconParams(
        filter_name=args.filter_name,
        center=center,
        input_kind="line_integral" if args.line_integrals else "intensity",
        memory_budget_mb=args.memory_mb,
    )
    axis = resolve_center(projections, angles, params, flat, dark)
    params = params.model_copy(update={"center": axis})
    logger.info(
        "reconstructing %s: %d projections of %dx%d, axis %.2f, filter %s",
        args.input,
        *projections.shape,
        axis,
        args.filter_name,
    )
    with tqdm(
        total=projections.shape[1], desc="reconstruct", unit="slice", disable=args.no_progress
    ) as bar:
        volume = reconstruct(
            projections, angles, flat=flat, dark=dark, params=params, progress=bar.update
        )
    with h5py.File(args.output, "w") as out:
        dset = out.create_dataset("/entry/data/data", data=volume, dtype=np.float32)
        dset.attrs["rotation_center"] = axis
        dset.attrs["rotation_center_units"] = "px"
        dset.attrs["filter_name"] = args.filter_name
        dset.attrs.update(length_attrs(pixel_um, "voxel"))
    logger.info("wrote %s %s", args.output, volume.shape)
    return EXIT_OK


def _crack_params(args: argparse.Namespace) -> Any:
    from pipelines.cracks.quantify import QuantifyParams
    from pipelines.cracks.segment import CrackParams

    return CrackParams(
        tile_size=args.tile_size,
        overlap=args.overlap,
        threshold=args.threshold,
        inlet_radius_px=args.inlet_radius,
        quantify=QuantifyParams(window=args.window),
    )


def cracks_map_command(args: argparse.Namespace) -> int:
    """Run ``cracks map``; returns the exit code."""
    import h5py
    from tqdm import tqdm

    paths = as_paths(args.input)
    try:
        layout = is_beamwatch_layout(paths)
        if layout:
            args.input = paths[0]
        if layout and not args.input.is_file():
            raise InputFileError(f"input file not found: {args.input}")
        if args.weights is not None and not args.weights.is_file():
            raise InputFileError(f"weights file not found: {args.weights}")
        if args.window < 1:
            raise InputFileError(f"--window must be >= 1, got {args.window}")
        if not 0 < args.threshold < 1:
            raise InputFileError(f"--threshold must be in (0, 1), got {args.threshold}")
        if args.inlet_radius < 0:
            raise InputFileError(f"--inlet-radius must be >= 0, got {args.inlet_radius}")
        if not 0 <= args.overlap < args.tile_size:
            raise InputFileError("--overlap must be >= 0 and smaller than --tile-size")
        if layout:
            shape = dataset_shape(args.input, "/entry/data/data")
            if shape is not None and len(shape) == 3 and wants_slabs(args, shape):
                voxel = resolve_size(
                    args.voxel_size_um, layout_pixel_size(args.input), str(args.input)
                )
                return slab_commands.cracks_map_command(args, _crack_params(args), voxel)
            with open_input(args.input) as h5:
                volume = _read_dataset(h5, "/entry/data/data", (3,), args.input)
            file_voxel = layout_pixel_size(args.input)
        else:
            scan = read_scan(paths)
            args.input = paths[0] if len(paths) == 1 else paths[0].parent
            volume = volume_from_scan(scan, str(args.input))
            file_voxel = scan.pixel_size_um
        voxel_um = resolve_size(args.voxel_size_um, file_voxel, str(args.input))
    except InputFileError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT

    from models.crack_unet import load_crack_unet
    from pipelines.cracks.segment import map_cracks, threshold_baseline

    params = _crack_params(args)
    try:
        model = load_crack_unet(args.weights)
    except ValueError as exc:
        logger.error("--weights %s: %s", args.weights, exc)
        return EXIT_BAD_INPUT
    logger.info("mapping cracks in %s %s (%s)", args.input, volume.shape, volume.dtype)
    with tqdm(total=volume.shape[0], desc="cracks", unit="slice", disable=args.no_progress) as bar:
        result = map_cracks(volume, params, model=model, progress=bar.update)
    q = result.quantification
    with h5py.File(args.output, "w") as out:
        grp = out.create_group("cracks")
        grp.attrs.update(
            {
                "window": q.window,
                "threshold": args.threshold,
                "solid_threshold": result.solid_threshold,
                "weights": str(args.weights) if args.weights is not None else "shipped",
                **separator_attrs(args.separator, volume.shape[0]),
                "window_units": "px",
                "window_um": q.window * voxel_um if voxel_um is not None else float("nan"),
                **length_attrs(voxel_um, "voxel"),
            }
        )
        opts = {"compression": "gzip", "compression_opts": 1}
        grp.create_dataset("mask", data=result.crack_mask, dtype=np.uint8, **opts)
        grp.create_dataset("particle_mask", data=result.particle_mask, dtype=np.uint8, **opts)
        grp.create_dataset("depth_profile", data=q.depth_profile, dtype=np.float64)
        if voxel_um is not None:  # depth of each slice's centre below the separator, when known
            z = np.arange(volume.shape[0])
            slices_below = z if args.separator == "first" else volume.shape[0] - 1 - z
            depth = (slices_below + 0.5) * voxel_um
            grp.create_dataset("depth_um", data=depth, dtype=np.float64)
        grp.create_dataset("crack_area", data=q.crack_area, dtype=np.int64)
        grp.create_dataset("particle_area", data=q.particle_area, dtype=np.int64)
        grp.create_dataset("damage_density", data=q.damage_density, dtype=np.float32, **opts)
        grp.create_dataset("particle_density", data=q.particle_density, dtype=np.float32, **opts)
        grp.create_dataset("damage_histogram", data=q.damage_histogram, dtype=np.float64)
        grp.create_dataset("histogram_edges", data=q.histogram_edges, dtype=np.float64)
        corr = grp.create_group("correlation")
        corr.attrs.update(
            {
                "slope": q.volume_fit.slope,
                "intercept": q.volume_fit.intercept,
                "pearson_r": q.volume_fit.pearson_r,
                "n_samples": q.volume_fit.n_samples,
            }
        )
        corr.create_dataset("layer_slope", data=q.layer_slope, dtype=np.float64)
        corr.create_dataset("layer_intercept", data=q.layer_intercept, dtype=np.float64)
        corr.create_dataset("layer_pearson_r", data=q.layer_pearson_r, dtype=np.float64)
        if args.baseline:
            baseline = threshold_baseline(volume, result.particle_mask)
            grp.create_dataset("baseline_mask", data=baseline, dtype=np.uint8, **opts)
    logger.info(
        "wrote %s: crack fraction of particle volume %.4f",
        args.output,
        float(q.crack_area.sum()) / max(1, int(q.particle_area.sum())),
    )
    return EXIT_OK
