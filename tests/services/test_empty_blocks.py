"""A block of rows without elements (a XANES scan in which no particle was found writes
``particle_com`` rows of shape (0, 1, 2), and tables of zero rows) is not sent to Tiled.

Found by ``benchmarks.chaos``: Tiled answers HTTP 500 to such a write every time, so the spool
retried it 12 times (about 45 s) before rejecting it, and every later write of the analysis
consumer, other runs' included, waited behind it; three such records held them for minutes.
A table append of zero rows was rejected on every frame (60 records set aside in one run).
"""

from __future__ import annotations

import numpy as np

from services.tiled.applier import TiledApplier, connect
from services.tiled.records import ArrayRows, TableRows


def test_an_empty_block_is_not_written_and_holds_nothing_back(tiled_server):
    client = connect(tiled_server.url, tiled_server.api_key, timeout=30)
    applier = TiledApplier(client)
    path = ("analysis", "empty-block-run", "xanes")
    applier(ArrayRows(path, "particle_com", np.zeros((0, 1, 2)), offset=0, axis=1))
    applier(ArrayRows(path, "particle_com", np.zeros((0, 1, 2)), offset=1, axis=1))
    applier(ArrayRows(path, "shift", np.ones((1, 2)), offset=0))
    no_rows: dict[str, list] = {"frame": [], "particle": [], "com_y": []}  # no particle here
    applier(TableRows(path, "particles", no_rows, offset=0))
    node = client["analysis"]["empty-block-run"]["xanes"]
    assert "particle_com" not in node and "particles" not in node
    np.testing.assert_array_equal(node["shift"].read(), np.ones((1, 2)))
    client.context.close()


def test_a_whole_empty_array_is_written_whatever_its_other_axes(tiled_server, tmp_path):
    """No particle in a long scan: ``particle_com`` is (0, 300, 2). Tiled's client picks
    "auto" chunks, which divide by zero for an empty array with a long axis (dask's
    ``normalize_chunks``): the write was rejected with ``ZeroDivisionError`` and the run said
    incomplete (found by ``benchmarks.live_latency --energies 300``)."""
    from services.tiled.records import ArrayFile, ArrayWrite

    client = connect(tiled_server.url, tiled_server.api_key, timeout=30)
    applier = TiledApplier(client)
    path = ("analysis", "empty-array-run", "xanes")
    for shape in [(0, 300, 2), (0, 50, 2), (300, 0), (0,)]:
        key = "com_" + "x".join(map(str, shape))
        applier(ArrayWrite(path, key, np.zeros(shape, dtype=np.float32)))
        file = tmp_path / f"{key}.npy"
        np.save(file, np.zeros(shape, dtype=np.float32))
        applier(ArrayFile(path, key + "_file", str(file)))
    node = client["analysis"]["empty-array-run"]["xanes"]
    for shape in [(0, 300, 2), (0, 50, 2), (300, 0), (0,)]:
        key = "com_" + "x".join(map(str, shape))
        for name in (key, key + "_file"):
            got = node[name].read()
            assert got.shape == shape and got.dtype == np.float32, (name, got.shape)
    client.context.close()
