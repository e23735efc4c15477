"""Frames of Events written by the raw consumer to its own files, read by Tiled from disk.

Sending every in-Event frame through Tiled's HTTP array API costs the server about its whole
time at beamline rates (``benchmarks.tiled_frame_writes``: about 100 frames/s of 512 x 512 on
a quiet machine). A detector does not do that: it writes a file, and Tiled registers the file
and reads it from disk. The raw consumer does the same with the frames it receives: each
stream's image key gets a Zarr (v2) array under the data dir, one chunk file per frame, and the
array node ``raw/<uid>/<stream>/<key>`` is registered in Tiled as external data whose
advertised shape grows as frames are written (:class:`~services.tiled.records.ExternalFrames`).

Exactly once, through crashes:

* a frame is written at its index (the Event's row in the stream), by writing a temporary file
  and renaming it over the chunk: a reader sees the old or the new file, never a torn one, and
  writing a frame again (the journal replayed after a crash) writes the same bytes;
* the array's metadata declares a capacity (:data:`CAPACITY` frames), written once when the
  array is made; it never changes as frames come, so there is no metadata to tear. Tiled serves
  the advertised shape only (it trims the array to it), and a frame is advertised only after
  it is on disk, so the advertised shape always matches the data.
* the file set never changes (one directory per run, stream and key), so the data source Tiled
  holds stays right whatever a crash left behind: Tiled 0.2.20 adds assets to a data source on
  update and never removes one.

A SIGKILL between writing a temporary file and renaming it leaves the temporary file (never a
torn chunk): :func:`remove_stale_temp_files` removes such files when the raw consumer starts.
A run's files go with the run (:func:`remove_run_frames`, used by ``beamwatch delete``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.core.identifiers import check_uid

logger = logging.getLogger(__name__)

#: Frames the array's metadata declares (Zarr arrays are sparse: chunks not written take no
#: space). Tiled serves only the advertised first frames.
CAPACITY = 2**32
#: Frames per block of the advertised Tiled structure (its ``chunks``; the Zarr chunk is one
#: frame). Keeps the structure that is sent on every update small for long runs.
TILED_BLOCK_FRAMES = 64
#: Dtype kinds written to files (bool, integers, floats); others go through Tiled's API.
FILE_KINDS = frozenset("biuf")
#: Name of the array's directory under the stream's.
SUFFIX = ".zarr"

#: A temporary file of a process that still runs is removed at start-up only when it is older
#: than this (a frame is renamed into place milliseconds after it is written; the process may
#: be another raw consumer sharing the directory, or a new process that got a dead one's pid).
STALE_TEMP_SECONDS = 600.0

_tmp_counter = 0
_tmp_lock = threading.Lock()


def _fill_value(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return "NaN"
    if dtype.kind == "b":
        return False
    return 0


def zarray(frame_shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    """The Zarr v2 metadata of a frame array: one frame per chunk, no compression."""
    return {
        "zarr_format": 2,
        "shape": [CAPACITY, *frame_shape],
        "chunks": [1, *frame_shape],
        "dtype": dtype.str,
        "compressor": None,
        "fill_value": _fill_value(dtype),
        "order": "C",
        "filters": None,
        "dimension_separator": ".",
    }


def tiled_chunks(n_frames: int, frame_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Chunks of the advertised Tiled structure of ``n_frames`` frames."""
    full, rest = divmod(n_frames, TILED_BLOCK_FRAMES)
    axis0 = (TILED_BLOCK_FRAMES,) * full + ((rest,) if rest else ())
    return (axis0 or (0,), *((n,) for n in frame_shape))


def _temp_name(name: str) -> str:
    """The name of the temporary file that becomes ``name``: ``.<name>.<pid>.<n>.tmp``."""
    global _tmp_counter
    with _tmp_lock:
        _tmp_counter += 1
        return f".{name}.{os.getpid()}.{_tmp_counter}.tmp"


