"""Zeiss/Xradia ``.xrm``, ``.txrm`` and ``.txm`` files (OLE2, read with ``olefile``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.core.instrument_files.base import (
    _ENERGY_IN_NAME,
    InstrumentFileError,
    InstrumentScan,
    _is_flat_name,
    energy_from_name,
)

logger = logging.getLogger(__name__)

#: Xradia ``DataType`` codes -> numpy dtypes (5: 16-bit unsigned, 10: 32-bit float).
XRADIA_DTYPES: dict[int, np.dtype[Any]] = {5: np.dtype("<u2"), 10: np.dtype("<f4")}
#: Energies closer than this are the same energy (eV) when matching flats to frames.
ENERGY_MATCH_EV = 1.0
#: Reference files taken more than this after/before the nearest one belong to another series.
REFERENCE_SERIES_S = 600.0


@dataclass
class _XradiaFile:
    path: Path
    frames: np.ndarray
    energies: np.ndarray | None
    energy_origin: str
    angles_deg: np.ndarray | None
    exposure_s: np.ndarray | None
    pixel_size_um: float | None
    time: datetime | None
    reference: np.ndarray | None
    reference_exposure_s: float | None


def _ole_values(ole: Any, stream: str, dtype: str, count: int | None = None) -> np.ndarray | None:
    if not ole.exists(stream):
        return None
    raw = ole.openstream(stream).read()
    size = np.dtype(dtype).itemsize
    values = np.frombuffer(raw[: len(raw) // size * size], dtype=dtype)
    return values if count is None else values[:count]


def _ole_date(ole: Any) -> datetime | None:
    if not ole.exists("ImageInfo/Date"):
        return None
    text = ole.openstream("ImageInfo/Date").read()[:17].decode("ascii", errors="replace")
    try:
        return datetime.strptime(text, "%m/%d/%y %H:%M:%S")
    except ValueError:
        return None


def _read_one_xradia(path: Path) -> _XradiaFile:
    import olefile

    try:
        ole = olefile.OleFileIO(str(path))
    except (OSError, olefile.olefile.NotOleFileError) as exc:
        raise InstrumentFileError(f"{path}: not a readable Xradia OLE2 file ({exc})") from exc
    with ole:
        missing = [
            s
            for s in ("ImageInfo/ImageWidth", "ImageInfo/ImageHeight", "ImageInfo/DataType")
            if not ole.exists(s)
        ]
        if missing:
            raise InstrumentFileError(f"{path}: Xradia stream(s) missing: {', '.join(missing)}")
        width = int(_ole_values(ole, "ImageInfo/ImageWidth", "<i4")[0])  # type: ignore[index]
        height = int(_ole_values(ole, "ImageInfo/ImageHeight", "<i4")[0])  # type: ignore[index]
        code = int(_ole_values(ole, "ImageInfo/DataType", "<i4")[0])  # type: ignore[index]
        if code not in XRADIA_DTYPES:
            raise InstrumentFileError(f"{path}: Xradia DataType {code} is not 5 (uint16) or 10")
        dtype = XRADIA_DTYPES[code]
        taken = _ole_values(ole, "ImageInfo/ImagesTaken", "<i4")
        n = int(taken[0]) if taken is not None and taken.size else 1
        frames = np.empty((n, height, width), dtype=dtype)
        for i in range(n):
            # Xradia stores 100 images per storage: ImageData1/Image1..100, ImageData2/Image101..
            stream = f"ImageData{i // 100 + 1}/Image{i + 1}"
            if not ole.exists(stream):
                raise InstrumentFileError(
                    f"{path}: stream {stream} missing (ImageInfo/ImagesTaken says {n} images)"
                )
            raw = ole.openstream(stream).read()
            if len(raw) != height * width * dtype.itemsize:
                raise InstrumentFileError(
                    f"{path}: {stream} has {len(raw)} bytes, expected {height} x {width} "
                    f"{dtype.name}"
                )
            frames[i] = np.frombuffer(raw, dtype=dtype).reshape(height, width)
        stored = _ole_values(ole, "ImageInfo/Energy", "<f4", n)
        if stored is not None and stored.size == n and np.all(stored > 0):
            energies: np.ndarray | None = stored.astype(np.float64)
            origin = "ImageInfo/Energy"
        elif stored is not None and stored.size == n and stored[0] > 0 and not stored[1:].any():
            # a fixed-energy stack (tomography) records its energy once, the rest are zero
            energies = np.full(n, float(stored[0]))
            origin = "ImageInfo/Energy (one for the stack)"
        else:
            named = energy_from_name(path.name)
            energies = None if named is None else np.full(n, named)
            origin = "file name" if named is not None else "none"
        angles = _ole_values(ole, "ImageInfo/Angles", "<f4", n)
        exposure = _ole_values(ole, "ImageInfo/ExpTimes", "<f4", n)
        pixel = _ole_values(ole, "ImageInfo/PixelSize", "<f4", 1)
        reference = None
        reference_exposure = None
        if ole.exists("ReferenceData/Image"):
            ref_code = _ole_values(ole, "ReferenceData/DataType", "<i4", 1)
            ref_dtype = XRADIA_DTYPES.get(int(ref_code[0]) if ref_code is not None else 10)
            raw = ole.openstream("ReferenceData/Image").read()
            if ref_dtype is None or len(raw) != height * width * ref_dtype.itemsize:
                raise InstrumentFileError(
                    f"{path}: ReferenceData/Image has {len(raw)} bytes, not one {height} x "
                    f"{width} frame"
                )
            reference = np.frombuffer(raw, dtype=ref_dtype).reshape(height, width)
            ref_exp = _ole_values(ole, "ReferenceData/ExpTime", "<f4", 1)
            reference_exposure = float(ref_exp[0]) if ref_exp is not None and ref_exp.size else None
        time = _ole_date(ole)
    pixel_um = float(pixel[0]) if pixel is not None and pixel.size and pixel[0] > 0 else None
    return _XradiaFile(
        path=path,
        frames=frames,
        energies=energies,
        energy_origin=origin,
        angles_deg=None if angles is None or angles.size != n else angles.astype(np.float64),
        exposure_s=None
        if exposure is None or exposure.size != n or not np.all(exposure > 0)
        else exposure.astype(np.float64),
        pixel_size_um=pixel_um,
        time=time,
        reference=reference,
        reference_exposure_s=reference_exposure,
    )


def _matching_references(sample: _XradiaFile, refs: list[_XradiaFile], energy: float) -> list[int]:
    """Indices of ``refs`` at ``energy``: the series taken nearest in time to ``sample``."""
    same = [
        j
        for j, r in enumerate(refs)
        if r.energies is not None and abs(float(r.energies[0]) - energy) <= ENERGY_MATCH_EV
    ]
    if len(same) < 2 or sample.time is None or any(refs[j].time is None for j in same):
        return same
    gap = {j: abs((refs[j].time - sample.time).total_seconds()) for j in same}  # type: ignore[operator]
    nearest = min(same, key=gap.__getitem__)
    t0 = refs[nearest].time
    return [
        j
        for j in same
        if abs((refs[j].time - t0).total_seconds()) <= REFERENCE_SERIES_S  # type: ignore[operator]
    ]


def read_xradia(paths: Sequence[Path]) -> InstrumentScan:
    """Read Xradia ``.xrm``/``.txrm``/``.txm`` files as one scan.

    Files whose name has a ``ref`` token are reference (flat) frames; each sample frame gets
    the references at its energy (within 1 eV) of the series taken nearest in time, or else the
    reference embedded in its own file. Sample frames are ordered by energy, then by name.

    Parameters
    ----------
    paths : sequence of Path
        Xradia files.

    Returns
    -------
    InstrumentScan

    Raises
    ------
    InstrumentFileError
        Unreadable files, only reference files, frames of different sizes, or reference files
        given but none at a sample's energy.
    """
    read = [_read_one_xradia(Path(p)) for p in paths]
    refs = [r for r in read if _is_flat_name(r.path)]
    samples = [r for r in read if not _is_flat_name(r.path)]
    if not samples:
        raise InstrumentFileError(
            "only reference (flat) files given: " + ", ".join(r.path.name for r in refs)
        )
    shapes = {r.frames.shape[1:] for r in read}
    if len(shapes) > 1:
        listing = ", ".join(f"{r.path.name}: {r.frames.shape[1:]}" for r in read)
        raise InstrumentFileError(f"Xradia frames differ in size: {listing}")
    for r in refs:
        if r.energies is None:
            raise InstrumentFileError(
                f"{r.path}: reference file without an energy (neither ImageInfo/Energy nor an "
                "energy in the file name), so it cannot be matched to frames"
            )
    samples.sort(
        key=lambda r: (float(r.energies[0]) if r.energies is not None else 0.0, r.path.name)
    )
    frames = np.concatenate([s.frames for s in samples])
    n = frames.shape[0]
    energies = (
        np.concatenate([s.energies for s in samples])  # type: ignore[misc]
        if all(s.energies is not None for s in samples)
        else None
    )
    angles = (
        np.deg2rad(np.concatenate([s.angles_deg for s in samples]))  # type: ignore[misc]
        if all(s.angles_deg is not None for s in samples)
        else None
    )
    exposure = (
        np.concatenate([s.exposure_s for s in samples])  # type: ignore[misc]
        if all(s.exposure_s is not None for s in samples)
        else None
    )
    pixels = {s.pixel_size_um for s in samples}
    pixel = pixels.pop() if len(pixels) == 1 else None
    if len(pixels) > 0:
        logger.warning("Xradia pixel sizes differ between files: %s; taken as unknown", pixels)
        pixel = None

    flats: list[np.ndarray] = []
    flat_exposure: list[float | None] = []
    flat_of_frame: list[tuple[int, ...]] = []
    used: dict[str, list[str]] = {}
    ref_index: dict[int, int] = {}
    embedded_index: dict[int, int] = {}
    for k, sample in enumerate(samples):
        for i in range(sample.frames.shape[0]):
            chosen: tuple[int, ...] = ()
            if refs and sample.energies is not None:
                energy = float(sample.energies[i])
                matches = _matching_references(sample, refs, energy)
                if not matches:
                    have = sorted({round(float(r.energies[0]), 1) for r in refs})  # type: ignore[index]
                    raise InstrumentFileError(
                        f"{sample.path}: no reference (flat) file at {energy:.1f} eV; reference "
                        f"files are at {have} eV"
                    )
                for j in matches:
                    if j not in ref_index:
                        ref_index[j] = len(flats)
                        flats.append(refs[j].frames.mean(axis=0))
                        exp = refs[j].exposure_s
                        flat_exposure.append(None if exp is None else float(exp.mean()))
                chosen = tuple(ref_index[j] for j in matches)
                used[sample.path.name] = [refs[j].path.name for j in matches]
            elif sample.reference is not None:
                if k not in embedded_index:
                    embedded_index[k] = len(flats)
                    flats.append(sample.reference)
                    flat_exposure.append(sample.reference_exposure_s)
                chosen = (embedded_index[k],)
                used[sample.path.name] = ["embedded ReferenceData/Image"]
            flat_of_frame.append(chosen)
    has_flats = bool(flats)
    if has_flats and any(not c for c in flat_of_frame):
        bare = [s.path.name for s in samples if s.path.name not in used]
        raise InstrumentFileError(f"no reference (flat) frames for {', '.join(bare)}")
    exposures_known = exposure is not None and all(e is not None for e in flat_exposure)
    if has_flats and not exposures_known:
        logger.warning("Xradia exposure times missing: flats are not scaled to the frames'")
    suffixes = {s.path.suffix.lower() for s in samples}
    if suffixes == {".txm"}:
        kind = "volume"
    elif (
        angles is not None
        and n > 1
        and np.ptp(angles) > 0
        and (energies is None or np.ptp(energies) <= ENERGY_MATCH_EV)
    ):
        kind = "projections"
    else:
        kind = "xanes" if energies is not None else "images"
    series = _series_of(samples)
    if len(series) > 1:
        listing = "; ".join(f"{key}: {', '.join(names)}" for key, names in series.items())
        logger.warning(
            "the Xradia files come from %d series (their names differ beyond the energy and "
            "the repeat counter): %s. They are read as ONE scan; give the files of one series "
            "to read it alone (an operando series of scans: `xanes trajectory`)",
            len(series),
            listing,
        )
    origins = sorted({s.energy_origin for s in samples})
    source = (
        f"xradia: {len(samples)} file(s) {samples[0].path.name}"
        + (f" .. {samples[-1].path.name}" if len(samples) > 1 else "")
        + f", {n} frame(s) {frames.shape[1]}x{frames.shape[2]} {frames.dtype}; energy from "
        + " + ".join(origins)
        + (f"; {len(refs)} reference file(s)" if refs else "")
        + ("; embedded reference" if not refs and has_flats else "")
    )
    return InstrumentScan(
        frames=frames,
        flats=np.stack(flats) if has_flats else None,
        darks=None,
        energies_eV=energies,
        angles_rad=angles,
        pixel_size_um=pixel,
        exposure_s=exposure if exposures_known or not has_flats else None,
        source=source,
        format="xradia",
        kind=kind,
        files=tuple(str(s.path) for s in samples) + tuple(str(r.path) for r in refs),
        flat_of_frame=tuple(flat_of_frame) if has_flats else None,
        flat_exposure_s=np.array(flat_exposure, dtype=np.float64) if exposures_known else None,
        metadata={
            "references_used": used,
            "start_time": _start_time(samples),
            "series": sorted(series),
        },
    )


#: a repeat counter in a file name: ``001of003``
_REPEAT_IN_NAME = re.compile(r"\d+of\d+", re.IGNORECASE)


def series_key(path: Path) -> str:
    """The name of the series a sample file belongs to: its name without the energy and the
    repeat counter (``fov03_xanessoc01_8353_0eV.xrm`` -> ``fov03_xanessoc01``;
    ``rep01_2016_ssrl-test-data_08324.0_eV_001of003.xrm`` -> ``rep01_2016_ssrl-test-data``)."""
    stem = _ENERGY_IN_NAME.sub("", path.stem)
    stem = _REPEAT_IN_NAME.sub("", stem)
    return re.sub(r"[_\-.\s]+", "_", stem).strip("_")


def _series_of(samples: list[_XradiaFile]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for sample in samples:
        groups.setdefault(series_key(sample.path), []).append(sample.path.name)
    return groups


def _start_time(samples: list[_XradiaFile]) -> str | None:
    """ISO 8601 time of the earliest sample frame (``ImageInfo/Date``), None if not stored."""
    times = [s.time for s in samples if s.time is not None]
    return min(times).isoformat() if times else None
