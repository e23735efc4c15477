"""Chunked volumes the slab tasks read and write: HDF5 datasets (inputs) and Zarr arrays.

Tasks in worker processes open a store by its :class:`VolumeRef` (a path, and a dataset for
HDF5), read the slices they need and write their core slices to Zarr arrays chunked by slab
along z, so tasks never write the same chunk and need no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VolumeRef:
    """A volume in a file: ``dataset`` of an HDF5 file, or a Zarr array (dataset None)."""

    path: str
    dataset: str | None = None


@contextmanager
def open_volume(ref: VolumeRef) -> Iterator[Any]:
    """The array of ``ref``, read-only (h5py dataset or zarr array; slicing reads)."""
    if ref.dataset is not None:
        import h5py

        with h5py.File(ref.path, "r") as h5:
            yield h5[ref.dataset]
        return
    import zarr

    yield zarr.open_array(ref.path, mode="r")


class StoredSlices:
    """Slices ``lo .. hi - 1`` of a stored volume, read when used: ``numpy.asarray`` reads them
    all, ``[a:b]`` a run of them (relative to ``lo``). A slab task hands these to a pipeline
    that reads each volume for the step that needs it and lets it go afterwards."""

    def __init__(self, ref: VolumeRef, lo: int, hi: int) -> None:
        with open_volume(ref) as array:
            depth, *plane = array.shape
            self.dtype = np.dtype(array.dtype)
        if not 0 <= lo < hi <= depth:
            raise ValueError(f"slices {lo}..{hi - 1} outside a volume of {depth}")
        self.ref, self.lo, self.hi = ref, lo, hi
        self.shape = (hi - lo, *plane)
        self.ndim = len(self.shape)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError(f"only runs of slices can be read, got {key!r}")
        start, stop, step = key.indices(self.hi - self.lo)
        if step != 1:
            raise ValueError(f"only runs of slices can be read, got step {step}")
        with open_volume(self.ref) as array:
            return np.asarray(array[self.lo + start : self.lo + max(start, stop)])


def create_zarr(
    path: Path, shape: tuple[int, ...], dtype: Any, chunk_z: int, *, compress: bool = True
) -> VolumeRef:
    """A new Zarr array (overwriting) chunked by ``chunk_z`` slices along the first axis."""
    import zarr

    chunks = (max(1, chunk_z), *shape[1:])
    zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=chunks,
        dtype=np.dtype(dtype),
        fill_value=0,
        overwrite=True,
        compressors="auto" if compress else None,
    )
    return VolumeRef(str(path))


def write_slices(ref: VolumeRef, start: int, data: np.ndarray) -> None:
    """Write ``data`` to slices ``start .. start + len(data) - 1`` of a Zarr array."""
    import zarr

    array = zarr.open_array(ref.path, mode="r+")
    array[start : start + data.shape[0]] = data


def copy_slices(
    ref: VolumeRef,
    write: Callable[[int, np.ndarray], None],
    *,
    step: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Hand a volume to ``write(start, slices)`` ``step`` slices at a time (e.g. into HDF5)."""
    with open_volume(ref) as array:
        for z0 in range(0, array.shape[0], step):
            block = np.asarray(array[z0 : z0 + step])
            write(z0, block)
            if progress is not None:
                progress(block.shape[0])
