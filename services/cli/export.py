"""``beamwatch export RESULT.h5... -o DIR``: the offline results in formats other tools read.

From the HDF5 files ``tomo reconstruct``, ``cracks map``, ``particles analyze`` and
``xanes align`` write:

- volumes, masks and labels as TIFF stacks (Fiji/ImageJ hyperstacks with the voxel size in um
  when it is known; labels above 65535 as plain 32-bit TIFF, which Avizo and Dragonfly read);
- every table as CSV (vector fields spread over numbered columns);
- per-particle XANES spectra as column text (``energy_eV mu_norm mu_raw``, ``#`` comments), as
  Athena and Larch read them: mu_norm is NaN where the spectrum is not normalisable, mu_raw
  (the mean optical density) is there all the same.

Nothing is guessed: without a voxel size the TIFFs carry none and the CSV lengths stay in px.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from services.cli.export_formats import found_frames, write_csv, write_spectra, write_tiff
from services.cli.inputs import add_settings_options, settings_from_args, tiled_client
from services.core.h5io import InputFileError, open_input

__all__ = ["export_file", "register"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
#: Stacks written as TIFF: dataset -> file suffix.
STACKS = {
    "/entry/data/data": "volume",
    "/cracks/mask": "crack_mask",
    "/cracks/particle_mask": "particle_mask",
    "/cracks/damage_density": "damage_density",
    "/cracks/particle_density": "particle_density",
    "/particles/labels": "particle_labels",
    "/xanes/labels": "xanes_labels",
    "/xanes/edge_energy": "edge_energy_eV",
    "/xanes/whiteline_energy": "whiteline_energy_eV",
    "/xanes/lcf/fraction_map": "lcf_fractions",
    "/xanes/lcf/r_factor_map": "lcf_r_factor",
    "/xanes/clusters/labels": "xanes_clusters",
}


def register(subparsers: Any) -> None:
    """Add ``export`` to an argparse sub-parsers object."""
    export = subparsers.add_parser(
        "export",
        help="TIFF stacks, CSV tables and spectra text of result files or of runs in Tiled",
        description="Write the volumes, masks, labels (TIFF), tables (CSV) and XANES spectra "
        "(column text for Athena/Larch) of the HDF5 files the offline commands write, or "
        "of a run's analysis results in the configured Tiled (--run UID).",
    )
    export.add_argument("input", type=Path, nargs="*", help="result HDF5 files")
    export.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="UID",
        help="a run's results in Tiled (analysis/<uid>/...); repeat for several runs",
    )
    export.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    add_settings_options(export)
    export.set_defaults(func=export_command)


def _voxel_size(obj: Any) -> float | None:
    for name in ("voxel_size_um", "pixel_size_um"):
        if name in obj.attrs:
            value = float(obj.attrs[name])
            return value if math.isfinite(value) and value > 0 else None
    return None


def _export_stacks(h5: Any, prefix: Path, written: list[Path]) -> None:
    for name, suffix in STACKS.items():
        obj = h5.get(name)
        if obj is None or obj.ndim not in (2, 3):
            continue
        size = _voxel_size(obj) or _voxel_size(obj.parent)
        path = prefix.with_name(f"{prefix.name}_{suffix}.tif")
        write_tiff(path, obj[()], size)
        written.append(path)


def _export_tables(h5: Any, prefix: Path, written: list[Path]) -> None:
    table = h5.get("/particles/table")
    if table is not None:
        rows = table[()]
        path = prefix.with_name(f"{prefix.name}_particles.csv")
        write_csv(path, {field: rows[field] for field in rows.dtype.names})
        written.append(path)
    cracks = h5.get("/cracks")
    if cracks is not None and "depth_profile" in cracks:
        columns: dict[str, np.ndarray] = {"z": np.arange(cracks["depth_profile"].shape[0])}
        if "depth_um" in cracks:
            columns["depth_um"] = cracks["depth_um"][()]
        for key in ("depth_profile", "crack_area", "particle_area"):
            columns[key] = cracks[key][()]
        corr = cracks.get("correlation")
        if corr is not None:
            for key in ("layer_slope", "layer_intercept", "layer_pearson_r"):
                if key in corr:
                    columns[key] = corr[key][()]
        path = prefix.with_name(f"{prefix.name}_cracks_by_slice.csv")
        write_csv(path, columns)
        written.append(path)
    xanes = h5.get("/xanes")
    if xanes is not None and "global_shift" in xanes and "energy" in xanes:
        shift = xanes["global_shift"][()]
        columns = {
            "frame": np.arange(shift.shape[0]),
            "energy_eV": xanes["energy"][()],
            "dy_px": shift[:, 0],
            "dx_px": shift[:, 1],
        }
        if "global_shift_um" in xanes:
            columns["dy_um"] = xanes["global_shift_um"][()][:, 0]
            columns["dx_um"] = xanes["global_shift_um"][()][:, 1]
        path = prefix.with_name(f"{prefix.name}_xanes_frames.csv")
        write_csv(path, columns)
        written.append(path)
        if "particle_com" in xanes:
            com = xanes["particle_com"][()]
            moved = xanes["particle_shift"][()]
            p, n = com.shape[:2]
            long = {
                "particle": np.repeat(np.arange(1, p + 1), n),
                "frame": np.tile(np.arange(n), p),
                "com_y_px": com[..., 0].ravel(),
                "com_x_px": com[..., 1].ravel(),
                "shift_y_px": moved[..., 0].ravel(),
                "shift_x_px": moved[..., 1].ravel(),
            }
            if "ssim" in xanes:
                long["ssim"] = xanes["ssim"][()].ravel()
            path = prefix.with_name(f"{prefix.name}_xanes_particles.csv")
            write_csv(path, long)
            written.append(path)


def _export_spectra(h5: Any, prefix: Path, written: list[Path]) -> None:
    xanes = h5.get("/xanes")
    if xanes is None or "spectra" not in xanes or "energy" not in xanes:
        return
    found = found_frames(xanes["particle_com"][()]) if "particle_com" in xanes else None
    written += write_spectra(
        xanes["spectra"][()],
        xanes["energy"][()],
        prefix,
        source="beamwatch xanes align",
        found=found,
        raw=xanes["spectra_raw"][()] if "spectra_raw" in xanes else None,
    )


def export_file(path: Path, output: Path) -> list[Path]:
    """Export one result file into ``output``; returns the files written.

    Raises
    ------
    InputFileError
        The file is not readable HDF5 or holds none of the known results.
    """
    output.mkdir(parents=True, exist_ok=True)
    prefix = output / path.stem
    written: list[Path] = []
    with open_input(path) as h5:
        _export_stacks(h5, prefix, written)
        _export_tables(h5, prefix, written)
        _export_spectra(h5, prefix, written)
    if not written:
        raise InputFileError(
            f"{path}: none of /entry/data/data, /cracks, /particles or /xanes to export"
        )
    return written


def export_command(args: argparse.Namespace) -> int:
    """Run ``beamwatch export``; returns the exit code."""
    if args.output.exists() and not args.output.is_dir():
        logger.error("export: output exists and is not a directory: %s", args.output)
        return EXIT_BAD_INPUT
    if not args.input and not args.run:
        logger.error("export: give result files, or --run UID for a run's results in Tiled")
        return EXIT_BAD_INPUT
    try:
        for path in args.input:
            written = export_file(Path(path), args.output)
            logger.info("export: %s -> %d files in %s", path, len(written), args.output)
    except InputFileError as exc:
        logger.error("export: %s", exc)
        return EXIT_BAD_INPUT
    if args.run:
        return _export_runs(args)
    return EXIT_OK


def _export_runs(args: argparse.Namespace) -> int:
    from services.cli.export_tiled import RunExportError, export_run

    settings = settings_from_args(args)
    client = tiled_client(settings)
    try:
        for uid in args.run:
            written = export_run(client, uid, args.output)
            logger.info("export: run %s -> %d files in %s", uid, len(written), args.output)
    except RunExportError as exc:
        logger.error("export: %s", exc)
        return EXIT_BAD_INPUT
    finally:
        client.context.close()
    return EXIT_OK
