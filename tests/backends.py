"""The two Tiled set-ups the end-to-end and fault tests run against.

``embedded``: what ``beamwatch up`` starts (SQLite catalog and table storage, in-memory
streaming cache), from ``services/tiled/server.py``.

``production``: ``deploy/tiled/config.yml`` itself, served against the PostgreSQL and Redis on
loopback (PostgreSQL catalog and table storage, Redis streaming cache). Each test session gets
its own PostgreSQL databases (``beamwatch_test_<random>`` for the catalog, ``..._tables`` for
the table rows) and drops them at the end. Tiled keys its Redis entries and channels by catalog
node id only (``sequence:<id>``, ``data:<id>:<seq>``, ``notify:<id>``, no prefix setting), so
the session takes a random Redis database and starts its catalog's node ids at a random block
of a million: two sessions sharing the Redis never see each other's keys or notifications, and
the session deletes exactly its own keys at the end (the root, node 0, is the one id they share:
its entries are in the session's own database, and no test subscribes to the root).

Where the services are: ``TEST_POSTGRES_URI`` (an admin URI that may create databases,
default ``postgresql://postgres@127.0.0.1:5432/postgres``) and ``TEST_REDIS_URI`` (default
``redis://127.0.0.1:6379``). Unreachable services skip the production cases with the reason;
a reachable service that refuses what the tests need fails them.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY_TILED_CONFIG = REPO / "deploy" / "tiled" / "config.yml"
#: The data dir the deploy files are written for; tests put theirs in its place.
DEPLOY_DATA_DIR = "/var/lib/beamwatch"
BACKENDS = ("embedded", "production")

POSTGRES_ADMIN_URI = os.environ.get(
    "TEST_POSTGRES_URI", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URI = os.environ.get("TEST_REDIS_URI", "redis://127.0.0.1:6379")
NODE_ID_BLOCK = 1_000_000


class ServiceUnreachable(RuntimeError):
    """PostgreSQL or Redis does not answer; the production cases skip with this reason."""


def with_database(uri: str, database: str, scheme: str | None = None) -> str:
    parsed = urlparse(uri)
    return urlunparse(parsed._replace(scheme=scheme or parsed.scheme, path=f"/{database}"))


def _require_reachable(service: str, uri: str, variable: str, default_port: int) -> None:
    """Raise ServiceUnreachable unless something accepts TCP connections where ``uri`` points;
    any later error (authentication, privileges) is a real failure, not a skip."""
    parsed = urlparse(uri)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        raise ServiceUnreachable(
            f"{service} is not reachable at {host}:{port} ({variable}={uri}): {exc}"
        ) from exc


def _postgres_admin() -> Any:
    import adbc_driver_postgresql.dbapi

    _require_reachable("PostgreSQL", POSTGRES_ADMIN_URI, "TEST_POSTGRES_URI", 5432)
    return adbc_driver_postgresql.dbapi.connect(POSTGRES_ADMIN_URI, autocommit=True)


def _redis_client(db: int) -> Any:
    import redis

    _require_reachable("Redis", REDIS_URI, "TEST_REDIS_URI", 6379)
    client = redis.Redis.from_url(REDIS_URI, db=db, socket_connect_timeout=2, socket_timeout=5)
    client.ping()
    return client


@dataclass
class ProductionServices:
    """This session's databases and Redis namespace; ``drop()`` removes all of them."""

    database: str
    redis_db: int
    node_id_start: int

    @classmethod
    def create(cls) -> ProductionServices:
        """Create fresh databases; raise ServiceUnreachable when a service does not answer."""
        redis_db = random.randrange(1, 16)
        _redis_client(redis_db).close()  # reachable? (before creating anything)
        services = cls(
            database=f"beamwatch_test_{uuid.uuid4().hex[:10]}",
            redis_db=redis_db,
            node_id_start=random.randrange(100, 2000) * NODE_ID_BLOCK,
        )
        with _postgres_admin() as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{services.database}"')
            cur.execute(f'CREATE DATABASE "{services.tables_database}"')
        return services

    @property
    def tables_database(self) -> str:
        return f"{self.database}_tables"

    @property
    def env(self) -> dict[str, str]:
        """The variables ``deploy/tiled/config.yml`` reads (deploy/secrets.env.example)."""
        return {
            "TILED_DEPLOY_CATALOG_URI": with_database(
                POSTGRES_ADMIN_URI, self.database, "postgresql+asyncpg"
            ),
            "TILED_DEPLOY_TABULAR_URI": with_database(POSTGRES_ADMIN_URI, self.tables_database),
            "TILED_DEPLOY_REDIS_URI": f"{REDIS_URI.rstrip('/')}/{self.redis_db}",
        }

    def claim_node_ids(self) -> None:
        """Start the catalog's node ids at this session's block (after Tiled created it,
        before the first node)."""
        import adbc_driver_postgresql.dbapi

        uri = with_database(POSTGRES_ADMIN_URI, self.database)
        with adbc_driver_postgresql.dbapi.connect(uri, autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM nodes")
                (count,) = cur.fetchone()
                assert count == 1, f"the catalog already holds {count - 1} nodes"
                cur.execute(f"ALTER SEQUENCE nodes_id_seq RESTART WITH {self.node_id_start}")

    def redis_keys(self) -> list[bytes]:
        """This session's keys in Redis (sequence counters and cached messages)."""
        digits = "[0-9]" * len(str(NODE_ID_BLOCK - 1))
        block = self.node_id_start // NODE_ID_BLOCK
        # the root (node 0, the one id not renumbered) has entries in this session's database
        patterns = (
            "sequence:0",
            "data:0:*",
            f"sequence:{block}{digits}",
            f"data:{block}{digits}:*",
        )
        client = _redis_client(self.redis_db)
        try:
            return [
                key for pattern in patterns for key in client.scan_iter(match=pattern, count=1000)
            ]
        finally:
            client.close()

    def drop(self) -> None:
        keys = self.redis_keys()
        if keys:
            client = _redis_client(self.redis_db)
            try:
                client.delete(*keys)
            finally:
                client.close()
        with _postgres_admin() as conn, conn.cursor() as cur:
            for database in (self.database, self.tables_database):
                cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def production_tiled_config(data_dir: Path, port: int, readable_roots: list[Path]) -> Path:
    """``deploy/tiled/config.yml`` for a test: the deploy data dir replaced by ``data_dir``,
    its port and readable storage set; everything else (and the ``${...}`` service variables
    Tiled expands at start) exactly as deployed. Returns the written file."""
    text = DEPLOY_TILED_CONFIG.read_text().replace(DEPLOY_DATA_DIR, str(data_dir))
    config = yaml.safe_load(text)
    config["uvicorn"]["port"] = port
    (tree,) = config["trees"]
    tree["args"]["readable_storage"] = [str(root) for root in readable_roots]
    for storage in tree["args"]["writable_storage"]:
        if storage.startswith("/"):
            Path(storage).mkdir(parents=True, exist_ok=True)
    path = data_dir / "tiled-config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
