"""Reading the offline CLIs' HDF5 inputs with errors that name the file, dataset and expectation.

Shared by ``beamwatch tomo``, ``beamwatch cracks`` and ``beamwatch particles``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class InputFileError(Exception):
    """An input file is missing, not HDF5, lacks a dataset, or holds one of the wrong shape or
    dtype. The message names the file and the dataset."""


def open_input(path: Path) -> Any:
    """Open ``path`` read-only as HDF5 (an ``h5py.File``; use it as a context manager).

    Raises
    ------
    InputFileError
        If the file does not exist or is not readable HDF5.
    """
    import h5py

    if not path.is_file():
        raise InputFileError(f"input file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path}: not a readable HDF5 file ({exc})") from exc


def read_dataset(
    h5: Any,
    dataset: str,
    filename: Path,
    *,
    ndim: tuple[int, ...],
    layout: str = "",
    integer: bool = False,
) -> np.ndarray:
    """Read ``dataset`` of an open file, checking its dimensionality and dtype.

    Parameters
    ----------
    h5 : h5py.File
        The open input.
    dataset : str
        Path inside the file, e.g. ``/entry/data/data``.
    filename : Path
        For the error messages.
    ndim : tuple of int
        Accepted numbers of dimensions.
    layout : str, optional
        Axis names shown in the error, e.g. ``"(Z, Y, X)"``.
    integer : bool
        Accept only integer dtypes (labels); otherwise integer or float.

    Raises
    ------
    InputFileError
        Missing dataset, wrong dimensionality or dtype.
    """
    import h5py

    obj = h5.get(dataset)
    if obj is None or not isinstance(obj, h5py.Dataset):
        raise InputFileError(f"{filename}: missing dataset {dataset}")
    if obj.ndim not in ndim:
        expected = " or ".join(f"{n}-D" for n in ndim) + (f" {layout}" if layout else "")
        raise InputFileError(f"{filename}: {dataset} must be {expected}, got shape {obj.shape}")
    kind_ok = np.issubdtype(obj.dtype, np.integer) or (
        not integer and np.issubdtype(obj.dtype, np.floating)
    )
    if not kind_ok:
        expected = "an integer" if integer else "an integer or float"
        raise InputFileError(f"{filename}: {dataset} must have {expected} dtype, got {obj.dtype}")
    return np.asarray(obj[...])
