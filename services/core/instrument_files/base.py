"""What every reader returns (:class:`InstrumentScan`), its error, and shared helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.core.h5io import InputFileError

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
