import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.core.metrics import Metrics
from services.tiled.records import ArrayRows, ArrayWrite, Metadata, TableRows
from services.tiled.spool import PermanentWriteError, Spool


def note(i, **extra):
    """A small record carrying ``i`` (the spool does not look inside records)."""
    return Metadata(("a",), {"i": i, **extra})


def numbers(applied):
    return [r.metadata["i"] for r in applied]


def test_records_are_applied_in_order_with_arrays(tmp_path):
    applied = []
    spool = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    spool.start()
    for i in range(20):
        spool.put(ArrayWrite(("a",), f"k{i}", np.full(3, i)))
    assert spool.wait_empty(10)
    spool.stop()
    assert [r.key for r in applied] == [f"k{i}" for i in range(20)]
    assert applied[7].array.tolist() == [7, 7, 7]
    assert not list(tmp_path.glob("*.msgpack"))


def test_transient_failures_are_retried_and_counted(tmp_path):
    metrics = Metrics("t", CollectorRegistry())
    attempts = []

    def flaky(record):
        attempts.append(record.metadata["i"])
        if len(attempts) < 3:
            raise ConnectionError("tiled down")

    spool = Spool(tmp_path, flaky, metrics, max_backoff=0.05)
    spool.start()
    spool.put(note(1))
    spool.put(note(2))
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
        if record.metadata["i"] == 1:
            raise PermanentWriteError("bad record")
        applied.append(record.metadata["i"])

    spool = Spool(tmp_path, apply, Metrics("t", CollectorRegistry()))
    spool.start()
    for i in range(3):
        spool.put(note(i))
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
        first.put(note(i))
    assert blocked.wait(5)
    first.stop(drain_timeout=0.2)
    assert len(list(tmp_path.glob("*.msgpack"))) == 5

    applied = []
    second = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    second.start()
    second.put(note(5))
    assert second.wait_empty(10)
    second.stop()
    assert numbers(applied) == [0, 1, 2, 3, 4, 5]


def test_queued_appends_are_merged_per_target_in_order():
    from services.tiled.spool import merge_records

    records = []
    for i in range(3):
        records.append(TableRows(("a",), "t", {"x": [i]}, offset=i))
        records.append(ArrayRows(("a",), "g", np.full((1, 2), i), offset=i))
        records.append(ArrayRows(("a",), "p", np.full((4, 1, 2), i), offset=i, axis=1))
    merged = merge_records(records)
    assert [(r.op, r.key) for r in merged] == [
        ("table_rows", "t"),
        ("array_rows", "g"),
        ("array_rows", "p"),
    ]
    assert merged[0].rows == {"x": [0, 1, 2]} and merged[0].offset == 0
    assert merged[1].array.shape == (3, 2) and merged[1].array[:, 0].tolist() == [0, 1, 2]
    assert merged[2].array.shape == (4, 3, 2)
    assert records[0].rows == {"x": [0]}  # inputs untouched


def test_appends_with_a_gap_are_not_merged():
    from services.tiled.spool import merge_records

    records = [
        TableRows(("a",), "t", {"x": [0]}, offset=0),
        TableRows(("a",), "t", {"x": [5]}, offset=5),
    ]
    assert len(merge_records(records)) == 2


