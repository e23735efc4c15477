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
