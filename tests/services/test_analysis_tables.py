"""Analysis tables read back in append order on every table storage, written exactly once.

The result writer numbers the rows of a table without a seq_num of its own per row
(``row_index``, from the row offset that keys the append) and the applier creates every table
ordered by it, or by ``seq_num`` where each row has its own (``services.tiled.tables``). Two
writers on connections of their own append at once (as the two consumers and several spool
workers do), some answers are turned into HTTP 500 after the server committed (the spool
retries), and a restarted consumer replays the same writes: every row once, in its place.
"""

from __future__ import annotations

import threading
import uuid

from services.analysis.results import ResultWriter
from services.core.layout import FRAMES, ROW_INDEX, XANES
from services.core.metrics import Metrics
from services.tiled.applier import TiledApplier, connect
from services.tiled.spool import Spool
from tests.conftest import both_backends
from tests.services.faults import CommittedButFailed, started_spool

N_FRAMES = 12
STREAMS = ("flat", "primary")  # frame_stats: a row per frame of every stream, seq_nums repeat


def _frame_stats_rows(seq_num: int, stream: str) -> dict[str, list]:
    return {
        "seq_num": [seq_num],
        "data_key": [f"{stream}_image"],
        "mean": [seq_num + (0.5 if stream == "primary" else 0.25)],
    }


def _write_run(out: ResultWriter, xanes: ResultWriter, particles: ResultWriter) -> None:
    """The tables of a run as the pipelines write them: per frame, then once at the end."""
    out.container({"status": "running"})
    xanes.container({"status": "running"})
    particles.container({"status": "running"})
    for seq_num in range(1, N_FRAMES + 1):
        for stream in STREAMS:
            out.table_rows(FRAMES.frame_stats, _frame_stats_rows(seq_num, stream))
        xanes.table_rows(
            XANES.frames, {"seq_num": [seq_num], "energy": [8300.0 + seq_num]}, by_seq_num=True
        )
        # a block of rows per frame, none for some frames (no particle found)
        n = seq_num % 3
        xanes.table_rows(XANES.particles, {"frame": [seq_num] * n, "particle": list(range(n))})
    particles.table_rows("table", {"label": [7, 3, 5], "volume_voxels": [10, 20, 30]})


def _expected_particles() -> list[tuple[int, int]]:
    return [(s, p) for s in range(1, N_FRAMES + 1) for p in range(s % 3)]


def _table_appends(request) -> bool:  # noqa: ANN001 - an httpx request
    return request.method == "PATCH" and "/table/partition/" in request.url.path


def _spool(url: str, api_key: str, directory, fault: CommittedButFailed | None = None):
    client = connect(url, api_key, timeout=20.0)
    if fault is not None:
        client.context.http_client.event_hooks["response"].append(fault)
    return started_spool(client, directory, Metrics("analysis")), client


def _writers(spool: Spool, uid: str) -> tuple[ResultWriter, ResultWriter, ResultWriter]:
    return (
        ResultWriter(spool, uid, FRAMES.pipeline),
        ResultWriter(spool, uid, XANES.pipeline),
        ResultWriter(spool, uid, "particles"),
    )


def _check_run(tiled_client, uid: str) -> None:
    run = tiled_client["analysis"][uid]
    stats = run[FRAMES.pipeline][FRAMES.frame_stats].read()
    assert stats[ROW_INDEX].tolist() == list(range(N_FRAMES * len(STREAMS)))
    written = [_frame_stats_rows(s, st) for s in range(1, N_FRAMES + 1) for st in STREAMS]
    for column in ("seq_num", "data_key", "mean"):
        assert stats[column].tolist() == [row[column][0] for row in written], column
    frames = run[XANES.pipeline][XANES.frames].read()
    assert ROW_INDEX not in frames.columns  # ordered by its seq_num
    assert frames["seq_num"].tolist() == list(range(1, N_FRAMES + 1))
    particles = run[XANES.pipeline][XANES.particles].read()
    assert particles[ROW_INDEX].tolist() == list(range(len(_expected_particles())))
    got = list(zip(particles["frame"], particles["particle"], strict=True))
    assert got == _expected_particles()
    table = run["particles"]["table"].read()
    assert table[ROW_INDEX].tolist() == [0, 1, 2] and table["label"].tolist() == [7, 3, 5]
    with_sources = tiled_client.include_data_sources()["analysis"][uid]
    for path, column in (
        ((FRAMES.pipeline, FRAMES.frame_stats), ROW_INDEX),
        ((XANES.pipeline, XANES.frames), "seq_num"),
        ((XANES.pipeline, XANES.particles), ROW_INDEX),
        (("particles", "table"), ROW_INDEX),
    ):
        (source,) = with_sources[path].data_sources()
        assert source.parameters["order_by_args"] == [{"column": column, "direction": "asc"}]


