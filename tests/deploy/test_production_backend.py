"""deploy/tiled/config.yml served against the PostgreSQL and Redis on loopback.

The end-to-end and fault tests run on this server too (``@both_backends``); here: the data
land where the deploy file says (catalog and table rows in PostgreSQL, streaming cache in
Redis) and the websocket subscriptions the live page uses deliver rows through Redis.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
from websockets.sync.client import connect

from tests.conftest import TiledProcess, both_backends


def _postgres_rows(database: str) -> dict[str, int]:
    """Rows per table of the public schema of one of this session's databases."""
    import adbc_driver_postgresql.dbapi

    from tests.backends import POSTGRES_ADMIN_URI, with_database

    with adbc_driver_postgresql.dbapi.connect(with_database(POSTGRES_ADMIN_URI, database)) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
            names = [row[0] for row in cur.fetchall()]
            counts = {}
            for name in names:
                cur.execute(f'SELECT count(*) FROM "{name}"')
                counts[name] = cur.fetchone()[0]
    return counts


def test_catalog_and_table_rows_are_in_postgresql(production_tiled: TiledProcess):
    client = production_tiled.shared_client
    key = f"deploy-{uuid.uuid4().hex[:8]}"
    node = client.create_container(key)
    array = node.write_array(np.arange(6.0), key="a")
    array.patch(np.array([6.0, 7.0]), offset=(6,), extend=True)
    np.testing.assert_array_equal(client[key]["a"].read(), np.arange(8.0))
    rows = pa.table({"seq_num": [1, 2, 3], "energy": [8330.0, 8340.0, 8350.0]})
    table = node.create_appendable_table(schema=rows.schema, key="t")
    table.append_partition(0, rows)
    assert client[key]["t"].read()["seq_num"].tolist() == [1, 2, 3]

    services = production_tiled.production
    assert services is not None
    catalog = _postgres_rows(services.database)
    assert catalog["nodes"] >= 4  # root, the container, its array and table
    tables = _postgres_rows(services.tables_database)
    # the appended rows are in the table storage database, not in a file under the data dir
    assert 3 in tables.values(), tables
    data_dir = production_tiled.settings.data_dir
    assert not list(data_dir.rglob("*.duckdb")) and not list(data_dir.rglob("*.sqlite"))


def _stream_url(server: TiledProcess, path: str) -> str:
    # as the live page subscribes (services/web/static/app.js), anonymously; start=1 first
    # replays what was cached before (the server subscribes to new messages before replaying)
    base = server.url.replace("http://", "ws://")
    return f"{base}/api/v1/stream/single/{path}?envelope_format=json&start=1"


def _messages(ws: Any, want: int) -> list[dict]:
    out = []
    while len(out) < want:
        msg = json.loads(ws.recv(timeout=30))
        if not msg.get("type", "").endswith("-schema"):
            out.append(msg)
    return out


@both_backends
def test_live_page_subscriptions_receive_rows(tiled_server: TiledProcess, tiled_client):
    key = f"live-{uuid.uuid4().hex[:8]}"
    run = tiled_client.create_container(key)
    shift = run.write_array(np.zeros((1, 2)), key="global_shift")
    rows = pa.table({"seq_num": [1], "mean": [0.5]})
    table = run.create_appendable_table(schema=rows.schema, key="frame_stats")
    table.append_partition(0, rows)

    with (
        connect(_stream_url(tiled_server, key)) as on_run,
        connect(_stream_url(tiled_server, f"{key}/global_shift")) as on_shift,
        connect(_stream_url(tiled_server, f"{key}/frame_stats")) as on_table,
    ):
        # the replay of what is cached: once it is in, the subscriptions are live
        replayed = _messages(on_run, 2)
        assert [m["key"] for m in replayed] == ["global_shift", "frame_stats"]
        (first_shift,) = _messages(on_shift, 1)
        assert first_shift["type"] == "array-data" and first_shift["payload"] == [[0.0, 0.0]]
        (first_rows,) = _messages(on_table, 1)
        assert first_rows["type"] == "table-data" and first_rows["payload"]["seq_num"] == [1]

        # new rows and children, pushed live (through Redis pub/sub in production)
        shift.patch(np.array([[1.5, -2.0], [3.0, 4.0]]), offset=(1,), extend=True)
        table.append_partition(0, pa.table({"seq_num": [2, 3], "mean": [0.6, 0.7]}))
        run.write_array(np.ones(3), key="labels")
        (child,) = _messages(on_run, 1)
        assert child["type"] == "container-child-created" and child["key"] == "labels"
        (patch,) = _messages(on_shift, 1)
        assert patch["type"] == "array-data" and patch["offset"] == [1]
        assert patch["shape"] == [2, 2] and patch["payload"] == [[1.5, -2.0], [3.0, 4.0]]
        (appended,) = _messages(on_table, 1)
        assert appended["type"] == "table-data"
        assert appended["payload"] == {"seq_num": [2, 3], "mean": [0.6, 0.7]}

    if tiled_server.production is not None:
        # the messages are cached in this session's Redis database
        run_id = _node_id(tiled_server.production, key)
        keys = {k.decode() for k in tiled_server.production.redis_keys()}
        assert f"sequence:{run_id}" in keys and f"data:{run_id}:3" in keys, sorted(keys)[:20]


def test_production_services_are_this_sessions_own(production_tiled: TiledProcess):
    services = production_tiled.production
    assert services is not None
    env = services.env
    assert env["TILED_DEPLOY_CATALOG_URI"].startswith("postgresql+asyncpg://")
    assert env["TILED_DEPLOY_CATALOG_URI"].endswith(f"/{services.database}")
    assert env["TILED_DEPLOY_TABULAR_URI"].endswith(f"/{services.tables_database}")
    assert env["TILED_DEPLOY_REDIS_URI"].endswith(f"/{services.redis_db}")
    node = production_tiled.shared_client.create_container(f"ids-{uuid.uuid4().hex[:8]}")
    node_id = _node_id(services, node.item["id"])
    assert node_id >= services.node_id_start


def _node_id(services: Any, key: str) -> int:
    import adbc_driver_postgresql.dbapi

    from tests.backends import POSTGRES_ADMIN_URI, with_database

    uri = with_database(POSTGRES_ADMIN_URI, services.database)
    with adbc_driver_postgresql.dbapi.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM nodes WHERE key = $1", (key,))
        (row,) = cur.fetchall()
    return int(row[0])