def test_spool_merges_a_backlog_but_stops_at_other_ops(tmp_path):
    applied = []
    spool = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    for i in range(5):
        spool.put(TableRows(("a",), "t", {"x": [i]}, offset=i))
    spool.put(Metadata(("a",), {"status": "complete"}))
    spool.start()  # the backlog is already on disk: one merged append, then the metadata
    assert spool.wait_empty(10)
    spool.stop()
    assert [r.op for r in applied] == ["table_rows", "metadata"]
    assert applied[0].rows["x"] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("path", "cap_name"),
    [
        (("raw", "u", "primary"), "MAX_MERGED_ARRAY_BYTES"),  # detector frames: large blocks
        (("analysis", "u", "cracks"), "MAX_MERGED_RESULT_BYTES"),  # results a viewer watches grow
    ],
)
def test_array_merges_stop_at_the_size_cap(path, cap_name):
    from services.tiled import spool
    from services.tiled.spool import merge_records

    cap = getattr(spool, cap_name)
    rows = cap // 1000  # slices of 1000 bytes: 3 writes for 2.5x the cap
    n = int(2.5 * rows)
    records = [
        ArrayRows(path, "mask", np.full((1, 1000), i % 256, dtype=np.uint8), offset=i)
        for i in range(n)
    ]
    merged = merge_records(records)
    assert [r.array.shape[0] for r in merged] == [rows, rows, n - 2 * rows]
    assert [r.offset for r in merged] == [0, rows, 2 * rows]
    assert all(r.array.nbytes <= cap for r in merged)


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
        if record.metadata["i"] == 1:
            raise _ServerError(500)  # e.g. "Unsupported PyArrow type: null", every time
        applied.append(record.metadata["i"])

    spool = Spool(
        tmp_path,
        apply,
        metrics,
        max_backoff=0.01,
        max_server_errors=3,
        is_transient=lambda exc: True,
        on_reject=lambda record, error: reported.append((record.metadata["i"], error)),
    )
    spool.start()
    for i in range(4):
        spool.put(note(i))
    assert spool.wait_empty(10)
    spool.stop()
    assert applied == [0, 2, 3]
    assert reported == [(1, "_ServerError: HTTP 500")]
    (kept,) = (tmp_path / "rejected").glob("*.msgpack")
    error = json.loads(kept.with_name(kept.stem + ".error.json").read_text())
    assert error["op"] == "metadata" and "HTTP 500" in error["error"]
    assert (
        metrics.registry.get_sample_value(
            "beamwatch_writes_rejected_total", {"service": "t", "op": "metadata"}
        )
        == 1
    )


def test_an_unreadable_record_is_set_aside_and_the_worker_lives_on(tmp_path):
    applied = []
    (tmp_path / "000000000000.msgpack").write_bytes(b"\xc1 not msgpack")
    spool = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    spool.start()
    spool.put(note(1))
    assert spool.wait_empty(10)
    assert spool.is_alive()
    spool.stop()
    assert applied == [note(1)]
    assert [p.name for p in (tmp_path / "rejected").glob("*.msgpack")] == ["000000000000.msgpack"]


def test_an_unwritable_spool_holds_the_writer_back_and_loses_nothing(tmp_path):
    metrics = Metrics("t", CollectorRegistry())
    applied = []
    directory = tmp_path / "spool"
    spool = Spool(directory, applied.append, metrics, max_backoff=0.05)
    spool.start()
    spool.put(note(0))
    assert spool.wait_empty(10)
    # The directory becomes unwritable: here a file takes its place (root ignores modes).
    directory.rename(tmp_path / "away")
    directory.write_bytes(b"")
    done = threading.Event()
    writer = threading.Thread(target=lambda: (spool.put(note(1)), done.set()))
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
    assert applied == [note(0), note(1)]


