"""Inputs: files and folders, the format of each file from its content, and the dispatch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.core.instrument_files.base import InstrumentFileError, InstrumentScan
from services.core.instrument_files.hdf5 import nxtomo_entry, read_dxchange, read_fxi, read_nxtomo
from services.core.instrument_files.tiff import read_tiff
from services.core.instrument_files.xradia import read_xradia

logger = logging.getLogger(__name__)

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def expand_inputs(paths: Sequence[Path | str]) -> list[Path]:
    """The instrument files named by ``paths``: files as given, folders by their readable
    data files (OLE2, HDF5 or TIFF by content), sorted by name.

    Raises
    ------
    InstrumentFileError
        A path does not exist, or a folder holds no data file.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            data = [p for p in found if _signature(p) is not None]
            skipped = [p.name for p in found if p not in data]
            if skipped:
                logger.info("%s: not instrument files, skipped: %s", path, ", ".join(skipped))
            if not data:
                raise InstrumentFileError(
                    f"folder {path} holds no Xradia (.xrm/.txrm/.txm), HDF5 or TIFF file"
                )
            files.extend(data)
        elif path.is_file():
            files.append(path)
        else:
            raise InstrumentFileError(f"input not found: {path}")
    return files


def _signature(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if head.startswith(OLE_MAGIC):
        return "ole"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head[:4] in TIFF_MAGICS:
        return "tiff"
    return None


def detect_format(path: Path) -> str:
    """Format of one file from its content: ``xradia``, ``fxi``, ``dxchange``, ``nxtomo``,
    ``beamwatch`` (the offline CLIs' own ``/entry/data/data`` layout) or ``tiff``.

    Raises
    ------
    InstrumentFileError
        Not a file of a known format.
    """
    signature = _signature(path)
    if signature == "ole":
        return "xradia"
    if signature == "tiff":
        return "tiff"
    if signature == "hdf5":
        import h5py

        try:
            with h5py.File(path, "r") as h5:
                return _hdf5_layout(h5, path)
        except OSError as exc:
            raise InstrumentFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    raise InstrumentFileError(
        f"{path}: unknown format (expected an Xradia .xrm/.txrm/.txm OLE2 file, HDF5 in the "
        "FXI, Data Exchange, NXtomo or beamwatch layout, or TIFF)"
    )


def _hdf5_layout(h5: Any, path: Path) -> str:
    if "img_xanes" in h5 or "img_tomo" in h5:
        return "fxi"
    if "exchange/data" in h5:
        return "dxchange"
    if nxtomo_entry(h5) is not None:
        return "nxtomo"
    if "entry/data/data" in h5:
        return "beamwatch"
    raise InstrumentFileError(
        f"{path}: HDF5 of an unknown layout: none of img_xanes/img_tomo (FXI), /exchange/data "
        "(Data Exchange), an NXtomo entry with image_key, or /entry/data/data (beamwatch)"
    )


def read_instrument_files(paths: Sequence[Path | str]) -> InstrumentScan:
    """Read one file, several files or a folder of one instrument format.

    Parameters
    ----------
    paths : sequence of path
        Files and/or folders.

    Returns
    -------
    InstrumentScan

    Raises
    ------
    InstrumentFileError
        Unknown or mixed formats, several HDF5 files, missing datasets or streams.
    """
    files = expand_inputs(paths)
    formats = {f: detect_format(f) for f in files}
    kinds = sorted(set(formats.values()))
    if len(kinds) > 1:
        listing = ", ".join(f"{f.name}: {k}" for f, k in formats.items())
        raise InstrumentFileError(f"inputs mix formats ({listing}); give files of one format")
    kind = kinds[0]
    if kind == "xradia":
        return read_xradia(files)
    if kind == "tiff":
        return read_tiff(files)
    if len(files) > 1:
        raise InstrumentFileError(
            f"give one {kind} HDF5 file, got {len(files)}: " + ", ".join(f.name for f in files)
        )
    if kind == "beamwatch":
        raise InstrumentFileError(
            f"{files[0]}: beamwatch /entry/data/data layout, read it with the command's own reader"
        )
    reader = {"fxi": read_fxi, "dxchange": read_dxchange, "nxtomo": read_nxtomo}[kind]
    return reader(files[0])
