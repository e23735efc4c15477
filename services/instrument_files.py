"""Readers of the files real X-ray microscopes and tomography beamlines write.

One entry point, :func:`read_instrument_files`, takes one file, several files or a folder, tells
the format from the files' content (OLE2, HDF5 and TIFF signatures, then the HDF5 datasets) and
returns an :class:`InstrumentScan`: frames, flats, darks, energies (eV), angles (rad), pixel size
(um), exposures (s) and a description of the source. Formats:

``xradia``
    Zeiss/Xradia ``.xrm`` (one frame), ``.txrm`` (a stack) and ``.txm`` (a reconstructed volume),
    OLE2 files read with ``olefile``. Energy from ``ImageInfo/Energy`` where the instrument
    stored it (> 0), else from the file name (``..._08324.0_eV_...``, ``..._8353_0eV``); angles
    from ``ImageInfo/Angles`` (Xradia stores degrees); pixel size ``ImageInfo/PixelSize`` (um);
    exposure ``ImageInfo/ExpTimes`` (s). Reference (flat) frames are the files with a ``ref``
    token in their name at the same energy (as SSRL and APS name them), or the reference image
    embedded in a file (``ReferenceData/Image``).
``fxi``
    NSLS-II FXI (18-ID) HDF5: ``img_xanes`` + ``X_eng`` (keV) for XANES, ``img_tomo`` +
    ``angle`` (degrees) for tomography, ``img_bkg`` flats and ``img_dark`` darks. FXI's exporter
    stores ``img_xanes`` as float transmission ``(I - dark) / (bkg - dark)`` already; integer
    ``img_xanes`` are taken as raw counts.
``dxchange``
    APS Data Exchange HDF5: ``/exchange/data``, ``data_white``, ``data_dark``, ``theta``
    (degrees per the specification unless its ``units`` attribute says radians), pixel size
    ``/measurement/instrument/detection_system/objective/resolution`` (um).
``nxtomo``
    NeXus NXtomo: ``instrument/detector/data`` with ``image_key`` (0 projection, 1 flat, 2 dark,
    3 invalid), ``sample/rotation_angle`` whose ``units`` attribute is required.
``tiff``
    A multi-page TIFF, several TIFF files or a folder of them (sorted by name). Files with a
    ``flat``/``white``/``ref``/``bkg`` token in their name are flats, ``dark`` darks; energies
    from the file names where every frame file carries one; pixel size from ImageJ metadata.

Nothing is guessed from the values: a unit the file does not state by its format's convention
or an attribute is reported unknown (None), and a missing piece the caller needs raises
:class:`InstrumentFileError` naming it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.h5io import InputFileError

__all__ = [
    "InstrumentFileError",
    "InstrumentScan",
    "detect_format",
    "energy_from_name",
    "expand_inputs",
    "read_instrument_files",
    "read_xradia",
]

logger = logging.getLogger(__name__)

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: Xradia ``DataType`` codes -> numpy dtypes (5: 16-bit unsigned, 10: 32-bit float).
XRADIA_DTYPES: dict[int, np.dtype[Any]] = {5: np.dtype("<u2"), 10: np.dtype("<f4")}
#: Energies closer than this are the same energy (eV) when matching flats to frames.
ENERGY_MATCH_EV = 1.0
#: Reference files taken more than this after/before the nearest one belong to another series.
REFERENCE_SERIES_S = 600.0

#: Data Exchange (APS 2-BM/32-ID, tomoscan): sample-plane pixel size, microns per pixel.
DXCHANGE_RESOLUTION = "measurement/instrument/detection_system/objective/resolution"

_ENERGY_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:[._]\d+)?)_?eV(?![a-zA-Z])")
_FLAT_TOKENS = {"ref", "refs", "reference", "flat", "flats", "white", "bkg"}
_DARK_TOKENS = {"dark", "darks"}


class InstrumentFileError(InputFileError, ValueError):
    """An instrument file is missing, of an unknown format, or lacks what the caller needs.
    The message names the file and what is missing or wrong."""


@dataclass(frozen=True)
class InstrumentScan:
    """Frames of one scan as read from instrument files.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(N, H, W)`` frames in the file's dtype (sample in the beam; slices of a volume for
        ``kind == "volume"``).
    flats, darks : numpy.ndarray or None
        ``(M, H, W)`` / ``(K, H, W)`` flat (sample out) and dark frames as stored.
    energies_eV : numpy.ndarray or None
        ``(N,)`` energy of each frame, None when neither the file nor its name holds one.
    angles_rad : numpy.ndarray or None
        ``(N,)`` rotation angle of each frame, None when not stored.
    pixel_size_um : float or None
        Sample-plane pixel size, None when the file does not state it.
    exposure_s : numpy.ndarray or None
        ``(N,)`` exposure of each frame (s).
    source : str
        What was read: format, files, what came from where.
    format : str
        ``xradia``, ``fxi``, ``dxchange``, ``nxtomo`` or ``tiff``.
    kind : str
        ``projections``, ``xanes``, ``volume`` or ``images`` (the file does not say).
    files : tuple of str
        The files read.
    normalized : bool
        The frames are already ``(I - dark) / (flat - dark)`` (FXI XANES); flats and darks are
        kept for the record only.
    flat_of_frame : tuple of tuple of int, optional
        For every frame, the indices into ``flats`` of its own reference frames (Xradia: the
        flats at its energy); None: every flat applies to every frame.
    flat_exposure_s : numpy.ndarray or None
        ``(M,)`` exposure of each flat (s), to scale a flat to its frame's exposure.
    """

    frames: np.ndarray
    flats: np.ndarray | None
    darks: np.ndarray | None
    energies_eV: np.ndarray | None
    angles_rad: np.ndarray | None
    pixel_size_um: float | None
    exposure_s: np.ndarray | None
    source: str
    format: str
    kind: str
    files: tuple[str, ...]
    normalized: bool = False
    flat_of_frame: tuple[tuple[int, ...], ...] | None = None
    flat_exposure_s: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.frames.shape[0])

    @property
    def per_frame_flats(self) -> bool:
        """Whether frames have flats of their own (Xradia: one set per energy)."""
        return self.flat_of_frame is not None

    def reference(self, index: int) -> np.ndarray | None:
        """Incident counts of frame ``index`` with the sample out: the mean of its flats,
        scaled to the frame's exposure when both exposures are known.

        Parameters
        ----------
        index : int
            Frame index.

        Returns
        -------
        numpy.ndarray or None
            ``(H, W)`` float32, None without flats.
        """
        if self.flats is None:
            return None
        chosen = (
            tuple(range(self.flats.shape[0]))
            if self.flat_of_frame is None
            else self.flat_of_frame[index]
        )
        total = np.zeros(self.frames.shape[1:], dtype=np.float64)
        for j in chosen:
            scale = 1.0
            if self.exposure_s is not None and self.flat_exposure_s is not None:
                scale = float(self.exposure_s[index]) / float(self.flat_exposure_s[j])
            total += self.flats[j].astype(np.float64) * scale
        return (total / len(chosen)).astype(np.float32)

    def transmission(self, index: int, *, floor: float = 1.0) -> np.ndarray:
        """Frame ``index`` as transmission ``(I - dark) / (I0 - dark)``, float32.

        ``I0`` is :meth:`reference`; counts below ``floor`` after the dark is subtracted are
        raised to it (no division by zero or log of a negative).

        Raises
        ------
        InstrumentFileError
            If the frames are not normalised and there is no flat.
        """
        if self.normalized:
            return np.asarray(self.frames[index], dtype=np.float32)
        reference = self.reference(index)
        if reference is None:
            raise InstrumentFileError(
                f"{self.files[0]}: no flat (reference) frames, so transmission is unknown"
            )
        dark = (
            None
            if self.darks is None
            else self.darks.astype(np.float32).mean(axis=0, dtype=np.float64)
        )
        frame = self.frames[index].astype(np.float32)
        if dark is not None:
            frame = frame - dark
            reference = reference - dark
        return (np.maximum(frame, floor) / np.maximum(reference, floor)).astype(np.float32)


# ---------------------------------------------------------------------------------- inputs
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
    if _nxtomo_entry(h5) is not None:
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


# ---------------------------------------------------------------------------------- helpers
def energy_from_name(name: str) -> float | None:
    """Energy (eV) written in a file name: ``..._08324.0_eV_...`` or ``..._8353_0eV``
    (underscore as the decimal point); None without one.

    Examples
    --------
    >>> energy_from_name("rep01_20161456_ssrl-test-data_08324.0_eV_001of003.xrm")
    8324.0
    >>> energy_from_name("fov03_xanessoc02_8250_0eV.xrm")
    8250.0
    """
    matches = _ENERGY_IN_NAME.findall(Path(name).stem)
    if not matches:
        return None
    return float(matches[-1].replace("_", "."))


def _name_tokens(path: Path) -> set[str]:
    return {t for t in re.split(r"[_\-.\s]+", path.stem.lower()) if t}


def _is_flat_name(path: Path) -> bool:
    return bool(_name_tokens(path) & _FLAT_TOKENS)


def _is_dark_name(path: Path) -> bool:
    return bool(_name_tokens(path) & _DARK_TOKENS)


def _length_um(value: float, units: str | None) -> float | None:
    """``value`` in um from a unit name; None for an unknown unit."""
    factors = {
        "m": 1e6,
        "meter": 1e6,
        "metre": 1e6,
        "mm": 1e3,
        "um": 1.0,
        "µm": 1.0,
        "micron": 1.0,
        "microns": 1.0,
        "micrometer": 1.0,
        "nm": 1e-3,
        "nanometer": 1e-3,
    }
    if units is None:
        return None
    factor = factors.get(units.strip().lower())
    return None if factor is None or not np.isfinite(value) or value <= 0 else value * factor


def _angles_rad(values: np.ndarray, units: str, where: str) -> np.ndarray:
    unit = units.strip().lower()
    if unit in ("deg", "degree", "degrees"):
        return np.deg2rad(np.asarray(values, dtype=np.float64))
    if unit in ("rad", "radian", "radians"):
        return np.asarray(values, dtype=np.float64)
    raise InstrumentFileError(f"{where}: angle units {units!r} are neither degrees nor radians")


def _energy_ev(values: np.ndarray, units: str, where: str) -> np.ndarray:
    unit = units.strip().lower()
    factor = {"ev": 1.0, "kev": 1e3}.get(unit)
    if factor is None:
        raise InstrumentFileError(f"{where}: energy units {units!r} are neither eV nor keV")
    return np.asarray(values, dtype=np.float64).reshape(-1) * factor


def _attr_text(obj: Any, name: str) -> str | None:
    value = obj.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else None
        if isinstance(value, bytes):
            return value.decode(errors="replace")
    return None if value is None else str(value)


def _stack(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise InstrumentFileError(f"{what} must be (N, H, W) or (H, W), got shape {array.shape}")
    return array


def _check_frames(frames: np.ndarray, where: str) -> np.ndarray:
    frames = _stack(frames, where)
    if frames.shape[0] == 0:
        raise InstrumentFileError(f"{where}: no frames")
    if not (np.issubdtype(frames.dtype, np.integer) or np.issubdtype(frames.dtype, np.floating)):
        raise InstrumentFileError(f"{where}: dtype {frames.dtype} is not integer or float")
    return frames


def _check_same_shape(frames: np.ndarray, other: np.ndarray | None, what: str) -> None:
    if other is not None and other.shape[1:] != frames.shape[1:]:
        raise InstrumentFileError(
            f"{what} frames are {other.shape[1:]}, the data frames {frames.shape[1:]}"
        )


# ---------------------------------------------------------------------------------- Xradia
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
        metadata={"references_used": used},
    )


# ---------------------------------------------------------------------------------- HDF5
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


def _nxtomo_entry(h5: Any) -> Any:
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
        entry = _nxtomo_entry(h5)
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


# ---------------------------------------------------------------------------------- TIFF
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
