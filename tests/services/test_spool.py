import threading

import numpy as np
from prometheus_client import CollectorRegistry

from services.core.metrics import Metrics
from services.tiled.spool import PermanentWriteError, Spool


def test_records_are_applied_in_order_with_arrays(tmp_path):
    applied = []
    spool = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    spool.start()
    for i in range(20):
        spool.put({"op": "x", "i": i, "a": np.full(3, i)})
    assert spool.wait_empty(10)
    spool.stop()
    assert [r["i"] for r in applied] == list(range(20))
    assert applied[7]["a"].tolist() == [7, 7, 7]
    assert not list(tmp_path.glob("*.msgpack"))


def test_transient_failures_are_retried_and_counted(tmp_path):
    metrics = Metrics("t", CollectorRegistry())
    attempts = []

    def flaky(record):
        attempts.append(record["i"])
        if len(attempts) < 3:
            raise ConnectionError("tiled down")

    spool = Spool(tmp_path, flaky, metrics, max_backoff=0.05)
    spool.start()
    spool.put({"i": 1})
    spool.put({"i": 2})
    assert spool.wait_empty(10)
    spool.stop()
    assert attempts == [1, 1, 1, 2]
    assert (
        metrics.registry.get_sample_value("beamwatch_tiled_write_retries_total", {"service": "t"})
        == 2
    )


def test_permanent_failure_is_skipped_not_blocking(tmp_path):
    applied = []

    def apply(record):
        if record["i"] == 1:
            raise PermanentWriteError("bad record")
        applied.append(record["i"])

    spool = Spool(tmp_path, apply, Metrics("t", CollectorRegistry()))
    spool.start()
    for i in range(3):
        spool.put({"i": i})
    assert spool.wait_empty(10)
    spool.stop()
    assert applied == [0, 2]


def test_unapplied_records_survive_a_restart(tmp_path):
    blocked = threading.Event()

    def never(record):
        blocked.set()
        raise ConnectionError("down")

    first = Spool(tmp_path, never, Metrics("t", CollectorRegistry()), max_backoff=0.05)
    first.start()
    for i in range(5):
        first.put({"i": i})
    assert blocked.wait(5)
    first.stop(drain_timeout=0.2)
    assert len(list(tmp_path.glob("*.msgpack"))) == 5

    applied = []
    second = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    second.start()
    second.put({"i": 5})
    assert second.wait_empty(10)
    second.stop()
    assert [r["i"] for r in applied] == [0, 1, 2, 3, 4, 5]


def test_queued_appends_are_merged_per_target_in_order():
    from services.tiled.spool import merge_records

    records = []
    for i in range(3):
        records.append(
            {"op": "table_rows", "path": ["a"], "key": "t", "rows": {"x": [i]}, "offset": i}
        )
        records.append(
            {
                "op": "array_rows",
                "path": ["a"],
                "key": "g",
                "array": np.full((1, 2), i),
                "offset": i,
            }
        )
        records.append(
            {
                "op": "array_rows",
                "path": ["a"],
                "key": "p",
                "array": np.full((4, 1, 2), i),
                "offset": i,
                "axis": 1,
            }
        )
    merged = merge_records(records)
    assert [(r["op"], r["key"]) for r in merged] == [
        ("table_rows", "t"),
        ("array_rows", "g"),
        ("array_rows", "p"),
    ]
    assert merged[0]["rows"] == {"x": [0, 1, 2]} and merged[0]["offset"] == 0
    assert merged[1]["array"].shape == (3, 2) and merged[1]["array"][:, 0].tolist() == [0, 1, 2]
    assert merged[2]["array"].shape == (4, 3, 2)
    assert records[0]["rows"] == {"x": [0]}  # inputs untouched


def test_appends_with_a_gap_are_not_merged():
    from services.tiled.spool import merge_records

    records = [
        {"op": "table_rows", "path": ["a"], "key": "t", "rows": {"x": [0]}, "offset": 0},
        {"op": "table_rows", "path": ["a"], "key": "t", "rows": {"x": [5]}, "offset": 5},
    ]
    assert len(merge_records(records)) == 2


def test_spool_merges_a_backlog_but_stops_at_other_ops(tmp_path):
    applied = []
    spool = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    for i in range(5):
        spool.put({"op": "table_rows", "path": ["a"], "key": "t", "rows": {"x": [i]}, "offset": i})
    spool.put({"op": "metadata", "path": ["a"], "metadata": {"status": "complete"}})
    spool.start()  # the backlog is already on disk: one merged append, then the metadata
    assert spool.wait_empty(10)
    spool.stop()
    assert [r["op"] for r in applied] == ["table_rows", "metadata"]
    assert applied[0]["rows"]["x"] == [0, 1, 2, 3, 4]


def test_array_merges_stop_at_the_size_cap():
    import numpy as np

    from services.tiled.spool import MAX_MERGED_ARRAY_BYTES, merge_records

    rows = MAX_MERGED_ARRAY_BYTES // 1000  # slices of 1000 bytes: 3 writes for 2.5x the cap
    n = int(2.5 * rows)
    records = [
        {
            "op": "array_rows",
            "path": ["a"],
            "key": "mask",
            "array": np.full((1, 1000), i % 256, dtype=np.uint8),
            "offset": i,
            "axis": 0,
        }
        for i in range(n)
    ]
    merged = merge_records(records)
    assert [r["array"].shape[0] for r in merged] == [rows, rows, n - 2 * rows]
    assert [r["offset"] for r in merged] == [0, rows, 2 * rows]
    assert all(r["array"].nbytes <= MAX_MERGED_ARRAY_BYTES for r in merged)
