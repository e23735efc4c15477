"""A durable write queue: records are spooled to disk and applied to Tiled in order per run.

Tiled being down must not lose results. Every write is first appended to the spool (one msgpack
file per record, numbered, named after its run: ``<n>-<run uid>.msgpack``), then a worker
applies the records of each run strictly in order, retrying a failed one with capped
exponential backoff until it succeeds. Order matters only within a run, so runs are *lanes*:
while a run's head write fails and waits for its retry, the worker goes on with the other runs
(round robin), and a write that keeps failing holds back only the later writes of its own run.
With several workers (``workers``) each takes a lane no other worker is applying, so a request
that hangs until its timeout holds only its own run's lane too: the other runs go on through
the other workers. (Which is why an applier given to several workers must be safe to call from
several threads for different runs.)
Records left on disk by a previous process are replayed at start (files of before the run
lanes, ``<n>.msgpack``, are read and renamed once, with a log line).

Large arrays are not packed into their record: a whole-array write of at least
:data:`LARGE_ARRAY_BYTES` (and an :class:`ArrayFile` handed over as a file, by an after-scan
stage's child process) is kept as an npy file in ``arrays/``, named after its record
(``<n>-<run uid>.npy``), read back memory-mapped and written to Tiled slab by slab: packing,
unpacking and copying tens of MB held the consumer's GIL for long enough to delay live frames
(issue 14, point 7). The file goes when its record is applied, with it to ``rejected/``, or
with a discarded run; one whose record never reached the disk is removed at start.

A write the server will never accept (a permanent error, or the same record failing with a
transient error ``max_server_errors`` times in a row while the server is up: answered with a
5xx, a 404, a 409, ...; failures without an answer, ``is_unreachable``, are never counted) is
*rejected*: it is moved to ``rejected/`` beside its error, counted in
``beamwatch_writes_rejected_total``, reported through ``on_reject`` (the consumer writes it into
the run's metadata, and the run is not ``complete``) and the records after it
go on. A spool directory that cannot be written makes :meth:`Spool.put` wait and retry (the
dispatcher is held back; nothing is dropped); the worker thread survives any error of its own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from services.core import serialization
from services.core.identifiers import UID_PATTERN
from services.core.layout import RAW
from services.core.metrics import Metrics
from services.tiled import records as wire
from services.tiled.records import (
    ArrayFile,
    ArrayRows,
    ArrayWrite,
    ExternalFrames,
    RawDoc,
    RawDocs,
    Record,
    TableRows,
)

logger = logging.getLogger(__name__)

Applier = Callable[[Record], None]
RejectCallback = Callable[[Record, str], None]

#: The lane of records that belong to no run (never a run uid: those start with a letter or
#: digit).
NO_RUN = "_"
#: First retry delay of a failing write (seconds); doubled per failure up to ``max_backoff``.
FIRST_BACKOFF = 0.1
#: A whole-array write at least this large is spooled as an npy file, not inside its record.
LARGE_ARRAY_BYTES = 4 << 20


class PermanentWriteError(Exception):
    """A write that can never succeed (bad data); it is logged, counted and skipped."""


def lane_of(record: Record) -> str:
    """The lane (run uid, or :data:`NO_RUN`) a record is ordered in."""
    run = record.run
    return run if run and UID_PATTERN.fullmatch(run) else NO_RUN


class Spool:
    """On-disk queue of write records, ordered per run, with a retrying worker thread."""

    def __init__(
        self,
        directory: Path,
        apply: Applier,
        metrics: Metrics,
        *,
        max_backoff: float = 5.0,
        is_transient: Callable[[BaseException], bool] | None = None,
        is_unreachable: Callable[[BaseException], bool] | None = None,
        max_batch: int = 256,
        max_server_errors: int = 12,
        on_reject: RejectCallback | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._apply = apply
        self._metrics = metrics
        self._max_backoff = max_backoff
        self._is_transient = is_transient or (lambda exc: not isinstance(exc, PermanentWriteError))
        self._is_unreachable = is_unreachable or (lambda exc: not _is_server_answer(exc))
        self._cond = threading.Condition()
        #: pending record files per lane, in order; a lane exists while it has records
        self._lanes: dict[str, deque[Path]] = {}
        self._rotation: deque[str] = deque()  # lanes in round-robin order
        self._retry_at: dict[str, float] = {}  # lane -> when its failed head write is retried
        self._backoff: dict[str, float] = {}
        self._server_errors: dict[str, tuple[Path, int]] = {}  # lane -> (head, errors in a row)
        self._single: dict[str, Path] = {}  # lane -> head file to apply alone (a merge failed)
        self._count = 0
        self._stop = False
        self._busy: set[str] = set()  # lanes being applied (one worker each)
        self._max_batch = max_batch
        self._max_server_errors = max_server_errors
        self._on_reject = on_reject
        self.rejected_dir = self.directory / "rejected"
        #: npy files of large array writes (:class:`ArrayFile`), named after their records
        self.arrays_dir = self.directory / "arrays"
        name = f"spool-{self.directory.name}"
        self._threads = [
            threading.Thread(target=self._run, name=name if i == 0 else f"{name}-{i}")
            for i in range(workers)
        ]
        existing = self._existing_records()
        self._remove_orphan_arrays({path.stem for _, path in existing})
        self._next = (_number(existing[-1][1]) + 1) if existing else 0
        for lane, path in existing:
            self._enqueue(lane, path)
        self._set_gauges()
        if existing:
            logger.warning("replaying %d spooled writes from %s", len(existing), self.directory)

    # ---- records on disk ---------------------------------------------------------------------
    def _existing_records(self) -> list[tuple[str, Path]]:
        """(lane, file) of the records on disk, in number order; older files get their lane."""
        found: list[tuple[str, Path]] = []
        migrated = 0
        for path in sorted(self.directory.glob("*.msgpack"), key=_number):
            number, sep, lane = path.stem.partition("-")
            if sep:
                found.append((lane, path))
                continue
            found.append(self._migrate(path))
            migrated += 1
        if migrated:
            logger.warning(
                "spool %s: %d records of the format before run lanes and record versions "
                "read and rewritten as version %d records, each in its run's lane",
                self.directory,
                migrated,
                wire.RECORD_VERSION,
            )
        return found

    def _remove_orphan_arrays(self, records: set[str]) -> None:
        """Array files whose record never reached the disk (a crash in :meth:`put`), and
        half-moved ones, are removed."""
        if not self.arrays_dir.is_dir():
            return
        for path in self.arrays_dir.iterdir():
            if path.stem not in records:
                logger.info("removing spooled array %s: no record refers to it", path.name)
                path.unlink(missing_ok=True)

    def _array_path(self, record_path: Path) -> Path:
        """Where the array of the record file ``record_path`` is kept (if it has one)."""
        return self.arrays_dir / f"{record_path.stem}.npy"

    def _unlink(self, record_path: Path) -> None:
        """Remove an applied (or discarded) record and its array file."""
        record_path.unlink(missing_ok=True)
        self._array_path(record_path).unlink(missing_ok=True)

    def _stage_array(self, record: Record) -> tuple[Record, Path | None]:
        """A large array (or a handed-over array file) moved to a temporary file in
        ``arrays/``, outside the spool's lock; the record then refers to it."""
        if isinstance(record, ArrayWrite):
            array = np.asarray(record.array)
            if array.nbytes < LARGE_ARRAY_BYTES or array.dtype.hasobject:
                return record, None
            self.arrays_dir.mkdir(exist_ok=True)
            tmp = self.arrays_dir / f"tmp-{uuid.uuid4().hex}.npy"
            np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
            staged: Record = ArrayFile(
                record.path, record.key, tmp.name, dims=record.dims, metadata=record.metadata
            )
            return staged, tmp
        if isinstance(record, ArrayFile):
            source = Path(record.file)
            if not source.is_absolute():
                raise ValueError(f"array_file record: {record.file!r} is not an absolute path")
            self.arrays_dir.mkdir(exist_ok=True)
            tmp = self.arrays_dir / f"tmp-{uuid.uuid4().hex}.npy"
            shutil.move(source, tmp)  # a rename within the data dir
            return replace(record, file=tmp.name), tmp
        return record, None

    def _migrate(self, path: Path) -> tuple[str, Path]:
        """A record file named ``<n>.msgpack`` (before run lanes) rewritten with its lane."""
        try:
            record = wire.loads(path.read_bytes())
        except (OSError, serialization.MalformedMessage):
            return NO_RUN, path  # the worker sets unreadable records aside
        lane = lane_of(record)
        target = self._path(_number(path), lane)
        try:
            self._write_file(target, wire.dumps(record))
            path.unlink()
        except OSError as exc:
            logger.error("cannot rewrite spool record %s (read in place): %s", path, exc)
            return lane, path
        return lane, target

    def _path(self, number: int, lane: str) -> Path:
        return self.directory / f"{number:012d}-{lane}.msgpack"

    def _enqueue(self, lane: str, path: Path) -> None:
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
            self._rotation.append(lane)
        queue.append(path)
        self._count += 1

    def _set_gauges(self) -> None:
        service = self._metrics.service
        self._metrics.queue_depth.labels(service).set(self._count)
        self._metrics.spool_runs_retrying.labels(service).set(len(self._retry_at))

    # ---- public --------------------------------------------------------------------------------
    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def discard_runs(self, runs: Iterable[str]) -> int:
        """Before :meth:`start`: delete the queued records of these runs; return how many."""
        if any(t.is_alive() for t in self._threads):
            raise RuntimeError("discard_runs() is for records of a previous process, before start")
        dropped = 0
        with self._cond:
            for run in set(runs):
                for path in self._lanes.pop(run, ()):
                    self._unlink(path)
                    dropped += 1
                if run in self._rotation:
                    self._rotation.remove(run)
            self._count -= dropped
            self._set_gauges()
        return dropped

    def put(self, record: Record) -> None:
        """Persist a record to disk and queue it; returns once it is on disk.

        While the directory cannot be written, waits and retries (logged and counted): the
        caller is held back, the record is never dropped. An :class:`ArrayFile` names an npy
        file by its absolute path: the spool takes it over (moves it into ``arrays/``).
        """
        record, array_tmp = self._stage_array(record)
        lane = lane_of(record)
        backoff = 0.05
        with self._cond:
            path = self._path(self._next, lane)
            if isinstance(record, ArrayFile) and array_tmp is not None:
                array_path = self._array_path(path)
                os.replace(array_tmp, array_path)
                record = replace(record, file=array_path.name)
            payload = wire.dumps(record)
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
            self._enqueue(lane, path)
            self._set_gauges()
            self._cond.notify_all()

    @staticmethod
    def _write_file(path: Path, payload: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)

    def is_alive(self) -> bool:
        """True while every worker thread runs (a consumer whose worker died must restart)."""
        return all(t.is_alive() for t in self._threads)

    def depth(self) -> int:
        """Records not applied yet (the ones being applied included)."""
        with self._cond:
            return self._count

    def pending(self, run: str) -> int:
        """Records of ``run`` not applied yet."""
        with self._cond:
            return len(self._lanes.get(run, ()))

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Block until every queued record has been applied; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._count or self._busy:
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
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)

    # ---- worker --------------------------------------------------------------------------------
    def _next_lane(self) -> str | None:
        """Under the lock: wait for a lane whose head write is due and that no other worker is
        applying (round robin); None: stop."""
        while not self._stop:
            now = time.monotonic()
            soonest: float | None = None
            for _ in range(len(self._rotation)):
                lane = self._rotation[0]
                self._rotation.rotate(-1)
                if lane in self._busy:
                    continue
                due = self._retry_at.get(lane, 0.0)
                if due <= now:
                    return lane
                soonest = due if soonest is None else min(soonest, due)
            self._cond.wait(None if soonest is None else max(soonest - now, 0.001))
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                lane = self._next_lane()
                if lane is None:
                    return
                single = self._single.get(lane) == self._lanes[lane][0]
                candidates = list(islice(self._lanes[lane], 1 if single else self._max_batch))
                self._busy.add(lane)
            done: list[Path] = []
            try:
                done = self._apply_lane(lane, candidates)
            except Exception:
                # Never die silently: reading a record or the disk failed; try again shortly.
                self._metrics.spool_errors.labels(self._metrics.service, "worker").inc()
                logger.exception("spool worker error; retrying")
                with self._cond:
                    self._retry_at[lane] = time.monotonic() + self._max_backoff
            finally:
                with self._cond:
                    self._busy.discard(lane)
                    self._remove_done(lane, done)
                    self._set_gauges()
                    self._cond.notify_all()

    def _remove_done(self, lane: str, done: list[Path]) -> None:
        queue = self._lanes.get(lane)
        if queue is None:
            return
        for path in done:
            if queue and queue[0] == path:
                queue.popleft()
                self._count -= 1
        if not queue:
            del self._lanes[lane]
            self._rotation.remove(lane)
            self._retry_at.pop(lane, None)
            self._backoff.pop(lane, None)
            self._server_errors.pop(lane, None)
            self._single.pop(lane, None)

    def _load(self, path: Path) -> Record:
        """A spooled record; an :class:`ArrayFile`'s ``file`` made the path of its array."""
        record = wire.loads(path.read_bytes())
        if isinstance(record, ArrayFile):
            record = replace(record, file=str(self.arrays_dir / Path(record.file).name))
        return record

    def _batch(self, candidates: list[Path]) -> tuple[list[Path], list[Record]]:
        """The first record, plus the following ones while all of them can be merged."""
        paths = [candidates[0]]
        records = [self._load(candidates[0])]
        if not _mergeable(records[0]):
            return paths, records
        for path in candidates[1:]:
            record = self._load(path)
            if not _mergeable(record):
                break
            paths.append(path)
            records.append(record)
        return paths, records

    def _apply_lane(self, lane: str, candidates: list[Path]) -> list[Path]:
        """Apply the head of a lane; return the files done (empty: retry the lane later)."""
        try:
            paths, records = self._batch(candidates)
        except serialization.MalformedMessage as exc:
            # A record file that cannot be decoded (disk damage): keep it aside, go on.
            self._reject(candidates[:1], None, exc, raw=candidates[0])
            self._unlink(candidates[0])
            return candidates[:1]
        try:
            merged = merge_records(records) if len(records) > 1 else records
        except Exception:  # noqa: BLE001 - a malformed record: apply them one by one
            logger.exception("cannot merge spooled writes; applying them one by one")
            merged = records
        for record in merged:
            try:
                self._apply(record)
            except Exception as exc:
                if len(paths) > 1:
                    # Retried one record at a time (the merged writes applied already are
                    # idempotent), so that what is rejected is exactly the failing record.
                    with self._cond:
                        self._single[lane] = paths[0]
                    if self._is_transient(exc):
                        self._retry_later(lane, paths[0], record, exc)
                    return []
                if self._gives_up(lane, paths[0], exc):
                    with self._cond:
                        if self._stop:
                            return []  # shutting down: keep it on disk, decide next time
                    self._reject(paths, record, exc)
                    break
                self._retry_later(lane, paths[0], record, exc)
                return []
        with self._cond:
            self._backoff.pop(lane, None)
            self._retry_at.pop(lane, None)
            self._server_errors.pop(lane, None)
            self._single.pop(lane, None)
        for path in paths:
            self._unlink(path)
        return paths

    def _gives_up(self, lane: str, head: Path, exc: BaseException) -> bool:
        """Whether a failed write is never to be accepted (permanent, or too many 5xx)."""
        if not self._is_transient(exc):
            return True
        if self._is_unreachable(exc):
            return False  # the server is down or restarting: retried until it answers
        with self._cond:
            previous, errors = self._server_errors.get(lane, (head, 0))
            errors = errors + 1 if previous == head else 1
            self._server_errors[lane] = (head, errors)
        return errors >= self._max_server_errors

    def _retry_later(self, lane: str, head: Path, record: Record, exc: BaseException) -> None:
        """The lane waits for its backoff; the worker goes on with the other lanes."""
        with self._cond:
            backoff = self._backoff.get(lane, FIRST_BACKOFF / 2) * 2
            backoff = min(backoff, self._max_backoff)
            self._backoff[lane] = backoff
            self._retry_at[lane] = time.monotonic() + backoff
        self._metrics.tiled_write_retries.labels(self._metrics.service).inc()
        logger.warning(
            "Tiled write %s (%s %s) failed, retrying in %.2f s (other runs go on): %s",
            head.name,
            record.op,
            _target(record),
            backoff,
            exc,
        )

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
            if isinstance(record, ArrayFile):
                kept = self.rejected_dir / f"{name}.npy"
                if self._array_path(paths[0]).exists():
                    os.replace(self._array_path(paths[0]), kept)
                record = replace(record, file=kept.name)
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


