"""The raw consumer's own frame arrays (``services.tiled.frame_files``), without Tiled."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from services.tiled import records
from services.tiled.frame_files import CAPACITY, FrameFile, tiled_chunks
from services.tiled.records import ExternalFrames
from services.tiled.spool import merge_records


def test_frames_written_at_their_index_read_back_with_zarr_and_rewritten_identically(tmp_path):
    frames = FrameFile(tmp_path / "img.zarr", (4, 5), np.dtype("<u2"))
    data = np.arange(3 * 4 * 5, dtype="<u2").reshape(3, 4, 5)
    for i in (2, 0, 1, 2):  # out of order, and frame 2 twice (a replay)
        frames.write(i, data[i])
    array = zarr.open(str(tmp_path / "img.zarr"), mode="r")
    assert array.shape == (CAPACITY, 4, 5)
    np.testing.assert_array_equal(array[:3], data)
    assert sorted(p.name for p in (tmp_path / "img.zarr").iterdir()) == [
        ".zarray",
        "0.0.0",
        "1.0.0",
        "2.0.0",
    ]  # no temporary file left behind


def test_an_existing_array_keeps_its_shape_and_dtype(tmp_path):
    FrameFile(tmp_path / "img.zarr", (4, 5), np.dtype("<u2")).write(0, np.ones((4, 5), "<u2"))
    again = FrameFile(tmp_path / "img.zarr", (2, 2), np.dtype("<f8"))  # e.g. a placeholder first
    assert again.frame_shape == (4, 5) and again.dtype == np.dtype("<u2")
    with pytest.raises(ValueError, match="does not fit"):
        again.write(1, np.ones((2, 2)))
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "img.zarr"), mode="r")[0], 1)


def test_tiled_chunks_cover_the_advertised_frames():
    assert tiled_chunks(0, (4, 5)) == ((0,), (4,), (5,))
    assert tiled_chunks(130, (4, 5)) == ((64, 64, 2), (4,), (5,))


def test_queued_growths_of_one_array_merge_into_the_largest_and_survive_the_wire():
    def grow(n, key="img"):
        return ExternalFrames(("raw", "r1", "primary"), key, "file:///x", n, (4, 5), "<u2")

    merged = merge_records([grow(2), grow(5), grow(3), grow(1, "other")])
    assert [(m.key, m.frames) for m in merged] == [("img", 5), ("other", 1)]
    assert records.loads(records.dumps(grow(7))) == grow(7)


_KILLED_MID_WRITE = """
import os, signal, sys
import numpy as np
from services.tiled import frame_files

def killed(src, dst):  # the temporary file is written; SIGKILL before it is renamed
    os.kill(os.getpid(), signal.SIGKILL)

frames = frame_files.FrameFile(sys.argv[1], (4, 5), np.dtype("<u2"))
frames.write(0, np.zeros((4, 5), "<u2"))
frame_files.os.replace = killed
frames.write(1, np.ones((4, 5), "<u2"))
"""


def test_temporary_files_of_a_writer_killed_mid_write_are_removed_at_start_up(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from services.tiled.frame_files import STALE_TEMP_SECONDS, remove_stale_temp_files

    frames_dir = tmp_path / "raw_frames"
    array = frames_dir / "run-1" / "primary" / "img.zarr"
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_WRITE, str(array)],
        env={**os.environ, "PYTHONPATH": repo},
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    (left,) = array.glob(".*.tmp")  # what the SIGKILL left: a whole frame, never renamed
    assert left.name.startswith(".1.0.0.")
    # a frame being written right now by another running process (here: a live child) and
    # one of this process: left alone; the same of a live process but old: stale
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            busy = array / f".2.0.0.{live.pid}.1.tmp"
            old = array / f".3.0.0.{live.pid}.2.tmp"
            own = array / f".4.0.0.{os.getpid()}.1.tmp"
            for path in (busy, old, own):
                path.write_bytes(b"x")
            past = time.time() - STALE_TEMP_SECONDS - 1
            os.utime(old, (past, past))
            assert remove_stale_temp_files(frames_dir) == 2
        finally:
            live.kill()
    assert not left.exists() and not old.exists()
    assert busy.exists() and own.exists()
    assert sorted(p.name for p in array.iterdir() if not p.name.endswith(".tmp")) == [
        ".zarray",
        "0.0.0",
    ]  # the frames on disk and the array's metadata are untouched


def test_the_raw_consumer_removes_them_when_it_starts(tmp_path):
    import os

    from benchmarks.ports import free_port
    from services.core.settings import load_settings
    from services.runtime.consumer import Consumer

    settings = load_settings(
        data_dir=str(tmp_path),
        tiled={"url": "http://127.0.0.1:9", "api_key": "k", "readable_roots": [str(tmp_path)]},
        bus={"mode": "zmq", "out_address": f"tcp://127.0.0.1:{free_port()}"},
    )
    array = settings.raw_frames_dir / "run-1" / "primary" / "img.zarr"
    array.mkdir(parents=True)
    dead = array / ".0.0.0.999999999.1.tmp"  # no such pid
    dead.write_bytes(b"x")
    assert not os.path.exists("/proc/999999999")
    consumer = Consumer("raw", settings)
    try:
        assert not dead.exists()
    finally:
        consumer.stop(drain_timeout=0)
