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


class _ServerError(Exception):
    """An HTTP answer of a running server, as httpx raises it (``exc.response.status_code``)."""

    def __init__(self, status):
        super().__init__(f"HTTP {status}")
        self.response = type("R", (), {"status_code": status})()


def test_a_write_the_server_never_accepts_is_kept_reported_and_the_rest_goes_on(tmp_path):
    import json

    metrics = Metrics("t", CollectorRegistry())
    applied, reported = [], []

    def apply(record):
        if record["i"] == 1:
            raise _ServerError(500)  # e.g. "Unsupported PyArrow type: null", every time
        applied.append(record["i"])

    spool = Spool(
        tmp_path,
        apply,
        metrics,
        max_backoff=0.01,
        max_server_errors=3,
        is_transient=lambda exc: True,
        on_reject=lambda record, error: reported.append((record["i"], error)),
    )
    spool.start()
    for i in range(4):
        spool.put({"op": "x", "i": i})
    assert spool.wait_empty(10)
    spool.stop()
    assert applied == [0, 2, 3]
    assert reported == [(1, "_ServerError: HTTP 500")]
    (kept,) = (tmp_path / "rejected").glob("*.msgpack")
    error = json.loads(kept.with_name(kept.stem + ".error.json").read_text())
    assert error["op"] == "x" and "HTTP 500" in error["error"]
    assert (
        metrics.registry.get_sample_value(
            "beamwatch_writes_rejected_total", {"service": "t", "op": "x"}
        )
        == 1
    )


def test_an_unreadable_record_is_set_aside_and_the_worker_lives_on(tmp_path):
    applied = []
    (tmp_path / "000000000000.msgpack").write_bytes(b"\xc1 not msgpack")
    spool = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    spool.start()
    spool.put({"i": 1})
    assert spool.wait_empty(10)
    assert spool.is_alive()
    spool.stop()
    assert applied == [{"i": 1}]
    assert [p.name for p in (tmp_path / "rejected").glob("*.msgpack")] == ["000000000000.msgpack"]


def test_an_unwritable_spool_holds_the_writer_back_and_loses_nothing(tmp_path):
    metrics = Metrics("t", CollectorRegistry())
    applied = []
    directory = tmp_path / "spool"
    spool = Spool(directory, applied.append, metrics, max_backoff=0.05)
    spool.start()
    spool.put({"i": 0})
    assert spool.wait_empty(10)
    # The directory becomes unwritable: here a file takes its place (root ignores modes).
    directory.rename(tmp_path / "away")
    directory.write_bytes(b"")
    done = threading.Event()
    writer = threading.Thread(target=lambda: (spool.put({"i": 1}), done.set()))
    writer.start()
    error = ("beamwatch_spool_errors_total", {"service": "t", "where": "write"})
    deadline = __import__("time").monotonic() + 10
    while not metrics.registry.get_sample_value(*error):
        assert __import__("time").monotonic() < deadline, "put never failed"
        done.wait(0.01)
    assert not done.is_set()  # held back, not dropped
    directory.unlink()
    (tmp_path / "away").rename(directory)
    assert done.wait(10)
    writer.join()
    assert spool.wait_empty(10)
    assert spool.is_alive()
    spool.stop()
    assert applied == [{"i": 0}, {"i": 1}]