def _number(path: Path) -> int:
    """The sequence number a record file is named by."""
    return int(path.stem.partition("-")[0])


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
    if isinstance(record, RawDocs):
        return f"raw/{record.run} {record.label}"
    key = getattr(record, "key", None)
    return "/".join((*record.path, key) if key else record.path)


#: Records that can be merged when several are queued (Tiled lagging behind): appends to
#: tables and growing arrays, and raw documents (a run's Event rows become one table append,
#: its StreamDatums one data-source update), and the growth of a raw frame array (the
#: largest count says it all). They carry explicit offsets, seq_nums or counts, so
#: re-applying a merged batch after a failure is harmless.
MERGEABLE = (TableRows, ArrayRows, RawDoc, RawDocs, ExternalFrames)
#: Largest array append one merge makes under ``raw/`` (detector frames: large blocks are
#: what makes the raw path keep up at beamline rates) and elsewhere (analysis results, which
#: a viewer watches grow: a lagging Tiled must still show the crack map fill in steps; with
#: 8 MB a whole small crack map went in one write and the page never saw it grow).
MAX_MERGED_ARRAY_BYTES = 8 << 20
MAX_MERGED_RESULT_BYTES = 1 << 20


def _mergeable(record: Record) -> bool:
    """Whether ``record`` can join a merged batch; a run's stop ends a batch (it is written
    after every row and frame before it)."""
    if isinstance(record, RawDoc) and record.name == "stop":
        return False
    return isinstance(record, MERGEABLE)


