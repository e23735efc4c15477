"""Table storage under concurrent use: the embedded Tiled's SQLite serves reads while a writer
holds the database; appends from several writers land once, on the embedded SQLite and on the
production PostgreSQL.

With SQLite's default rollback journal, a table read during another connection's write failed
with "database is locked" (HTTP 500 to the reader; seen in ``make test`` on
``analysis/<uid>/particles/table``). The embedded storage file is created in WAL mode, where
readers never wait for the writer. Two appends at once failed with "database is locked" too
(one writer at a time, and no busy timeout on tiled's connections): the embedded server now
uses one connection to its table storage, so it serialises appends itself.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid

import pyarrow as pa

from services.core.layout import ROW_INDEX
from services.tiled.tables import create_ordered_table, order_by_args
from tests.conftest import both_backends


def test_tabular_storage_is_wal(tiled_server):
    db = tiled_server.settings.tiled_dir / "tabular.sqlite"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_table_read_while_a_writer_holds_the_database(tiled_server, tiled_client):
    key = f"storage-{uuid.uuid4().hex}"
    table = pa.table({"seq_num": [1, 2, 3], "energy": [8330.0, 8340.0, 8350.0]})
    node = tiled_client.create_appendable_table(schema=table.schema, key=key)
    node.append_partition(0, table)
    db = tiled_server.settings.tiled_dir / "tabular.sqlite"
    writer = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        # An exclusive write transaction, as a consumer's append holds while it commits.
        writer.execute("BEGIN EXCLUSIVE")
        read = tiled_client[key].read()
        assert read["seq_num"].tolist() == [1, 2, 3]
        assert read["energy"].tolist() == [8330.0, 8340.0, 8350.0]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


@both_backends
def test_concurrent_appends_land_exactly_once(tiled_server, tiled_client):
    """Two writers appending (as the two consumers do) while tables are created and read (as
    a viewer does): every row once, in order, no error. Tiled 0.2.20 + DuckDB failed this
    ("No active transaction", rows twice); PostgreSQL (deploy/tiled/config.yml) holds; the
    embedded SQLite storage answered "database is locked" (HTTP 500) to one of two appends
    at once while its server pooled several connections (each without a busy timeout), and
    holds with one (``services.tiled.server.STORAGE_POOL_SIZE``). PostgreSQL returned the rows
    of a plain appendable table in its heap's order (seq_nums 2, 3, 9, 10, 14, 11, ... in a fresh
    clone's ``make test``): the tables are made as the raw consumer makes them, ordered by
    seq_num (``services.tiled.tables``)."""
    prefix = f"concurrent-{uuid.uuid4().hex[:8]}"
    n_writers, n_appends = 2, 15
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(w: int) -> None:
        client = tiled_server.client()
        try:
            schema = pa.schema([("seq_num", pa.int64()), ("writer", pa.int64())])
            # made as the raw consumer makes its tables (rows ordered by seq_num)
            node = create_ordered_table(client, schema, key=f"{prefix}-{w}")
            for i in range(n_appends):
                node.append_partition(0, pa.table({"seq_num": [i], "writer": [w]}, schema=schema))
                # a new table while the other writer appends (a new run's first write)
                if i % 5 == 0:
                    create_ordered_table(client, schema, key=f"{prefix}-{w}-new{i}")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            client.context.close()

    def viewer() -> None:
        client = tiled_server.client()
        try:
            while not done.is_set():
                for w in range(n_writers):
                    if f"{prefix}-{w}" in client:
                        client[f"{prefix}-{w}"].read()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            client.context.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(n_writers)]
    watcher = threading.Thread(target=viewer)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    watcher.join(60)
    assert not errors, errors
    for w in range(n_writers):
        table = tiled_client[f"{prefix}-{w}"].read()
        assert table["seq_num"].tolist() == list(range(n_appends))
        assert set(table["writer"].tolist()) == {w}


@both_backends
def test_ordered_table_reads_by_seq_num_whatever_the_append_order(tiled_server, tiled_client):
    """A late Event's row (appended after later ones) reads back in its place, on both storages;
    a table without seq_num keeps the default order."""
    schema = pa.schema([("seq_num", pa.int64()), ("energy", pa.float64())])
    assert order_by_args(schema) == [{"column": "seq_num", "direction": "asc"}]
    assert order_by_args(pa.schema([("label", pa.int64())])) == []
    node = create_ordered_table(tiled_client, schema, key=f"ordered-{uuid.uuid4().hex[:8]}")
    for seq_nums in ([1, 2, 4], [3], [5]):
        energies = [8300.0 + s for s in seq_nums]
        node.append_partition(0, pa.table({"seq_num": seq_nums, "energy": energies}, schema=schema))
    table = node.read()
    assert table["seq_num"].tolist() == [1, 2, 3, 4, 5]
    assert table["energy"].tolist() == [8301.0, 8302.0, 8303.0, 8304.0, 8305.0]


def _rows(schema: pa.Schema, indices: list[int]) -> pa.Table:
    """Rows of a frame_stats-like table: two rows per seq_num (a frame of two streams)."""
    return pa.table(
        {
            ROW_INDEX: indices,
            "seq_num": [i // 2 for i in indices],
            "mean": [0.5 + i for i in indices],
        },
        schema=schema,
    )


@both_backends
def test_row_index_orders_a_table_with_several_rows_per_seq_num(tiled_server, tiled_client):
    """A table whose seq_nums repeat (``frame_stats``) is ordered by its ``row_index``: rows
    appended out of order read back in their place, on both storages, and the table's data
    source says so."""
    schema = pa.schema([(ROW_INDEX, pa.int64()), ("seq_num", pa.int64()), ("mean", pa.float64())])
    assert order_by_args(schema) == [{"column": ROW_INDEX, "direction": "asc"}]
    key = f"indexed-{uuid.uuid4().hex[:8]}"
    node = create_ordered_table(tiled_client, schema, key=key, metadata={"note": "kept"})
    for indices in ([2, 3], [0, 1], [6, 7], [4, 5]):
        node.append_partition(0, _rows(schema, indices))
    table = node.read()
    assert table[ROW_INDEX].tolist() == list(range(8))
    assert table["seq_num"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert table["mean"].tolist() == [0.5 + i for i in range(8)]
    (source,) = tiled_client.include_data_sources()[key].data_sources()
    assert source.parameters["order_by_args"] == [{"column": ROW_INDEX, "direction": "asc"}]
    assert tiled_client[key].metadata["note"] == "kept"


def test_postgresql_reads_heap_order_unless_the_table_is_ordered(production_tiled):
    """Why the order column is needed: PostgreSQL returns a plain table's rows in its heap's
    order, and rows appended after another table's rows were deleted (``beamwatch delete``) and
    the space vacuumed land in that space, before the table's earlier rows. The same appends
    to an ordered table read back in order."""
    import adbc_driver_postgresql.dbapi

    from tests.backends import POSTGRES_ADMIN_URI, with_database

    services = production_tiled.production
    assert services is not None
    client = production_tiled.shared_client
    prefix = f"heap-{uuid.uuid4().hex[:8]}"
    # a column of its own: these tables share an SQL table with nothing else
    schema = pa.schema(
        [(ROW_INDEX, pa.int64()), ("seq_num", pa.int64()), (f"v_{prefix[5:]}", pa.float64())]
    )

    def rows(indices: list[int]) -> pa.Table:
        return pa.table(
            [indices, [i // 2 for i in indices], [float(i) for i in indices]], schema=schema
        )

    filler = client.create_appendable_table(schema=schema, key=f"{prefix}-filler")
    filler.append_partition(0, rows(list(range(5000))))
    plain = client.create_appendable_table(schema=schema, key=f"{prefix}-plain")
    ordered = create_ordered_table(client, schema, key=f"{prefix}-ordered")
    for node in (plain, ordered):
        node.append_partition(0, rows(list(range(10))))
    client.delete_contents([f"{prefix}-filler"], external_only=False)
    (source,) = client.include_data_sources()[f"{prefix}-plain"].data_sources()
    table_name = source.parameters["table_name"]
    uri = with_database(POSTGRES_ADMIN_URI, services.tables_database)
    with adbc_driver_postgresql.dbapi.connect(uri, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(f'VACUUM "{table_name}"')
    for node in (plain, ordered):
        node.append_partition(0, rows(list(range(10, 20))))
    got = plain.read()[ROW_INDEX].tolist()
    assert sorted(got) == list(range(20)) and got != list(range(20)), got
    assert ordered.read()[ROW_INDEX].tolist() == list(range(20))
