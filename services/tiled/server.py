"""The embedded Tiled server: a config file generated under the data dir, served by ``tiled``.

``tiled serve catalog DB --init -w ... --cache memory`` fails in tiled 0.2.20, so the embedded
server is always described by a config file (``tiled serve config``), the same mechanism the
production configuration in ``deploy/tiled/config.yml`` uses.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from services.core.settings import BeamwatchSettings

#: Connections of the embedded server to its SQLite table storage (see :func:`tiled_config`).
STORAGE_POOL_SIZE = 1


def tiled_config(settings: BeamwatchSettings) -> dict[str, Any]:
    """The Tiled service configuration for the embedded server (API key by env var)."""
    tdir = settings.tiled_dir.resolve()
    catalog_uri = settings.tiled.catalog_uri or f"sqlite:///{tdir / 'catalog.db'}"
    return {
        # Anonymous clients may read (the live page and Tiled's /ui/ need no key); writing
        # still needs the API key.
        "authentication": {
            "single_user_api_key": "${TILED_SINGLE_USER_API_KEY}",
            "allow_anonymous_access": True,
        },
        # The live page is served from another port and reads Tiled from the browser.
        "allow_origins": [settings.web_url, f"http://localhost:{settings.web.port}"],
        "trees": [
            {
                "path": "/",
                "tree": "catalog",
                "args": {
                    "uri": catalog_uri,
                    "writable_storage": [
                        str(tdir / "data"),
                        # SQLite, not DuckDB: Tiled 0.2.20 shares one DuckDB ADBC connection
                        # between requests; a table created while another request appends
                        # fails ("closed pending query result", HTTP 500) and rows land twice.
                        f"sqlite:///{tdir / 'tabular.sqlite'}",
                    ],
                    # detector files, and the raw consumer's own frame files
                    "readable_storage": [
                        *(str(root) for root in settings.readable_roots),
                        str(settings.raw_frames_dir.resolve()),
                    ],
                    # The embedded SQLite catalog is created by ``write_tiled_config`` (in WAL
                    # mode) before the server starts. Tiled's own init check runs
                    # ``python -m tiled catalog init`` in a subprocess at every start, which
                    # imports all of tiled again (about a third of a start); only a catalog
                    # given by URI is left to it.
                    "init_if_not_exists": bool(settings.tiled.catalog_uri),
                },
            }
        ],
        # One connection to the SQLite table storage, shared by every request in turn:
        # SQLite has one writer at a time, and tiled's ADBC connections set no busy timeout,
        # so with the default pool (5 + 10) two requests appending at once (the raw and the
        # analysis consumer) made one fail at once with "database is locked" (HTTP 500).
        # Through a single connection appends are serialised by the server itself, without
        # any lock among the clients. (Reads wait for it too; in WAL mode they never wait
        # for another process's write.) 0 overflow needs TILED_STORAGE_MAX_OVERFLOW=0 as
        # well (``tiled_command``): tiled takes a 0 in the file for "unset".
        "storage_pool_size": STORAGE_POOL_SIZE,
        "storage_max_overflow": 0,
        "streaming_cache": {"uri": settings.tiled.cache_uri},
        "uvicorn": {"host": settings.tiled.host, "port": settings.tiled.port},
    }


def init_sqlite_catalog(db: Path) -> None:
    """Create the embedded SQLite catalog once, in WAL mode.

    With the default rollback journal, readers polling the catalog while the consumers write
    make writes fail with "database is locked" (HTTP 500) under load; in WAL mode readers
    never block the writer. The journal mode is stored in the file.
    """
    if db.exists():
        return
    tiled_bin = Path(sys.executable).with_name("tiled")
    subprocess.run(
        [str(tiled_bin), "catalog", "init", f"sqlite:///{db}"],
        check=True,
        capture_output=True,
    )
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def init_sqlite_tabular(db: Path) -> None:
    """Create the embedded table storage's SQLite file, or switch an existing one, to WAL mode.

    Tiled creates its tables in it on first use. With the default rollback journal a table
    read while a consumer appends fails with "database is locked" (HTTP 500 to the reader,
    seen on ``analysis/<uid>/particles/table``); in WAL mode readers never wait for the writer.
    A file of an earlier version is switched too (before the server opens it; the mode is
    stored in the file).
    """
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def write_tiled_config(settings: BeamwatchSettings) -> Path:
    tdir = settings.tiled_dir
    (tdir / "data").mkdir(parents=True, exist_ok=True)
    settings.detector_dir.mkdir(parents=True, exist_ok=True)
    if not settings.tiled.catalog_uri:
        init_sqlite_catalog((tdir / "catalog.db").resolve())
    init_sqlite_tabular((tdir / "tabular.sqlite").resolve())
    path = tdir / "config.yml"
    path.write_text(yaml.safe_dump(tiled_config(settings), sort_keys=False))
    return path


def tiled_command(settings: BeamwatchSettings) -> tuple[list[str], dict[str, str]]:
    """argv and environment that start the embedded Tiled server."""
    config = write_tiled_config(settings)
    env = dict(os.environ)
    env["TILED_SINGLE_USER_API_KEY"] = settings.resolved_api_key()
    env["TILED_STORAGE_MAX_OVERFLOW"] = "0"  # see tiled_config
    tiled_bin = Path(sys.executable).with_name("tiled")
    return [str(tiled_bin), "serve", "config", str(config)], env