@both_backends
def test_analysis_tables_read_back_in_append_order_written_once(
    tiled_server, tiled_client, tmp_path
):
    """Two runs written at once on two connections (their tables share SQL tables in the
    storage), table appends answered HTTP 500 after commit and retried, then one run replayed
    by a fresh consumer (a restart): every table reads back in append order, every row once,
    the same row indices."""
    uids = [str(uuid.uuid4()) for _ in range(2)]
    faults = [CommittedButFailed(_table_appends, 4), None]
    errors: list[BaseException] = []
    start = threading.Barrier(len(uids))

    def consumer(k: int) -> None:
        spool, client = _spool(
            tiled_server.url, tiled_server.api_key, tmp_path / f"spool{k}", faults[k]
        )
        try:
            start.wait(30)
            _write_run(*_writers(spool, uids[k]))
            assert spool.wait_empty(180), "writes still pending"
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            spool.stop(drain_timeout=0)
            client.context.close()

    threads = [threading.Thread(target=consumer, args=(k,)) for k in range(len(uids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    fault = faults[0]
    assert fault is not None and len(fault.injected) == 4, fault.injected
    for uid in uids:
        _check_run(tiled_client, uid)

    # a restarted consumer replays the first run from its journal: the same writes again
    spool, client = _spool(tiled_server.url, tiled_server.api_key, tmp_path / "replay")
    try:
        _write_run(*_writers(spool, uids[0]))
        assert spool.wait_empty(180)
    finally:
        spool.stop(drain_timeout=0)
        client.context.close()
    _check_run(tiled_client, uids[0])


def test_row_index_is_the_writers_own_column(tmp_path):
    """A caller cannot pass ``row_index`` itself, and a table ordered by seq_num needs it."""
    import pytest

    spool = Spool(tmp_path / "spool", lambda record: None, Metrics("analysis"))
    out = ResultWriter(spool, str(uuid.uuid4()), FRAMES.pipeline)
    with pytest.raises(ValueError, match="row_index"):
        out.table_rows("t", {ROW_INDEX: [0], "x": [1]})
    with pytest.raises(ValueError, match="seq_num"):
        out.table_rows("t", {"x": [1]}, by_seq_num=True)


def test_tables_made_before_row_index_existed_take_later_rows(tiled_client):
    """A run replayed across the upgrade: its table in Tiled, or its first spooled rows, have
    no ``row_index``; the later rows, which have one, go in without it, every row once."""
    import pyarrow as pa

    from services.tiled.records import Container, TableRows

    uid = str(uuid.uuid4())
    path = ("analysis", uid, FRAMES.pipeline)
    applier = TiledApplier(tiled_client)
    applier(Container(path, {"status": "running"}))
    # made by this applier from rows spooled by the code of before
    applier(TableRows(path, "made_here", {"seq_num": [1, 1]}, offset=0))
    applier(TableRows(path, "made_here", {ROW_INDEX: [2], "seq_num": [2]}, offset=2))
    # made before the consumer restarted; the replay writes its rows again, with row_index
    node = tiled_client["analysis"][uid][FRAMES.pipeline]
    schema = pa.schema([("seq_num", pa.int64())])
    made = node.create_appendable_table(schema=schema, key="made_before")
    made.append_partition(0, pa.table({"seq_num": [1, 1]}, schema=schema))
    rows = {ROW_INDEX: [0, 1, 2], "seq_num": [1, 1, 2]}
    TiledApplier(tiled_client)(TableRows(path, "made_before", rows, offset=0))
    for key in ("made_here", "made_before"):
        table = node[key].read()
        assert list(table.columns) == ["seq_num"], key
        assert sorted(table["seq_num"].tolist()) == [1, 1, 2], key
