"""A durable, ordered write queue: records are spooled to disk and applied to Tiled in order.

Tiled being down must not lose results. Every write is first appended to the spool (one msgpack
file per record, numbered), then a single worker applies records strictly in order, retrying
each with capped exponential backoff until it succeeds. Records left on disk by a previous
process are replayed at start.

A write the server will never accept (a permanent error, or the same record answered with a
server error ``max_server_errors`` times in a row while the server is up) is *rejected*: it is
moved to ``rejected/`` beside its error, counted in ``beamwatch_writes_rejected_total``, reported
through ``on_reject`` (the consumer writes it into the run's metadata) and the records after it
go on. A spool directory that cannot be written makes :meth:`Spool.put` wait and retry (the
dispatcher is held back; nothing is dropped); the worker thread survives any error of its own.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from services.core import serialization
from services.core.metrics import Metrics
from services.tiled import records as wire
from services.tiled.records import ArrayRows, RawDoc, Record, TableRows

logger = logging.getLogger(__name__)

Applier = Callable[[Record], None]
RejectCallback = Callable[[Record, str], None]


class PermanentWriteError(Exception):
    """A write that can never succeed (bad data); it is logged, counted and skipped."""


class Spool:
    """Ordered on-disk queue of write records with a retrying worker thread."""

    def __init__(
        self,
        directory: Path,
        apply: Applier,
        metrics: Metrics,
        *,
        max_backoff: float = 5.0,
        is_transient: Callable[[BaseException], bool] | None = None,
        max_batch: int = 256,
        max_server_errors: int = 12,
        on_reject: RejectCallback | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._apply = apply
        self._metrics = metrics
        self._max_backoff = max_backoff
        self._is_transient = is_transient or (lambda exc: not isinstance(exc, PermanentWriteError))
        self._cond = threading.Condition()
        existing = sorted(self.directory.glob("*.msgpack"))
        self._next = int(existing[-1].stem) + 1 if existing else 0
        self._pending: list[Path] = existing
        self._stop = False
        self._busy = False
        self._max_batch = max_batch
        self._max_server_errors = max_server_errors
        self._on_reject = on_reject
        self.rejected_dir = self.directory / "rejected"
        self._thread = threading.Thread(target=self._run, name=f"spool-{self.directory.name}")
        self._metrics.queue_depth.labels(metrics.service).set(len(self._pending))
        if existing:
            logger.warning("replaying %d spooled writes from %s", len(existing), self.directory)

    def start(self) -> None:
        self._thread.start()

    def discard(self, predicate: Callable[[Record], bool]) -> int:
        """Before :meth:`start`: delete queued records for which ``predicate`` is true."""
        if self._thread.is_alive():
            raise RuntimeError("discard() is for records left by a previous process, before start")
        kept: list[Path] = []
        dropped = 0
        for path in self._pending:
            try:
                record = wire.loads(path.read_bytes())
            except (OSError, serialization.MalformedMessage):
                kept.append(path)  # the worker sets unreadable records aside
                continue
            if predicate(record):
                path.unlink(missing_ok=True)
                dropped += 1
            else:
                kept.append(path)
        self._pending = kept
        self._metrics.queue_depth.labels(self._metrics.service).set(len(kept))
        return dropped

    def put(self, record: Record) -> None:
        """Persist a record to disk and queue it; returns once it is on disk.

        While the directory cannot be written, waits and retries (logged and counted): the
        caller is held back, the record is never dropped.
        """
        payload = wire.dumps(record)
        backoff = 0.05
        with self._cond:
            path = self.directory / f"{self._next:012d}.msgpack"
            while True:
                try:
                    self._write_file(path, payload)
                    break
                except OSError as exc:
                    self._metrics.spool_errors.labels(self._metrics.service, "write").inc()
                    logger.error("cannot write spool record %s (retrying): %s", path, exc)
                    if self._stop:
                        raise
                    self._cond.wait(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
            self._next += 1
            self._pending.append(path)
            self._metrics.queue_depth.labels(self._metrics.service).set(len(self._pending))
            self._cond.notify_all()

    @staticmethod
    def _write_file(path: Path, payload: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)

    def is_alive(self) -> bool:
        """True while the worker thread runs (a consumer whose worker died must restart)."""
        return self._thread.is_alive()

    def depth(self) -> int:
        with self._cond:
            return len(self._pending) + (1 if self._busy else 0)

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Block until every queued record has been applied; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Try to drain for ``drain_timeout`` seconds, then stop; undrained records stay on disk."""
        self.wait_empty(drain_timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                candidates = list(self._pending[: self._max_batch])
                self._busy = True
            done: list[Path] = []
            try:
                done = self._apply_with_retry(candidates)
            except Exception:
                # Never die silently: reading a record or the disk failed; try again shortly.
                self._metrics.spool_errors.labels(self._metrics.service, "worker").inc()
                logger.exception("spool worker error; retrying")
                with self._cond:
                    self._cond.wait(self._max_backoff)
            finally:
                with self._cond:
                    self._busy = False
                    for path in done:
                        if self._pending and self._pending[0] == path:
                            self._pending.pop(0)
                    self._metrics.queue_depth.labels(self._metrics.service).set(len(self._pending))
                    self._cond.notify_all()

    def _batch(self, candidates: list[Path]) -> tuple[list[Path], list[Record]]:
        """The first record, plus the following ones while all of them can be merged."""
        paths = [candidates[0]]
        records = [wire.loads(candidates[0].read_bytes())]
        if not isinstance(records[0], MERGEABLE):
            return paths, records
        for path in candidates[1:]:
            record = wire.loads(path.read_bytes())
            if not isinstance(record, MERGEABLE):
                break
            paths.append(path)
            records.append(record)
        return paths, records

    def _apply_with_retry(self, candidates: list[Path]) -> list[Path]:
        try:
            paths, records = self._batch(candidates)
        except serialization.MalformedMessage as exc:
            # A record file that cannot be decoded (disk damage): keep it aside, go on.
            self._reject(candidates[:1], None, exc, raw=candidates[0])
            candidates[0].unlink(missing_ok=True)
            return candidates[:1]
        try:
            merged = merge_records(records) if len(records) > 1 else records
        except Exception:  # noqa: BLE001 - a malformed record: apply them one by one
            logger.exception("cannot merge spooled writes; applying them one by one")
            merged = records
        backoff = 0.1
        for record in merged:
            server_errors = 0
            while True:
                try:
                    self._apply(record)
                except Exception as exc:
                    if _is_server_answer(exc):
                        server_errors += 1
                    if not self._is_transient(exc) or server_errors >= self._max_server_errors:
                        with self._cond:
                            if self._stop:
                                return []  # shutting down: keep it on disk, decide next time
                        self._reject(paths, record, exc)
                        break
                    with self._cond:
                        if self._stop:
                            return []  # keep everything on disk for the next start
                    self._metrics.tiled_write_retries.labels(self._metrics.service).inc()
                    logger.warning(
                        "Tiled write %s (%s) failed, retrying in %.2f s: %s",
                        paths[0].name,
                        record.op,
                        backoff,
                        exc,
                    )
                    time.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                break
        for path in paths:
            path.unlink(missing_ok=True)
        return paths

    def _reject(
        self,
        paths: list[Path],
        record: Record | None,
        exc: BaseException,
        raw: Path | None = None,
    ) -> None:
        """Keep a write the server will not accept beside its error; report it; go on.

        ``record`` is None for a record file that cannot be read (``raw`` is kept as it is).
        """
        error = f"{type(exc).__name__}: {exc}"[:2000]
        op = record.op if record is not None else "unreadable"
        logger.error(
            "Tiled rejected write %s (%s %s); kept in %s: %s",
            paths[0].name,
            op,
            _target(record),
            self.rejected_dir,
            error,
        )
        self._metrics.writes_rejected.labels(self._metrics.service, op).inc()
        self.rejected_dir.mkdir(exist_ok=True)
        name = paths[0].stem
        if raw is not None or record is None:
            payload = raw.read_bytes() if raw is not None else b""
        else:
            payload = wire.dumps(record)
        self._write_file(self.rejected_dir / f"{name}.msgpack", payload)
        (self.rejected_dir / f"{name}.error.json").write_text(
            json.dumps({"op": op, "error": error, "records": [p.name for p in paths]})
        )
        if record is None or getattr(record, "notice", False):
            return
        if self._on_reject is not None:
            try:
                self._on_reject(record, error)
            except Exception:
                logger.exception("reporting a rejected write failed")


def _is_server_answer(exc: BaseException) -> bool:
    """An HTTP answer of a running server (as opposed to a server that cannot be reached)."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) is not None


def _target(record: Record | None) -> str:
    """Where a record writes, for the log."""
    if record is None:
        return ""
    if isinstance(record, RawDoc):
        return f"raw/{record.run} {record.name}"
    key = getattr(record, "key", None)
    return "/".join((*record.path, key) if key else record.path)


#: Records that can be merged when several are queued (Tiled lagging behind): appends to
#: tables and growing arrays. They carry explicit offsets, so re-applying a merged batch after a
#: failure is harmless.
MERGEABLE = (TableRows, ArrayRows)
#: Largest array append one merge makes. A lagging Tiled still sees a growing array grow in
#: steps (a viewer watches the crack map fill slice by slice) and requests stay bounded.
MAX_MERGED_ARRAY_BYTES = 1 << 20


def merge_records(records: list[Record]) -> list[Record]:
    """Merge queued appends to the same table or array into one write each.

    Order is kept per target (the first record of a target fixes its place); appends with a
    gap or a different axis start a new write, and so does an array append that would grow a
    merged write beyond :data:`MAX_MERGED_ARRAY_BYTES`. The input records are not changed.
    """
    merged: list[Record] = []
    place_of: dict[tuple[Any, ...], int] = {}
    for record in records:
        if not isinstance(record, MERGEABLE):
            merged.append(record)
            continue
        target = (record.op, record.path, record.key, getattr(record, "axis", 0))
        place = place_of.get(target)
        if place is not None:
            joined = _joined(merged[place], record)
            if joined is not None:
                merged[place] = joined
                continue
        place_of[target] = len(merged)
        merged.append(record)
    return merged


def _joined(prev: Record, record: TableRows | ArrayRows) -> Record | None:
    """``prev`` and ``record`` as one write, or None if ``record`` does not follow ``prev``."""
    if isinstance(prev, TableRows) and isinstance(record, TableRows):
        if _follows_table(prev, record):
            rows = {c: list(prev.rows[c]) + list(v) for c, v in record.rows.items()}
            return replace(prev, rows=rows)
    if isinstance(prev, ArrayRows) and isinstance(record, ArrayRows):
        if _follows_array(prev, record):
            return replace(prev, array=np.concatenate([prev.array, record.array], axis=record.axis))
    return None


def _follows_table(prev: TableRows, record: TableRows) -> bool:
    return set(prev.rows) == set(record.rows) and record.offset == prev.offset + prev.n_rows >= 0


def _follows_array(prev: ArrayRows, record: ArrayRows) -> bool:
    axis = record.axis
    a, b = np.asarray(prev.array), np.asarray(record.array)
    same_shape = a.ndim == b.ndim and all(
        a.shape[i] == b.shape[i] for i in range(a.ndim) if i != axis
    )
    return (
        same_shape
        and a.dtype == b.dtype
        and record.offset == prev.offset + a.shape[axis]
        and a.nbytes + b.nbytes <= MAX_MERGED_ARRAY_BYTES
    )
