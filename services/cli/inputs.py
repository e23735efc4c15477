"""Inputs of the offline verbs: the beamwatch HDF5 layout or instrument files, and the pixel size.

``xanes align``, ``tomo reconstruct``, ``cracks map`` and ``particles analyze`` take one file,
several files or a folder. One HDF5 file in the beamwatch layout (``/entry/data/data``) goes to
the verb's own reader as before; anything else is read by :mod:`services.core.instrument_files`.

Pixel size: the ``--pixel-size-um`` / ``--voxel-size-um`` option wins, else the file's own
(instrument metadata, or the ``voxel_size_um`` / ``pixel_size_um`` attribute of
``/entry/data/data``), else unknown: outputs then say ``px`` and never ``um``.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.core.instrument_files import (
    InstrumentFileError,
    InstrumentScan,
    detect_format,
    read_instrument_files,
)
from services.core.settings import BeamwatchSettings, load_settings

__all__ = [
    "INPUT_HELP",
    "add_separator_option",
    "add_settings_options",
    "add_size_option",
    "as_paths",
    "is_beamwatch_layout",
    "layout_pixel_size",
    "length_attrs",
    "read_scan",
    "resolve_size",
    "separator_attrs",
    "volume_from_scan",
]

logger = logging.getLogger(__name__)

INPUT_HELP = (
    "beamwatch HDF5 ({layout}), or instrument files: Xradia .xrm/.txrm/.txm, FXI HDF5, "
    "Data Exchange HDF5, NXtomo, TIFF; one file, several files or a folder"
)
#: Attribute names read from ``/entry/data/data`` of the beamwatch layout for the pixel size.
SIZE_ATTRS = ("voxel_size_um", "pixel_size_um")


def as_paths(value: Any) -> list[Path]:
    """The input argument as a list of paths (argparse gives a list, callers may give one)."""
    if isinstance(value, (list, tuple)):
        return [Path(v) for v in value]
    return [Path(value)]


def is_beamwatch_layout(paths: Sequence[Path]) -> bool:
    """Whether ``paths`` is one file for the verb's own HDF5 reader: a beamwatch-layout file,
    or a single file that is not a folder and not a recognised instrument file (the verb's
    reader then reports it missing or unreadable, as it always did)."""
    if len(paths) != 1 or paths[0].is_dir():
        return False
    if not paths[0].is_file():
        return True
    try:
        return detect_format(paths[0]) == "beamwatch"
    except InstrumentFileError:
        return True


def read_scan(paths: Sequence[Path], *, needs: str = "") -> InstrumentScan:
    """Read instrument files and check the scan holds what the verb ``needs``.

    Parameters
    ----------
    paths : sequence of Path
        Files and folders.
    needs : str
        ``"energies"`` (xanes align), ``"angles"`` (tomo reconstruct) or ``""``.

    Raises
    ------
    InstrumentFileError
        Unreadable input, or no energies / angles where they are needed.
    """
    scan = read_instrument_files(paths)
    where = ", ".join(str(p) for p in paths)
    if needs == "energies" and scan.energies_eV is None:
        raise InstrumentFileError(
            f"{where}: no energies ({scan.format} files store none here and the file names "
            "carry no '<energy>eV'); XANES alignment needs the energy of every frame"
        )
    if needs == "angles" and scan.angles_rad is None:
        raise InstrumentFileError(
            f"{where}: no rotation angles stored ({scan.format}); give --angles START STOP "
            "(degrees, evenly spaced, both included)"
        )
    logger.info("read %s", scan.source)
    return scan


def volume_from_scan(scan: InstrumentScan, where: str) -> Any:
    """The frames of ``scan`` as a (Z, Y, X) volume.

    Raises
    ------
    InstrumentFileError
        The files hold raw projections (with flats or angles), not a volume.
    """
    if scan.kind == "projections" or scan.flats is not None:
        raise InstrumentFileError(
            f"{where}: {scan.format} projections, not a reconstructed volume; reconstruct "
            "them first with `beamwatch tomo reconstruct`"
        )
    if scan.kind == "xanes":
        raise InstrumentFileError(f"{where}: a XANES series, not a volume (use `xanes align`)")
    return scan.frames


def layout_pixel_size(path: Path, dataset: str = "/entry/data/data") -> float | None:
    """Pixel/voxel size (um) stored as an attribute of ``dataset`` in a beamwatch file."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            obj = h5.get(dataset)
            if obj is None:
                return None
            for name in SIZE_ATTRS:
                if name in obj.attrs:
                    value = float(obj.attrs[name])
                    return value if math.isfinite(value) and value > 0 else None
    except OSError:
        return None
    return None


def resolve_size(option: float | None, from_file: float | None, where: str) -> float | None:
    """The pixel size to use: the option, else the file's, else None (unknown).

    Raises
    ------
    InstrumentFileError
        If the option is not a positive number.
    """
    if option is not None:
        if not (math.isfinite(option) and option > 0):
            raise InstrumentFileError(f"pixel/voxel size must be > 0 um, got {option}")
        if from_file is not None and abs(option - from_file) > 1e-6 * from_file:
            logger.warning(
                "%s states %.6g um per pixel; using the option's %.6g um", where, from_file, option
            )
        return option
    return from_file


def length_attrs(size_um: float | None, prefix: str = "pixel") -> dict[str, Any]:
    """Attributes saying the length unit of an output: ``<prefix>_size_um`` (NaN when unknown)
    and ``length_unit`` (``um`` when the size is known, else ``px``)."""
    return {
        f"{prefix}_size_um": float(size_um) if size_um is not None else float("nan"),
        "length_unit": "um" if size_um is not None else "px",
    }


def add_size_option(parser: argparse.ArgumentParser, name: str = "--pixel-size-um") -> None:
    """Add the pixel/voxel size option (default: the file's own, else unknown -> px)."""
    parser.add_argument(
        name,
        type=float,
        default=None,
        help="pixel/voxel size in um (default: from the file; unknown sizes are reported in px)",
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-progress``: no progress bar on stderr (for scripts and logs)."""
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` / ``--data-dir`` also after the verb (``beamwatch import F --data-dir D``),
    for the verbs that read or write the configured Tiled; before the verb they work as well."""
    parser.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="YAML settings file (Tiled to use)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="data directory of `beamwatch up` (its Tiled and API key)",
    )


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> BeamwatchSettings:
    """The settings the command line names: ``--config`` (a YAML file) and ``--data-dir``
    (given anywhere on the line) over the defaults; ``overrides`` on top (e.g. the bus)."""
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = str(args.data_dir)
    return load_settings(getattr(args, "config", None), **overrides)


def tiled_client(settings: Any) -> Any:
    """A client on the configured Tiled, with the writers' timeouts (close its context)."""
    from services.tiled.applier import connect

    return connect(settings.tiled_url, settings.resolved_api_key())


def add_separator_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--separator first|last``: which end of the z axis is the separator side."""
    parser.add_argument(
        "--separator",
        choices=("first", "last"),
        default="first",
        help="which end of z is the separator side (depths count from it): the first slice "
        "(z = 0, default) or the last",
    )


def separator_attrs(separator: str, depth: int) -> dict[str, Any]:
    """Attributes stating the orientation: ``z_convention`` and ``separator_slice``."""
    if separator == "first":
        return {"z_convention": "z = 0 is the separator side", "separator_slice": 0}
    return {
        "z_convention": f"z = {depth - 1} (the last slice) is the separator side",
        "separator_slice": depth - 1,
    }