def merge_records(records: list[Record]) -> list[Record]:
    """Merge queued appends to the same table or array into one write each.

    Order is kept per target (the first record of a target fixes its place); appends with a
    gap or a different axis start a new write, and so does an array append that would grow a
    merged write beyond :data:`MAX_MERGED_ARRAY_BYTES`. The raw documents of a run
    (:class:`RawDoc`, and those inside :class:`RawDocs`) become one :class:`RawDocs` at the
    place of the first. Arrays are joined once, at the end (joining at every step would copy
    quadratically). The input records are not changed.
    """
    merged: list[Record] = []
    place_of: dict[tuple[Any, ...], int] = {}
    arrays: dict[int, list[np.ndarray]] = {}  # place of an array append -> its parts
    extent: dict[int, tuple[int, int]] = {}  # place -> (rows along the axis, bytes) of its parts
    raw_docs: dict[int, list[RawDoc]] = {}  # place of a run's raw documents -> them
    for record in records:
        if isinstance(record, RawDoc | RawDocs):
            docs = list(record.records) if isinstance(record, RawDocs) else [record]
            place = place_of.get(("raw_docs", record.run))
            if place is None:
                place_of[("raw_docs", record.run)] = len(merged)
                raw_docs[len(merged)] = list(docs)
                merged.append(record)
            else:
                raw_docs[place] += docs
            continue
        if not isinstance(record, MERGEABLE):
            merged.append(record)
            continue
        target = (record.op, record.path, record.key, getattr(record, "axis", 0))
        place = place_of.get(target)
        if place is not None:
            prev = merged[place]
            if isinstance(record, ArrayRows) and isinstance(prev, ArrayRows):
                part = np.asarray(record.array)
                if _follows_array(arrays[place][0], extent[place], record, prev.offset):
                    arrays[place].append(part)
                    rows, nbytes = extent[place]
                    extent[place] = (rows + part.shape[record.axis], nbytes + part.nbytes)
                    continue
            else:
                joined = _joined(prev, record)
                if joined is not None:
                    merged[place] = joined
                    continue
        place_of[target] = len(merged)
        if isinstance(record, ArrayRows):
            part = np.asarray(record.array)
            arrays[len(merged)] = [part]
            extent[len(merged)] = (part.shape[record.axis], part.nbytes)
        merged.append(record)
    for place, parts in arrays.items():
        write = merged[place]
        if len(parts) > 1 and isinstance(write, ArrayRows):
            merged[place] = replace(write, array=np.concatenate(parts, axis=write.axis))
    for place, docs in raw_docs.items():
        write = merged[place]
        if len(docs) > 1 or isinstance(write, RawDocs):
            merged[place] = RawDocs(str(write.run), tuple(docs))
    return merged


