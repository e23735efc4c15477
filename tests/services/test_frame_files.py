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
