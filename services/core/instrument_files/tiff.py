"""TIFF: a multi-page file, several files, or a folder of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.core.instrument_files.base import (
    InstrumentFileError,
    InstrumentScan,
    _check_frames,
    _check_same_shape,
    _is_dark_name,
    _is_flat_name,
    _length_um,
    _stack,
    energy_from_name,
)


def _tiff_pixel_size(tif: Any) -> float | None:
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    if unit is None:
        return None
    unit = str(unit).replace("\\u00B5", "µ")
    tag = tif.pages[0].tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if num <= 0:
        return None
    return _length_um(den / num, "um" if unit.lower() in ("micron", "microns", "µm") else unit)


def _read_tiff_file(path: Path) -> tuple[np.ndarray, float | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            array = tif.asarray()
            pixel = _tiff_pixel_size(tif)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise InstrumentFileError(f"{path}: not a readable TIFF file ({exc})") from exc
    return _stack(array, f"{path}"), pixel


def read_tiff(paths: Sequence[Path]) -> InstrumentScan:
    """Read a multi-page TIFF, or several TIFF files (a folder) in name order, as one stack.

    Files named with a ``flat``/``white``/``ref``/``bkg`` token are flats, ``dark`` darks.
    Energies come from the file names when every frame file names one (``..._8333.0eV.tif``).
    """
    paths = sorted(Path(p) for p in paths)
    flat_files = [p for p in paths if _is_flat_name(p)]
    dark_files = [p for p in paths if _is_dark_name(p) and p not in flat_files]
    frame_files = [p for p in paths if p not in flat_files and p not in dark_files]
    if not frame_files:
        raise InstrumentFileError("only flat/dark TIFF files given: no frames")
    stacks, pixels, names = [], set(), []
    for p in frame_files:
        stack, pixel = _read_tiff_file(p)
        stacks.append(stack)
        pixels.add(pixel)
        names.extend([p.name] * stack.shape[0])
    shapes = {s.shape[1:] for s in stacks}
    if len(shapes) > 1:
        raise InstrumentFileError(f"TIFF frames differ in size: {sorted(shapes)}")
    frames = _check_frames(np.concatenate(stacks), "TIFF frames")
    flats = np.concatenate([_read_tiff_file(p)[0] for p in flat_files]) if flat_files else None
    darks = np.concatenate([_read_tiff_file(p)[0] for p in dark_files]) if dark_files else None
    _check_same_shape(frames, flats, "flat TIFF")
    _check_same_shape(frames, darks, "dark TIFF")
    named = [energy_from_name(name) for name in names]
    energies = (
        np.array(named, dtype=np.float64)
        if len(frame_files) > 1 and all(e is not None for e in named)
        else None
    )
    pixel = pixels.pop() if len(pixels) == 1 else None
    source = (
        f"tiff: {len(frame_files)} file(s) {frame_files[0].name}"
        + (f" .. {frame_files[-1].name}" if len(frame_files) > 1 else "")
        + f", {frames.shape[0]} frame(s) {frames.shape[1]}x{frames.shape[2]} {frames.dtype}"
        + (f", {len(flat_files)} flat file(s)" if flat_files else "")
        + (f", {len(dark_files)} dark file(s)" if dark_files else "")
    )
    return InstrumentScan(
        frames=frames,
        flats=flats,
        darks=darks,
        energies_eV=energies,
        angles_rad=None,
        pixel_size_um=pixel,
        exposure_s=None,
        source=source,
        format="tiff",
        kind="images",
        files=tuple(str(p) for p in [*frame_files, *flat_files, *dark_files]),
    )
