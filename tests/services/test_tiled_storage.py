"""The embedded Tiled's table storage (SQLite) serves reads while a writer holds the database.

With SQLite's default rollback journal, a table read during another connection's write failed
with "database is locked" (HTTP 500 to the reader; seen in ``make test`` on
``analysis/<uid>/particles/table``). The embedded storage file is created in WAL mode, where
readers never wait for the writer.
"""

from __future__ import annotations

import sqlite3
import uuid

import pyarrow as pa


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