def test_records_round_trip_and_records_of_before_the_version_field_are_read(tmp_path, caplog):
    from services.core import serialization
    from services.tiled import records
    from services.tiled.records import Container, RawDoc, RawDocs

    written = [
        RawDoc("start", {"uid": "r1", "time": 1.0}, run="r1", rid="r1/1"),
        Container(("analysis", "r1"), {"source_run_uid": "r1"}),
        note(3),
        Metadata(("raw", "r1"), {"rejected_writes": []}, notice=True),
        ArrayWrite(("analysis", "r1", "x"), "labels", np.arange(6).reshape(2, 3), dims=["y", "x"]),
        ArrayRows(("raw", "r1", "primary"), "img", np.ones((1, 2, 2), "u2"), offset=4, axis=0),
        TableRows(("analysis", "r1", "x"), "frames", {"seq_num": [1, 2]}, offset=7),
        RawDocs(
            "r1",
            (
                RawDoc("event", {"seq_num": 1, "data": {"x": 1.5}}, run="r1", rid="r1/2"),
                RawDoc("datum", {"datum_id": "d/1"}, run="r1", rid="r1/3"),
            ),
        ),
    ]
    for record in written:
        back = records.loads(records.dumps(record))
        assert type(back) is type(record)
        for name, value in vars(record).items():
            np.testing.assert_equal(getattr(back, name), value)
    assert [r.run for r in written] == ["r1", "r1", None, "r1", "r1", "r1", "r1", "r1"]
    # version 0: the plain dicts the spool wrote before (no "v"); raw documents of the offline
    # import had no run
    old = [
        {"op": "raw_doc", "name": "start", "doc": {"uid": "r2"}},
        {"op": "raw_doc", "name": "event", "doc": {"seq_num": 1}, "run": "r2", "rid": "r2/2"},
        {"op": "array_rows", "path": ["raw", "r2", "primary"], "key": "img",
         "array": np.zeros((1, 2)), "offset": 0, "metadata": None},
        {"op": "table_rows", "path": ["analysis", "r2", "frames"], "key": "t", "rows": {"a": [1]}},
    ]  # fmt: skip
    for i, record in enumerate(old):
        (tmp_path / f"{i:012d}.msgpack").write_bytes(serialization.dumps(record))
    applied = []
    spool = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    assert "4 records of the format before run lanes and record versions" in caplog.text
    assert sorted(p.name for p in tmp_path.glob("*.msgpack")) == [
        "000000000000-r2.msgpack",
        "000000000001-r2.msgpack",
        "000000000002-r2.msgpack",
        "000000000003-r2.msgpack",
    ]
    assert spool.pending("r2") == 4
    spool.start()
    assert spool.wait_empty(10)
    spool.stop()
    # the backlog is merged: the run's two raw documents into one write
    assert [(r.op, r.run) for r in applied] == [
        ("raw_docs", "r2"),
        ("array_rows", "r2"),
        ("table_rows", "r2"),
    ]
    assert [(d.name, d.run) for d in applied[0].records] == [("start", "r2"), ("event", "r2")]
    assert applied[1].metadata == {} and applied[1].path == ("raw", "r2", "primary")
    assert applied[2].offset == -1  # no offset then: a plain append
    for bad, message in [
        ({"v": 99, "op": "metadata", "path": ["a"], "metadata": {}}, "version 99"),
        ({"v": 1, "op": "drop_table", "path": ["a"]}, "unknown write record op"),
        ({"v": 1, "op": "metadata", "path": ["a"]}, "metadata"),
        ([1, 2], "is a map"),
        ({"v": 1, "op": "raw_docs", "run": "r", "records": 3}, "not a list"),
        (
            {
                "v": 1,
                "op": "raw_docs",
                "run": "r",
                "records": [{"op": "metadata", "path": ["a"], "metadata": {}}],
            },
            "other records than raw_doc",
        ),
    ]:
        with pytest.raises(records.MalformedRecord, match=message):
            records.loads(serialization.dumps(bad))


def test_a_failing_write_holds_back_only_the_later_writes_of_its_own_run(tmp_path):
    from tests.conftest import wait_until

    metrics = Metrics("t", CollectorRegistry())
    fault = threading.Event()
    fault.set()
    applied = []

    def apply(record):
        if fault.is_set() and record.run == "run-a":
            raise ConnectionError("run-a's writes time out")
        applied.append((record.run, record.metadata["i"]))

    spool = Spool(tmp_path, apply, metrics, max_backoff=0.05, is_transient=lambda exc: True)
    spool.start()
    for i in range(6):  # the runs' writes interleaved, as two live runs make them
        spool.put(Metadata(("raw", "run-a"), {"i": i}))
        spool.put(Metadata(("analysis", "run-b", "frames"), {"i": i}))
    wait_until(lambda: spool.pending("run-b") == 0, timeout=10, interval=0.01)
    assert applied == [("run-b", i) for i in range(6)]
    assert spool.pending("run-a") == 6 and spool.depth() == 6
    gauge = ("beamwatch_spool_runs_retrying", {"service": "t"})
    assert metrics.registry.get_sample_value(*gauge) == 1
    fault.clear()
    assert spool.wait_empty(10)
    spool.stop()
    assert [i for run, i in applied if run == "run-a"] == list(range(6))  # in order, once each
    assert metrics.registry.get_sample_value(*gauge) == 0
    assert not list(tmp_path.glob("*.msgpack"))