def _joined(prev: Record, record: TableRows | ArrayRows | ExternalFrames) -> Record | None:
    """``prev`` and ``record`` as one write, or None if ``record`` does not follow ``prev``."""
    if isinstance(prev, ExternalFrames) and isinstance(record, ExternalFrames):
        # frames advertised only grow: the larger count says everything the smaller does
        return record if record.frames >= prev.frames else prev
    if isinstance(prev, TableRows) and isinstance(record, TableRows):
        if _follows_table(prev, record):
            rows = {c: list(prev.rows[c]) + list(v) for c, v in record.rows.items()}
            return replace(prev, rows=rows)
    return None


def _follows_table(prev: TableRows, record: TableRows) -> bool:
    return set(prev.rows) == set(record.rows) and record.offset == prev.offset + prev.n_rows >= 0


def _follows_array(
    a: np.ndarray, extent: tuple[int, int], record: ArrayRows, first_offset: int
) -> bool:
    """``record`` continues the arrays merged so far (the first ``a``, at ``first_offset``;
    ``extent``: their rows along the axis and bytes, kept as running totals so that merging
    many small appends stays linear) right after their end, with the same shape and dtype,
    within the size cap."""
    axis = record.axis
    b = np.asarray(record.array)
    same_shape = a.ndim == b.ndim and all(
        a.shape[i] == b.shape[i] for i in range(a.ndim) if i != axis
    )
    return (
        same_shape
        and a.dtype == b.dtype
        and record.offset == first_offset + extent[0]
        and extent[1] + b.nbytes <= _merge_cap(record)
    )


def _merge_cap(record: ArrayRows) -> int:
    return MAX_MERGED_ARRAY_BYTES if record.path[:1] == (RAW,) else MAX_MERGED_RESULT_BYTES
