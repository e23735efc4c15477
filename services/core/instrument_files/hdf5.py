"""HDF5 layouts: NSLS-II FXI, APS Data Exchange and NeXus NXtomo."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from services.core.instrument_files.base import (
    InstrumentFileError,
    InstrumentScan,
    _angles_rad,
    _attr_text,
    _check_frames,
    _check_same_shape,
    _energy_ev,
    _length_um,
    _stack,
)

logger = logging.getLogger(__name__)

#: Data Exchange (APS 2-BM/32-ID, tomoscan): sample-plane pixel size, microns per pixel.
DXCHANGE_RESOLUTION = "measurement/instrument/detection_system/objective/resolution"


def _dataset(h5: Any, name: str, path: Path, what: str) -> Any:
    import h5py

    obj = h5.get(name)
    if obj is None or not isinstance(obj, h5py.Dataset):
        raise InstrumentFileError(f"{path}: dataset {name} ({what}) is missing")
    return obj


def _optional_stack(h5: Any, name: str) -> np.ndarray | None:
    obj = h5.get(name)
    if obj is None or getattr(obj, "ndim", 0) not in (2, 3) or obj.size == 0:
        return None
    return _stack(obj[()], name)


def _open_h5(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InstrumentFileError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _fxi_pixel_size(h5: Any) -> float | None:
    obj = h5.get("Pixel Size")
    if obj is None:
        return None
    value = obj[()]
    text = value.decode() if isinstance(value, bytes) else str(value)
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Zµ]+)\s*", text)
    if not match:
        return None
    try:
        return _length_um(float(match.group(1)), match.group(2))
    except ValueError:
        return None


def _fxi_energies(h5: Any, path: Path, n: int) -> np.ndarray:
    obj = _dataset(h5, "X_eng", path, "energies, keV")
    units = _attr_text(obj, "units") or "keV"  # FXI writes the XEng motor position, in keV
    energies = _energy_ev(obj[()], units, f"{path}: X_eng")
    if energies.size == 1 and n > 1:
        energies = np.full(n, float(energies[0]))
    if energies.size != n:
        raise InstrumentFileError(f"{path}: X_eng has {energies.size} values for {n} frames")
    if units.lower() == "kev" and not np.all((energies > 1e3) & (energies < 1e5)):
        raise InstrumentFileError(
            f"{path}: X_eng values {energies.min() / 1e3:g}..{energies.max() / 1e3:g} are not "
            "keV of an X-ray microscope (1-100 keV); give X_eng a units attribute"
        )
    return energies


def read_fxi(path: Path) -> InstrumentScan:
    """Read an NSLS-II FXI HDF5 file (``img_xanes`` or ``img_tomo``).

    Raises
    ------
    InstrumentFileError
        A dataset the scan needs (``X_eng`` for XANES, ``angle`` for tomography) is missing or
        inconsistent.
    """
    with _open_h5(path) as h5:
        is_xanes = "img_xanes" in h5
        name = "img_xanes" if is_xanes else "img_tomo"
        frames = _check_frames(_dataset(h5, name, path, "frames")[()], f"{path}: {name}")
        n = frames.shape[0]
        flats = _optional_stack(h5, "img_bkg")
        darks = _optional_stack(h5, "img_dark")
        _check_same_shape(frames, flats, f"{path}: img_bkg")
        _check_same_shape(frames, darks, f"{path}: img_dark")
        pixel = _fxi_pixel_size(h5)
        if is_xanes:
            energies: np.ndarray | None = _fxi_energies(h5, path, n)
            angles = None
            normalized = bool(np.issubdtype(frames.dtype, np.floating))
            if flats is not None and np.all(flats == 1):
                # FXI's "img only" export: frames minus dark, no flat taken
                normalized, flats, darks = False, None, None
        else:
            energies = _fxi_energies(h5, path, n) if "X_eng" in h5 else None
            angle = _dataset(h5, "angle", path, "rotation angles, degrees")
            units = _attr_text(angle, "units") or "degrees"  # FXI writes degrees
            angles = _angles_rad(angle[()], units, f"{path}: angle").reshape(-1)
            if angles.size != n:
                raise InstrumentFileError(f"{path}: angle has {angles.size} values for {n} frames")
            normalized = False
    flat_of_frame = None
    if is_xanes and not normalized and flats is not None and flats.shape[0] == n > 1:
        flat_of_frame = tuple((i,) for i in range(n))  # one flat per energy
    source = (
        f"fxi {'xanes' if is_xanes else 'tomo'}: {path.name}, {n} frame(s) "
        f"{frames.shape[1]}x{frames.shape[2]} {frames.dtype}"
        + (", frames already flat/dark-normalised" if normalized else "")
    )
    return InstrumentScan(
        frames=frames,
        flats=flats,
        darks=darks,
        energies_eV=energies,
        angles_rad=angles,
        pixel_size_um=pixel,
        exposure_s=None,
        source=source,
        format="fxi",
        kind="xanes" if is_xanes else "projections",
        files=(str(path),),
        normalized=normalized,
        flat_of_frame=flat_of_frame,
    )


def _scalar_with_units(h5: Any, name: str) -> tuple[float, str | None] | None:
    obj = h5.get(name)
    if obj is None or getattr(obj, "size", 0) == 0:
        return None
    try:
        value = float(np.asarray(obj[()], dtype=np.float64).ravel()[0])
    except (TypeError, ValueError):
        return None
    return value, _attr_text(obj, "units")


def read_dxchange(path: Path) -> InstrumentScan:
    """Read an APS Data Exchange HDF5 file (``/exchange/data`` and friends).

    ``theta`` is in degrees as the Data Exchange specification states, unless its ``units``
    attribute says radians.
    """
    with _open_h5(path) as h5:
        frames = _check_frames(
            _dataset(h5, "exchange/data", path, "projections")[()], f"{path}: /exchange/data"
        )
        n = frames.shape[0]
        flats = _optional_stack(h5, "exchange/data_white")
        darks = _optional_stack(h5, "exchange/data_dark")
        _check_same_shape(frames, flats, f"{path}: /exchange/data_white")
        _check_same_shape(frames, darks, f"{path}: /exchange/data_dark")
        angles = None
        if "exchange/theta" in h5:
            theta = h5["exchange/theta"]
            units = _attr_text(theta, "units") or "degrees"
            angles = _angles_rad(theta[()], units, f"{path}: /exchange/theta").reshape(-1)
            if angles.size != n:
                raise InstrumentFileError(
                    f"{path}: /exchange/theta has {angles.size} angles for {n} projections"
                )
        pixel = None
        found = _scalar_with_units(h5, DXCHANGE_RESOLUTION)
        if found is not None:
            pixel = _length_um(found[0], found[1] or "um")  # tomoscan/2-BM: microns per pixel
        energies = None
        found = _scalar_with_units(h5, "measurement/instrument/monochromator/energy")
        if found is not None and found[1]:
            energies = np.full(n, _energy_ev(np.array([found[0]]), found[1], str(path))[0])
        exposure = None
        found = _scalar_with_units(h5, "measurement/instrument/detector/exposure_time")
        if found is not None and found[0] > 0:
            exposure = np.full(n, found[0])
    source = (
        f"dxchange: {path.name}, {n} projection(s) {frames.shape[1]}x{frames.shape[2]} "
        f"{frames.dtype}, {0 if flats is None else flats.shape[0]} flat(s), "
        f"{0 if darks is None else darks.shape[0]} dark(s)"
    )
    return InstrumentScan(
        frames=frames,
        flats=flats,
        darks=darks,
        energies_eV=energies,
        angles_rad=angles,
        pixel_size_um=pixel,
        exposure_s=exposure,
        source=source,
        format="dxchange",
        kind="projections" if angles is not None else "images",
        files=(str(path),),
    )


def nxtomo_entry(h5: Any) -> Any:
    import h5py

    for obj in h5.values():
        if not isinstance(obj, h5py.Group):
            continue
        definition = obj.get("definition")
        text = None
        if isinstance(definition, h5py.Dataset):
            value = definition[()]
            text = value.decode() if isinstance(value, bytes) else str(value)
        if text == "NXtomo" or "instrument/detector/image_key" in obj:
            return obj
    return None


def read_nxtomo(path: Path) -> InstrumentScan:
    """Read a NeXus NXtomo file: frames split by ``image_key``, ``rotation_angle`` by its units.

    Raises
    ------
    InstrumentFileError
        No NXtomo entry, no ``image_key``, or a ``rotation_angle`` without ``units``.
    """
    with _open_h5(path) as h5:
        entry = nxtomo_entry(h5)
        if entry is None:
            raise InstrumentFileError(f"{path}: no NXtomo entry (definition = NXtomo)")
        base = entry.name
        data = _dataset(h5, f"{base}/instrument/detector/data", path, "frames")
        keys = np.asarray(
            _dataset(h5, f"{base}/instrument/detector/image_key", path, "image_key")[()]
        ).reshape(-1)
        if keys.size != data.shape[0]:
            raise InstrumentFileError(
                f"{path}: image_key has {keys.size} values for {data.shape[0]} frames"
            )
        everything = _check_frames(data[()], f"{path}: {data.name}")
        angle = _dataset(h5, f"{base}/sample/rotation_angle", path, "rotation angles")
        units = _attr_text(angle, "units")
        if units is None:
            raise InstrumentFileError(
                f"{path}: {angle.name} has no units attribute (NXtomo requires one: degrees or "
                "radians)"
            )
        all_angles = _angles_rad(angle[()], units, f"{path}: {angle.name}").reshape(-1)
        if all_angles.size != keys.size:
            raise InstrumentFileError(
                f"{path}: rotation_angle has {all_angles.size} values for {keys.size} frames"
            )
        pixel = None
        found = _scalar_with_units(h5, f"{base}/sample/x_pixel_size")
        if found is not None:
            pixel = _length_um(found[0], found[1])
        energies = None
        found = _scalar_with_units(h5, f"{base}/instrument/beam/incident_energy")
        if found is not None and found[1]:
            energies = _energy_ev(np.array([found[0]]), found[1], str(path))
    invalid = int(np.sum(keys == 3))
    unknown = sorted(set(np.unique(keys).tolist()) - {0, 1, 2, 3})
    if unknown:
        raise InstrumentFileError(f"{path}: image_key values {unknown} are not 0, 1, 2 or 3")
    projections = keys == 0
    if not projections.any():
        raise InstrumentFileError(f"{path}: no projection (image_key 0)")
    if invalid:
        logger.warning("%s: %d frame(s) marked invalid (image_key 3) left out", path, invalid)
    frames = everything[projections]
    flats = everything[keys == 1] if np.any(keys == 1) else None
    darks = everything[keys == 2] if np.any(keys == 2) else None
    n = frames.shape[0]
    source = (
        f"nxtomo: {path.name}, {n} projection(s) {frames.shape[1]}x{frames.shape[2]} "
        f"{frames.dtype}, {0 if flats is None else flats.shape[0]} flat(s), "
        f"{0 if darks is None else darks.shape[0]} dark(s), {invalid} invalid left out"
    )
    return InstrumentScan(
        frames=frames,
        flats=flats,
        darks=darks,
        energies_eV=None if energies is None else np.full(n, float(energies[0])),
        angles_rad=all_angles[projections],
        pixel_size_um=pixel,
        exposure_s=None,
        source=source,
        format="nxtomo",
        kind="projections",
        files=(str(path),),
        metadata={"invalid_frames": invalid},
    )
