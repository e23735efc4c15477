"""Reference spectra for XANES linear-combination fitting: two-column text files and inline
``[[energy eV, absorbance], ...]`` arrays, checked the same way wherever they come from.

``beamwatch xanes align --reference NAME=FILE`` reads files with :func:`read_reference_file`;
the live analysis reads a start document's ``lcf_references`` (file names under the data dir,
or inline arrays) with the same checks (:func:`reference_from_rows`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MIN_ROWS",
    "ReferenceSpectrumError",
    "read_reference_file",
    "reference_from_rows",
]

#: Fewest rows a reference spectrum may have.
MIN_ROWS = 5
#: Most rows an inline reference (in a start document) may have.
MAX_INLINE_ROWS = 20000

_SEPARATORS = re.compile(r"[,;\s]+")


class ReferenceSpectrumError(ValueError):
    """A reference spectrum that cannot be used (the message says why and where)."""


def _checked(rows: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if rows.shape[0] < MIN_ROWS:
        raise ReferenceSpectrumError(
            f"{where} holds {rows.shape[0]} data rows; a spectrum needs at least {MIN_ROWS}"
        )
    if not np.all(np.isfinite(rows)):
        raise ReferenceSpectrumError(f"{where} holds NaN or infinite values")
    order = np.argsort(rows[:, 0], kind="stable")
    energies, absorbance = rows[order, 0], rows[order, 1]
    if np.any(np.diff(energies) <= 0):
        raise ReferenceSpectrumError(f"{where} repeats an energy")
    if energies[0] < 100.0:
        raise ReferenceSpectrumError(
            f"{where}: energies start at {energies[0]:g}; expected eV (convert keV to eV)"
        )
    return energies, absorbance


def reference_from_rows(rows: Any, where: str = "reference") -> tuple[np.ndarray, np.ndarray]:
    """Check an inline spectrum ``[[energy eV, absorbance], ...]``.

    Parameters
    ----------
    rows : sequence of pairs of numbers
        As a start document carries it (JSON lists).
    where : str
        Names the spectrum in error messages.

    Returns
    -------
    tuple of numpy.ndarray
        Energies (eV, ascending, unique) and absorbance (float64).

    Raises
    ------
    ReferenceSpectrumError
        Not a list of number pairs, fewer than 5 or more than 20000 rows, non-finite values,
        repeated energies, or energies below 100 (keV or an index, not eV).
    """
    if not isinstance(rows, list | tuple):
        raise ReferenceSpectrumError(
            f"{where} must be a file name or a list of [energy eV, absorbance] pairs, "
            f"got {type(rows).__name__}"
        )
    if len(rows) > MAX_INLINE_ROWS:
        raise ReferenceSpectrumError(
            f"{where} holds {len(rows)} rows; at most {MAX_INLINE_ROWS} inline"
        )
    for i, row in enumerate(rows):
        if (
            not isinstance(row, list | tuple)
            or len(row) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
        ):
            raise ReferenceSpectrumError(
                f"{where}, row {i}: expected [energy eV, absorbance] (two numbers), "
                f"got {str(row)[:60]!r}"
            )
    data = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    return _checked(data, where)


def read_reference_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a two-column text spectrum (energy in eV, absorbance).

    Parameters
    ----------
    path : pathlib.Path
        Athena/Larch-style export: comma, semicolon, tab or space separated, ``#`` comments,
        at most one header line; further columns are ignored.

    Returns
    -------
    tuple of numpy.ndarray
        Energies (eV, ascending, unique) and absorbance.

    Raises
    ------
    ReferenceSpectrumError
        Unreadable file, fewer than 5 rows, a line that is not two numbers, non-finite values,
        repeated energies, or energies below 100 (keV or an index, not eV).
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReferenceSpectrumError(f"cannot read reference file {path}: {exc}") from exc
    rows: list[tuple[float, float]] = []
    first = _first_content_line(text)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "%", ";")):
            continue
        fields = [f for f in _SEPARATORS.split(stripped) if f]
        try:
            if len(fields) < 2:
                raise ValueError
            rows.append((float(fields[0]), float(fields[1])))
        except ValueError:
            if not rows and number == first:
                continue  # one header line (column names)
            raise ReferenceSpectrumError(
                f"reference file {path}, line {number}: expected two numbers (energy eV, "
                f"absorbance), got {stripped[:60]!r}"
            ) from None
    data = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    return _checked(data, f"reference file {path}")


def _first_content_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "%", ";")):
            return number
    return 0