def test_a_failing_write_of_a_merged_batch_is_rejected_alone(tmp_path):
    applied, rejected = [], []

    def apply(record):
        if isinstance(record, TableRows) and 2 in record.rows["x"]:
            raise PermanentWriteError("row 2 is refused")
        applied.append(record)

    metrics = Metrics("t", CollectorRegistry())
    spool = Spool(tmp_path, apply, metrics, on_reject=lambda r, e: rejected.append(r))
    for i in range(4):
        spool.put(TableRows(("raw", "r1", "s"), "t", {"x": [i]}, offset=i))
    spool.start()  # one merged append of rows 0-3 fails: they are retried one by one
    assert spool.wait_empty(10)
    spool.stop()
    assert [r.rows["x"] for r in rejected] == [[2]]
    assert [r.rows["x"] for r in applied][-3:] == [[0], [1], [3]]


def _raw_doc(run, i, name="event"):
    from services.tiled.records import RawDoc

    return RawDoc(name, {"i": i}, run=run, rid=f"{run}/{i}")


def _doc_numbers(record):
    from services.tiled.records import RawDocs

    return [r.doc["i"] for r in (record.records if isinstance(record, RawDocs) else [record])]


def test_raw_docs_of_a_run_merge_into_one_write_and_a_stop_ends_the_batch(tmp_path):
    from services.tiled.records import RawDocs
    from services.tiled.spool import merge_records

    path = ("raw", "a", "primary")
    records = [
        _raw_doc("a", 1),
        ArrayRows(path, "img", np.zeros((1, 2)), offset=0),
        _raw_doc("b", 1),
        RawDocs("a", (_raw_doc("a", 2), _raw_doc("a", 3))),
        ArrayRows(path, "img", np.ones((1, 2)), offset=1),
        ArrayRows(path, "img", np.full((1, 2), 2.0), offset=2),
    ]
    merged = merge_records(records)
    assert [(m.op, m.run) for m in merged] == [
        ("raw_docs", "a"),
        ("array_rows", "a"),
        ("raw_doc", "b"),
    ]
    assert _doc_numbers(merged[0]) == [1, 2, 3]
    assert merged[1].array.tolist() == [[0, 0], [1, 1], [2, 2]]
    assert records[1].array.tolist() == [[0, 0]]  # the inputs are not changed

    applied = []
    spool = Spool(tmp_path, applied.append, Metrics("t", CollectorRegistry()))
    for record in [_raw_doc("a", 1), _raw_doc("a", 2), _raw_doc("a", 3, "stop"), _raw_doc("a", 4)]:
        spool.put(record)
    spool.start()  # a backlog: the stop is written after the documents before it, alone
    assert spool.wait_empty(10)
    spool.stop()
    assert [(r.op, _doc_numbers(r)) for r in applied] == [
        ("raw_docs", [1, 2]),
        ("raw_doc", [3]),
        ("raw_doc", [4]),
    ]


