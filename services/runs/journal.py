"""A consumer's durable record of the documents of its open runs, replayed after a crash.

The 0MQ bus is not a source of truth, and a consumer's per-run state (descriptors, resources,
a pipeline's tracker) lives in memory. So every document of a run a consumer routes is also
appended to ``<spool>/<role>/runs/<run uid>.msgpack``; after a crash (SIGKILL included: the
page cache outlives the process) the new process replays the journals of the runs that were
not done, through fresh routers. Every write the routers make is idempotent (rows keyed by
seq_num or offset, containers adopted, arrays patched at offsets), so a replay completes what
was missing and doubles nothing. A journal is removed once its run is finished, its after-scan
stages are done and the spool has applied everything.
"""

from __future__ import annotations

import logging
import struct
import threading
from pathlib import Path
from typing import Any

from services.core import serialization

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")


class RunJournal:
    """Append-only per-run document logs in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _path(self, run_uid: str) -> Path:
        return self.directory / f"{run_uid}.msgpack"

    def append(self, run_uid: str, name: str, doc: dict[str, Any]) -> None:
        """Add a document of ``run_uid`` (a uid already checked at the boundary)."""
        payload = serialization.dumps([name, doc])
        with self._lock:
            fh = self._files.get(run_uid)
            if fh is None:
                fh = self._files[run_uid] = open(self._path(run_uid), "ab")  # noqa: SIM115
            fh.write(_LENGTH.pack(len(payload)) + payload)
            fh.flush()

    def remove(self, run_uid: str) -> None:
        with self._lock:
            fh = self._files.pop(run_uid, None)
            if fh is not None:
                fh.close()
            self._path(run_uid).unlink(missing_ok=True)

    def runs(self) -> list[str]:
        """Uids of the runs with a journal on disk."""
        return sorted(p.stem for p in self.directory.glob("*.msgpack"))

    def documents(self, run_uid: str) -> list[tuple[str, dict[str, Any]]]:
        """The journal of a run in order; a record cut short by the crash ends it."""
        data = self._path(run_uid).read_bytes()
        docs: list[tuple[str, dict[str, Any]]] = []
        pos = 0
        while pos + _LENGTH.size <= len(data):
            (size,) = _LENGTH.unpack_from(data, pos)
            chunk = data[pos + _LENGTH.size : pos + _LENGTH.size + size]
            if len(chunk) < size:
                logger.warning("journal of run %s ends with a partial record", run_uid)
                break
            try:
                name, doc = serialization.loads(chunk)
            except serialization.MalformedMessage:
                logger.warning(
                    "journal of run %s has an unreadable record; stopping there", run_uid
                )
                break
            docs.append((name, doc))
            pos += _LENGTH.size + size
        return docs

    def close(self) -> None:
        with self._lock:
            for fh in self._files.values():
                fh.close()
            self._files.clear()
