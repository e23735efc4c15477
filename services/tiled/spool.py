"""A durable, ordered write queue: records are spooled to disk and applied to Tiled in order.

Tiled being down must not lose results. Every write is first appended to the spool (one msgpack
file per record, numbered), then a single worker applies records strictly in order, retrying
each with capped exponential backoff until it succeeds. Records left on disk by a previous
process are replayed at start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.core import serialization
from services.core.metrics import Metrics

logger = logging.getLogger(__name__)

Applier = Callable[[dict[str, Any]], None]


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
        self._thread = threading.Thread(target=self._run, name=f"spool-{self.directory.name}")
        self._metrics.queue_depth.labels(metrics.service).set(len(self._pending))
        if existing:
            logger.warning("replaying %d spooled writes from %s", len(existing), self.directory)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: dict[str, Any]) -> None:
        """Persist a record to disk and queue it; returns once it is on disk."""
        payload = serialization.dumps(record)
        with self._cond:
            path = self.directory / f"{self._next:012d}.msgpack"
            self._next += 1
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, path)
            self._pending.append(path)
            self._metrics.queue_depth.labels(self._metrics.service).set(len(self._pending))
            self._cond.notify_all()

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
            finally:
                with self._cond:
                    self._busy = False
                    for path in done:
                        if self._pending and self._pending[0] == path:
                            self._pending.pop(0)
                    self._metrics.queue_depth.labels(self._metrics.service).set(len(self._pending))
                    self._cond.notify_all()

    def _batch(self, candidates: list[Path]) -> tuple[list[Path], list[dict[str, Any]]]:
        """The first record, plus the following ones while all of them can be merged."""
        paths = [candidates[0]]
        records = [serialization.loads(candidates[0].read_bytes())]
        if records[0].get("op") not in MERGEABLE_OPS:
            return paths, records
        for path in candidates[1:]:
            record = serialization.loads(path.read_bytes())
            if record.get("op") not in MERGEABLE_OPS:
                break
            paths.append(path)
            records.append(record)
        return paths, records

    def _apply_with_retry(self, candidates: list[Path]) -> list[Path]:
        paths, records = self._batch(candidates)
        merged = merge_records(records) if len(records) > 1 else records
        backoff = 0.1
        for record in merged:
            while True:
                try:
                    self._apply(record)
                except Exception as exc:
                    if not self._is_transient(exc):
                        logger.error(
                            "dropping spooled write %s (%s): %s",
                            paths[0].name,
                            record.get("op", "?"),
                            exc,
                            exc_info=True,
                        )
                        self._metrics.pipeline_errors.labels(self._metrics.service, "spool").inc()
                        break
                    with self._cond:
                        if self._stop:
                            return []  # keep everything on disk for the next start
                    self._metrics.tiled_write_retries.labels(self._metrics.service).inc()
                    logger.warning(
                        "Tiled write %s (%s) failed, retrying in %.1f s: %s",
                        paths[0].name,
                        record.get("op", "?"),
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


#: Ops whose records can be merged when several are queued (Tiled lagging behind): appends to
#: tables and growing arrays. They carry explicit offsets, so re-applying a merged batch after a
#: failure is harmless.
MERGEABLE_OPS = frozenset({"table_rows", "array_rows"})
#: Largest array append one merge makes. A lagging Tiled still sees a growing array grow in
#: steps (a viewer watches the crack map fill slice by slice) and requests stay bounded.
MAX_MERGED_ARRAY_BYTES = 1 << 20


def merge_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge queued appends to the same table or array into one write each.

    Order is kept per target (the first record of a target fixes its place); appends with a
    gap or a different axis start a new write, and so does an array append that would grow a
    merged write beyond :data:`MAX_MERGED_ARRAY_BYTES`.
    """
    import numpy as np

    merged: list[dict[str, Any]] = []
    last_for: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        target = (record["op"], tuple(record["path"]), record["key"], record.get("axis", 0))
        prev = last_for.get(target)
        if prev is not None and record["op"] == "table_rows" and _follows_table(prev, record):
            for column, values in record["rows"].items():
                prev["rows"][column] = list(prev["rows"][column]) + list(values)
            continue
        if prev is not None and record["op"] == "array_rows" and _follows_array(prev, record):
            axis = int(record.get("axis", 0))
            prev["array"] = np.concatenate([prev["array"], record["array"]], axis=axis)
            continue
        copy = dict(record)
        if record["op"] == "table_rows":
            copy["rows"] = {k: list(v) for k, v in record["rows"].items()}
        merged.append(copy)
        last_for[target] = copy
    return merged


def _follows_table(prev: dict[str, Any], record: dict[str, Any]) -> bool:
    n = len(next(iter(prev["rows"].values())))
    return (
        set(prev["rows"]) == set(record["rows"])
        and int(record.get("offset", -1)) == int(prev.get("offset", -1)) + n
    )


def _follows_array(prev: dict[str, Any], record: dict[str, Any]) -> bool:
    import numpy as np

    axis = int(record.get("axis", 0))
    a, b = np.asarray(prev["array"]), np.asarray(record["array"])
    same_shape = a.ndim == b.ndim and all(
        a.shape[i] == b.shape[i] for i in range(a.ndim) if i != axis
    )
    return (
        same_shape
        and a.dtype == b.dtype
        and int(record["offset"]) == int(prev["offset"]) + a.shape[axis]
        and a.nbytes + b.nbytes <= MAX_MERGED_ARRAY_BYTES
    )