def test_a_refused_merged_raw_write_is_split_and_only_the_bad_document_rejected(tmp_path):
    from services.tiled.applier import is_transient

    metrics = Metrics("t", CollectorRegistry())
    applied, reported = [], []

    def apply(record):
        numbers = _doc_numbers(record)
        if 2 in numbers:
            raise _ServerError(422)  # Tiled will never take document 2
        applied.extend(numbers)

    spool = Spool(
        tmp_path,
        apply,
        metrics,
        max_backoff=0.01,
        is_transient=is_transient,  # a 422 is permanent
        on_reject=lambda record, error: reported.append(_doc_numbers(record)),
    )
    for i in range(5):
        spool.put(_raw_doc("a", i))
    spool.start()
    assert spool.wait_empty(10)
    spool.stop()
    assert sorted(set(applied)) == [0, 1, 3, 4] and reported == [[2]]
    assert len(list((tmp_path / "rejected").glob("*.msgpack"))) == 1


def test_large_arrays_are_spooled_as_files_and_removed_once_applied(tmp_path):
    """A whole array of LARGE_ARRAY_BYTES or more is kept as an npy file beside its record
    (never packed into it); the applier gets it as an ArrayFile naming that file."""
    from services.tiled.records import ArrayFile
    from services.tiled.spool import LARGE_ARRAY_BYTES

    arrays = []

    def apply(record):  # the file exists while its record is applied
        arrays.append((record, np.load(record.file) if record.op == "array_file" else record.array))

    spool = Spool(tmp_path, apply, Metrics("t", CollectorRegistry()))
    big = np.arange(LARGE_ARRAY_BYTES // 4, dtype=np.float32).reshape(-1, 64)
    handed = tmp_path.parent / f"{tmp_path.name}-handed.npy"  # a stage child's result file
    np.save(handed, big[:10])
    spool.put(ArrayWrite(("analysis", "r1", "x"), "big", big, dims=["i", "j"]))
    spool.put(ArrayWrite(("analysis", "r1", "x"), "small", big[:2]))
    spool.put(ArrayFile(("analysis", "r1", "x"), "handed", str(handed), dims=["i", "j"]))
    assert not handed.exists()  # taken over
    records = sorted(p.stem for p in tmp_path.glob("*.msgpack"))
    on_disk = sorted(p.stem for p in (tmp_path / "arrays").iterdir())
    assert on_disk == [records[0], records[2]]
    assert (tmp_path / records[0]).with_suffix(".msgpack").stat().st_size < 1000
    spool.start()
    assert spool.wait_empty(10)
    spool.stop()
    (first, data), (second, small), (third, handed_data) = arrays
    assert isinstance(first, ArrayFile) and first.dims == ["i", "j"]
    assert np.array_equal(data, big) and data.dtype == np.float32
    assert isinstance(second, ArrayWrite) and np.array_equal(small, big[:2])
    assert isinstance(third, ArrayFile) and np.array_equal(handed_data, big[:10])
    assert list((tmp_path / "arrays").iterdir()) == []


def test_spooled_array_files_go_with_rejected_discarded_and_lost_records(tmp_path):
    from services.tiled.spool import LARGE_ARRAY_BYTES

    def refuse(record):
        raise PermanentWriteError("no")

    metrics = Metrics("t", CollectorRegistry())
    big = np.zeros(LARGE_ARRAY_BYTES, dtype=np.uint8)
    spool = Spool(tmp_path, refuse, metrics)
    spool.put(ArrayWrite(("analysis", "r1", "x"), "big", big))
    spool.put(ArrayWrite(("analysis", "r2", "x"), "big", big))
    (tmp_path / "arrays" / "000000000099-r3.npy").write_bytes(b"a record never written")
    assert spool.discard_runs(["r2"]) == 1
    spool.start()
    assert spool.wait_empty(10)
    spool.stop()
    rejected = sorted(p.name for p in (tmp_path / "rejected").iterdir())
    assert rejected == [
        "000000000000-r1.error.json",
        "000000000000-r1.msgpack",
        "000000000000-r1.npy",
    ]
    assert np.load(tmp_path / "rejected" / "000000000000-r1.npy").nbytes == big.nbytes
    again = Spool(tmp_path, refuse, metrics)  # the orphan array file is removed at start
    assert list((tmp_path / "arrays").iterdir()) == []
    again.stop(0)