def _writer_pid(temp_name: str) -> int | None:
    parts = temp_name.rsplit(".", 3)
    if len(parts) != 4 or parts[3] != "tmp" or not parts[1].isdigit():
        return None
    return int(parts[1])


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temp_files(frames_dir: Path, *, stale_seconds: float = STALE_TEMP_SECONDS) -> int:
    """Remove temporary frame files left by writers that died before renaming them (SIGKILL);
    return how many.

    A file is left alone while the process named in it may still be writing it: this
    process's own, and those of another running process unless older than
    ``stale_seconds``. Chunk files and array metadata are never touched.
    """
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        return 0
    now = time.time()
    own = os.getpid()
    removed = 0
    for path in frames_dir.glob(f"*/*/*{SUFFIX}/.*.tmp"):
        pid = _writer_pid(path.name)
        if pid == own:
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
        if pid is not None and _is_running(pid) and age < stale_seconds:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    if removed:
        logger.warning(
            "removed %d temporary frame files left by a crash in %s", removed, frames_dir
        )
    return removed


def run_frames_dir(frames_dir: Path, run_uid: str) -> Path:
    """The directory of a run's frame arrays (the uid is checked: it names a directory)."""
    return Path(frames_dir) / check_uid(run_uid, "run uid")


def remove_run_frames(frames_dir: Path, run_uid: str) -> bool:
    """Delete a run's frame arrays; False when it has none. A directory that is a symbolic
    link, or that resolves outside ``frames_dir``, is refused (ValueError), not followed."""
    directory = run_frames_dir(frames_dir, run_uid)
    if not directory.exists() and not directory.is_symlink():
        return False
    if directory.is_symlink() or directory.resolve().parent != Path(frames_dir).resolve():
        raise ValueError(f"{directory} is not a directory of {frames_dir}; not removed")
    shutil.rmtree(directory)
    logger.info("removed the frame files of run %s", run_uid)
    return True


def _atomic_write(path: Path, payload: bytes | memoryview) -> None:
    tmp = path.with_name(_temp_name(path.name))
    with open(tmp, "wb") as fh:
        fh.write(payload)
    os.replace(tmp, path)


class FrameFile:
    """One Zarr array of frames of one shape and dtype (one stream's image key of one run)."""

    def __init__(self, directory: Path, frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Open the array in ``directory``, made for frames of ``frame_shape`` and ``dtype``
        if it does not exist yet. An existing array keeps its own shape and dtype (frames on
        disk may be advertised already: they are never reinterpreted)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / ".zarray"
        try:
            existing = json.loads(path.read_bytes())
            frame_shape = tuple(existing["shape"][1:])
            dtype = np.dtype(existing["dtype"])
        except FileNotFoundError:
            _atomic_write(path, json.dumps(zarray(tuple(frame_shape), np.dtype(dtype))).encode())
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.dtype = np.dtype(dtype)
        self._separator_zeros = ".0" * len(self.frame_shape)

    @property
    def uri(self) -> str:
        return self.directory.resolve().as_uri()

    def fits(self, frame: np.ndarray) -> bool:
        return frame.shape == self.frame_shape and frame.dtype == self.dtype

    def write(self, index: int, frame: np.ndarray) -> None:
        """Put ``frame`` at ``index`` (atomically: a reader never sees part of it)."""
        if not self.fits(frame):
            raise ValueError(
                f"frame {frame.shape} {frame.dtype} does not fit the array "
                f"{self.frame_shape} {self.dtype}"
            )
        data = np.ascontiguousarray(frame).data.cast("B")
        _atomic_write(self.directory / f"{index}{self._separator_zeros}", data)


def write_with_retry(
    frames: FrameFile,
    index: int,
    frame: np.ndarray,
    *,
    max_backoff: float = 5.0,
    on_error: Any = None,
) -> None:
    """:meth:`FrameFile.write`, waiting and retrying while the disk refuses (as the spool does:
    the dispatcher is held back, the frame is never dropped)."""
    backoff = 0.05
    while True:
        try:
            frames.write(index, frame)
            return
        except OSError as exc:
            if on_error is not None:
                on_error()
            logger.error("cannot write frame %d in %s (retrying): %s", index, frames.directory, exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
