"""Applying spooled write records (:mod:`services.tiled.records`) to Tiled, idempotently
where Tiled allows it: raw documents through the retry-safe ``TiledWriter``
(:mod:`services.tiled.raw_writer`), containers adopted when they exist, arrays patched at
offsets, table rows appended at known row offsets.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from services.core.layout import (
    METADATA,
    RAW_ROWS,
    ROW_INDEX,
    Status,
    not_complete,
    status_node,
)
from services.tiled.records import (
    ArrayFile,
    ArrayRows,
    ArrayWrite,
    Container,
    ExternalFrames,
    Metadata,
    RawDoc,
    RawDocs,
    Record,
    TableRows,
)
from services.tiled.settling import install, requests_of
from services.tiled.spool import PermanentWriteError, lane_of
from services.tiled.tables import create_ordered_table

logger = logging.getLogger(__name__)

#: Statuses that never replace a final one in Tiled (:meth:`TiledApplier._without_stale_status`).
_NEVER_OVER_FINAL = frozenset({Status.QUEUED, Status.RUNNING, Status.INTERRUPTED})
_FINAL_IN_TILED = frozenset({Status.COMPLETE, Status.INCOMPLETE, Status.FAILED})


def connect(
    url: str, api_key: str, *, timeout: float = 20.0, settle_timeout: float | None = 600.0
) -> Any:
    """A Tiled client on ``url``; retries are left to the spool.

    No request waits more than ``timeout`` seconds for an answer (connecting: 5 s at most):
    a server that hangs (a locked catalog, a dead peer) costs one timeout, then the spool
    retries, and an idempotent write that did commit is not applied twice. A write that timed
    out goes on until the server answers it (at most ``settle_timeout`` s), and the run's
    next request (the retry's re-read included) waits for that
    (:mod:`services.tiled.settling`): a write committed after its timeout is seen by the
    retry, never applied twice.
    """
    import httpx
    import tiled.client.utils as tiled_client_utils
    from tiled.client import from_uri

    # The spool retries every write itself, with its own backoff, and counts server errors to
    # tell a write Tiled will never accept. The client's own retries of 5xx answers (10
    # attempts within up to 45 s per request by default, ``TILED_RETRY_ATTEMPTS``) would hide
    # that and hold every later write of the consumer that long: one retry here, the rest
    # is the spool's.
    tiled_client_utils.TILED_RETRY_ATTEMPTS = min(tiled_client_utils.TILED_RETRY_ATTEMPTS, 2)
    tiled_client_utils.TILED_RETRY_TIMEOUT = min(tiled_client_utils.TILED_RETRY_TIMEOUT, 5.0)
    client = from_uri(
        url, api_key=api_key, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))
    )
    install(client, timeout=timeout, settle_timeout=settle_timeout)
    return client


#: HTTP answers a restarting or recovering server gives to a write that can go through later:
#: a node not there yet (a parent lost with a killed request, 404), a half-created node (409),
#: a request timeout or a busy server (408, 423, 425, 429). Retried like a 5xx; the spool gives
#: a write up only after ``max_server_errors`` such answers in a row.
RETRIED_STATUSES = frozenset({404, 408, 409, 423, 425, 429})


def is_unreachable(exc: BaseException) -> bool:
    """True when no answer came: the server is down, restarting or hung (connection refused
    or reset, a timeout, a response cut off: ``httpx.RemoteProtocolError``)."""
    import httpx

    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write is retried: everything a Tiled restart can cause is.

    No answer (:func:`is_unreachable`), a 5xx, one of :data:`RETRIED_STATUSES`, and a
    ``KeyError`` (tiled's client turns a 404 or 410 of a lookup into one: a node that a
    killed request never created) are retried. Only other answers (a 4xx such as 422 for a
    wrong shape or 415) and :class:`PermanentWriteError` (data Tiled cannot take, checked
    before sending) are permanent: the write is rejected at once.
    """
    if isinstance(exc, PermanentWriteError):
        return False
    if is_unreachable(exc):
        return True
    status = _status(exc)
    if status is not None:
        return status >= 500 or status in RETRIED_STATUSES
    return isinstance(exc, KeyError)


def write_whole_array(parent: Any, array: np.ndarray, **kw: Any) -> Any:
    """``parent.write_array(array, **kw)``, also for an array without elements.

    Tiled's client chunks an array with dask's ``normalize_chunks("auto")``, which divides by
    zero for an empty array whose other axes are long (``(0, 300, 2)``: a XANES scan of 300
    frames in which no particle was found); an empty array goes as one chunk of its own shape.
    """
    if array.size == 0:
        import dask.array

        array = dask.array.from_array(array, chunks=tuple((int(s),) for s in array.shape))
    return parent.write_array(array, **kw)


def ensure_container(client: Any, path: list[str], metadata: dict[str, Any] | None = None) -> Any:
    """The container at ``path``, created (with ``metadata`` on the last) where missing.

    One request when it exists (``client[path]`` looks the whole path up at once); walking
    down key by key, two requests per level, cost a raw run 4 to 6 requests more.
    """
    if path:
        try:
            return client[tuple(path)]
        except KeyError:
            pass
    node = client
    for i, key in enumerate(path):
        if key in node:
            node = node[key]
        else:
            md = metadata if (i == len(path) - 1 and metadata) else {}
            try:
                node = node.create_container(key=key, metadata=md)
            except Exception as exc:
                if _is_conflict(exc):
                    node = node[key]
                else:
                    raise
    return node


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a server's answer, None when no answer came (network, timeout)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return None if status is None else int(status)


def _is_conflict(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 409


class TiledApplier:
    """Applies records to one Tiled server; owns the raw ``TiledWriter``.

    Safe to call from several threads for records of different runs (the spool's workers
    never apply two records of one run at once). There is no lock among writers: the table
    storage takes concurrent appends (the embedded SQLite through its server's single
    connection, PostgreSQL by itself; ``tests/services/test_tiled_storage.py``). DuckDB table
    storage does not (tiled 0.2.20 shares one connection between requests: "No active
    transaction", rows twice) and is not supported. A host-wide lock around appends was used
    for it before; a request hanging under that lock held every run of every consumer.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._raw_writer: Any = None
        self._raw_writer_lock = threading.Lock()
        self._containers: dict[tuple[str, ...], Any] = {}
        self._tables: dict[tuple[str, ...], Any] = {}
        self._arrays: dict[tuple[str, ...], tuple[Any, int]] = {}
        self._table_len: dict[tuple[str, ...], int] = {}
        self._uncertain: set[tuple[str, ...]] = set()
        #: tables made without a row_index column (before it existed)
        self._unindexed: set[tuple[str, ...]] = set()
        #: external frame arrays: node, its data source id, frames advertised
        self._external: dict[tuple[str, ...], tuple[Any, int, int]] = {}
        #: whole arrays this applier wrote (or replaced): they exist, so the next replacement
        #: deletes them without looking them up first
        self._whole: set[tuple[str, ...]] = set()
        #: containers this applier created: what goes in them is created without a lookup
        self._created: set[tuple[str, ...]] = set()

    # ---- nodes: created once, looked up only when their state in Tiled is not known ---------
    #
    # A run costs the one Tiled server more CPU than its analysis worker (README, "Worker
    # scaling"), so no request is made whose answer this applier knows already: the
    # containers it created or found are cached (containers are never removed), and an array
    # or table that a run's writes make for the first time is created at once, without asking
    # first whether it exists. Tiled answers 409 when it does (a replay after a crash, a
    # JetStream redelivery, a retry of a write that committed before its answer was lost):
    # then, and only then, it is looked up and the write goes on as before (rows at known
    # offsets, a whole array replaced). The reads that a correctness rule needs stay: the
    # status in Tiled before a non-final status is written (:meth:`_without_stale_status`),
    # the ``rejected_writes`` before ``complete`` (:meth:`_metadata`), the rows of a raw run
    # before it is called ``complete`` (:meth:`_raw_rows_checked`), and a table's length
    # after a failure or a restart (:meth:`_table_rows`).

    def _container(self, path: list[str] | tuple[str, ...]) -> Any:
        """The container at ``path``, cached: one lookup of the whole path the first time
        (none under a container this applier created); a missing one is created (``{}``
        metadata) under its parent, resolved likewise."""
        ident = tuple(path)
        if not ident:
            return self.client
        node = self._containers.get(ident)
        if node is not None:
            return node
        if ident[:-1] in self._created:
            # under a container this applier made: created at once (409: taken as it is)
            return self._create_container(ident, {})[0]
        try:
            node = self.client[ident]
        except KeyError:
            node, _created = self._create_container(ident, {})
        self._containers[ident] = node
        return node

    def _create_container(
        self, path: tuple[str, ...], metadata: dict[str, Any]
    ) -> tuple[Any, bool]:
        """The container at ``path`` and whether this call created it (with ``metadata``):
        created at once under its (cached) parent; taken as it is when Tiled answers 409."""
        node = self._containers.get(path)
        if node is not None:
            return node, False
        parent = self._container(path[:-1])
        try:
            node = parent.create_container(key=path[-1], metadata=metadata)
            created = True
        except Exception as exc:
            if not _is_conflict(exc):
                raise
            node, created = parent[path[-1]], False
        self._containers[path] = node
        if created:
            self._created.add(path)
        return node, created

    def __call__(self, record: Record) -> None:
        # a write of this run that outlived its timeout is waited for (services.tiled.settling)
        with requests_of(lane_of(record)):
            self._apply(record)

    def _apply(self, record: Record) -> None:
        if isinstance(record, RawDoc):
            self._raw_doc(record)
        elif isinstance(record, RawDocs):
            self._raw_docs(record)
        elif isinstance(record, Container):
            self._container_record(record)
        elif isinstance(record, Metadata):
            self._metadata(record)
        elif isinstance(record, ArrayWrite):
            self._array(record)
        elif isinstance(record, ArrayFile):
            self._array_file(record)
        elif isinstance(record, ArrayRows):
            self._array_rows(record)
        elif isinstance(record, TableRows):
            self._table_rows(record)
        elif isinstance(record, ExternalFrames):
            self._external_frames(record)
        else:
            raise PermanentWriteError(f"unknown write record {type(record).__name__}")

    # ---- records --------------------------------------------------------------------------
    def _raw_doc(self, record: RawDoc) -> None:
        self._raw_docs(RawDocs(record.run, (record,)))

    def _raw_docs(self, record: RawDocs) -> None:
        """A run's raw documents in one batch (held back by the raw router, or merged by the
        spool when Tiled lags): Event rows in blocks, StreamDatums one update per node."""
        writer = self._raw_writer
        if writer is None:
            with self._raw_writer_lock:  # one writer: it holds the per-run state
                if self._raw_writer is None:
                    # bluesky's TiledWriter, with the parts that are not safe to retry replaced
                    from services.tiled.raw_writer import RawWriter

                    self._raw_writer = RawWriter(ensure_container(self.client, ["raw"]))
                writer = self._raw_writer
        records = record.records
        try:
            writer.apply_many(records)
        except Exception as exc:
            if len(records) == 1 or _status(exc) is None:
                raise
            # Tiled answered with an error: one document it refuses must not cost the
            # others of the record, so they go one by one (each is written once, whatever
            # was in already); the error of the first refused one is raised after.
            logger.warning("raw write of %d documents refused (%s); one by one", len(records), exc)
            first: Exception | None = None
            for one in records:
                try:
                    writer.apply_many([one])
                except Exception as one_exc:
                    if _status(one_exc) is None:
                        raise
                    first = first or one_exc
            if first is not None:
                raise first from exc

    def _metadata(self, record: Metadata) -> None:
        """Merge metadata; a run or pipeline with a rejected write is never ``complete``.

        Both orders are covered, by what Tiled holds (so a consumer restarted in between
        changes nothing): a ``complete`` status written after a rejection notice
        (``rejected_writes``) is written ``incomplete``, and a notice written after a
        ``complete`` status makes it ``incomplete``.
        """
        node = self._container(record.path)
        metadata = self._without_stale_status(record.path, record.metadata)
        if not metadata:
            return
        status = status_node(record.path)
        if status is not None and status[0] == tuple(record.path):
            key = status[1]
            if record.notice or metadata.get(key) == Status.COMPLETE:
                # Read from Tiled, never from a cache: the notice (or the ``complete``) may
                # have been written by an earlier process of this worker (a replay after a
                # crash) or by another worker that held the run, which nothing here knows of.
                current = self.client[tuple(record.path)].metadata
                if record.notice and current.get(key) == Status.COMPLETE:
                    metadata = {**metadata, key: Status.INCOMPLETE.value}
                elif not record.notice and current.get(METADATA.rejected_writes):
                    logger.warning(
                        "%s: %s incomplete, not complete: %d writes were rejected",
                        "/".join(record.path),
                        key,
                        len(current[METADATA.rejected_writes]),
                    )
                    metadata = {**metadata, key: Status.INCOMPLETE.value}
            if key == METADATA.raw_status and key in metadata:
                metadata = self._raw_frames_checked(record.path, metadata)
            if metadata.get(key) == Status.COMPLETE and RAW_ROWS in metadata:
                metadata = self._raw_rows_checked(record.path, metadata)
        node.update_metadata(metadata=metadata, drop_revision=True)

    def _raw_frames_checked(
        self, path: tuple[str, ...], metadata: dict[str, Any]
    ) -> dict[str, Any]:
        """A raw run's status with the frames its stop found no Datum for (lost on the bus):
        named in ``beamwatch_unregistered_frames``, and never ``complete``."""
        writer = self._raw_writer
        unregistered = writer.take_unregistered(path[1]) if writer is not None else {}
        if not unregistered:
            return metadata
        return {
            **metadata,
            METADATA.raw_status: not_complete(metadata[METADATA.raw_status]),
            METADATA.unregistered_frames: unregistered,
        }

    def _raw_rows_checked(self, path: tuple[str, ...], metadata: dict[str, Any]) -> dict[str, Any]:
        """A raw run's ``complete`` status, or ``incomplete`` with the seq_nums Tiled lacks.

        ``complete`` means every row is in: each stream's table must hold the rows the router
        spooled (``RAW_ROWS``), whatever happened to their writes on the way.
        """
        missing: dict[str, list[int]] = {}
        for stream, count in metadata[RAW_ROWS].items():
            if not count:
                continue
            try:
                # the stream's table by its whole path, one lookup (a stream is a composite
                # node, whose table is ``base["internal"]``: two); read from Tiled, never
                # from the writer's state, which is what this checks
                table = self.client[(*path, stream, "internal")].read(["seq_num"])
                present = {int(s) for s in table["seq_num"]}
            except KeyError:
                present = set()
            if len(present) < count:
                missing[stream] = sorted(set(range(1, count + 1)) - present)
        if not missing:
            return metadata
        logger.error(
            "%s: rows missing in Tiled although the run was written whole (status incomplete): %s",
            "/".join(path),
            {stream: seq[:20] for stream, seq in missing.items()},
        )
        return {
            **metadata,
            METADATA.raw_status: Status.INCOMPLETE.value,
            "beamwatch_missing_seq_nums": missing,
            "beamwatch_rows_lost_in_writing": True,
        }

    def _container_record(self, record: Container) -> None:
        node, created = self._create_container(tuple(record.path), dict(record.metadata or {}))
        if created:
            # made by this very request with the record's metadata: no older metadata to
            # merge with, and no status in Tiled that this one could be stale against
            return
        metadata = self._without_stale_status(record.path, record.metadata or {})
        if metadata:
            node.update_metadata(metadata=metadata, drop_revision=True)

    def _without_stale_status(
        self, path: tuple[str, ...], metadata: dict[str, Any]
    ) -> dict[str, Any]:
        """``metadata`` without a ``queued`` / ``running`` / ``interrupted`` status when the
        pipeline's status in Tiled is already final (``complete``, ``incomplete``, ``failed``).

        Only a stale writer sends one then: a process that took a run again (JetStream handed
        its claim out twice: a stalled worker, a server restart) after another one finished
        it, or a process stopping while it redid an after-scan stage. Its status must not
        turn a finished pipeline back into one that never ends (seen in the chaos run with a
        second worker: ``running`` written after ``complete``). Results are per pipeline
        container and ``reprocess`` writes new ones, so a final status is never reopened.
        """
        status = status_node(path)
        if status is None or status[0] != tuple(path):
            return metadata
        key = status[1]
        if metadata.get(key) not in _NEVER_OVER_FINAL:
            return metadata
        try:
            # Read from Tiled, never from a cache (not even when this applier created the
            # node): the writer that finished the run is another process.
            current = self.client[tuple(path)].metadata.get(key)
        except KeyError:
            return metadata
        if current not in _FINAL_IN_TILED:
            return metadata
        logger.warning(
            "%s: status %s not written over %s (a stale writer of a finished run)",
            "/".join(path),
            metadata[key],
            current,
        )
        return {k: v for k, v in metadata.items() if k != key}

    def _replace(self, parent: Any, ident: tuple[str, ...], create: Any) -> Any:
        """``create()`` the array node ``ident`` (under ``parent``), replacing the node of
        that key if there is one: without a lookup first when this applier wrote it (it
        exists), else created at once, and deleted and created again when Tiled answers 409
        (a replay, a retry of a write that committed, another process's array)."""
        key = ident[-1]
        known = ident in self._whole or ident in self._arrays
        self._whole.discard(ident)  # (a failure below leaves it unknown: the retry asks Tiled)
        self._arrays.pop(ident, None)
        if known:
            parent.delete_contents([key], external_only=False)
            node = create()
        else:
            try:
                node = create()
            except Exception as exc:
                if not _is_conflict(exc):
                    raise
                parent.delete_contents([key], external_only=False)
                node = create()
        self._whole.add(ident)
        return node

    def _array(self, record: ArrayWrite) -> None:
        parent = self._container(record.path)
        key = record.key
        array = np.asarray(record.array)
        self._replace(
            parent,
            (*record.path, key),
            lambda: write_whole_array(
                parent, array, key=key, dims=record.dims, metadata=record.metadata
            ),
        )

    def _array_file(self, record: ArrayFile) -> None:
        """Write (or replace) a whole array from its npy file, one block of about
        :data:`UPLOAD_BLOCK_BYTES` along the first axis per request.

        Read memory-mapped and sent block by block, the consumer never holds a whole copy of
        it and never holds the GIL for long (``array.tobytes()`` of one block at a time; the
        upload itself releases it). The array is created with that chunking, so a retry after
        a failure part way replaces it whole.
        """
        from tiled.structures.array import ArrayStructure, BuiltinDtype
        from tiled.structures.core import StructureFamily
        from tiled.structures.data_source import DataSource

        array = np.load(record.file, mmap_mode="r", allow_pickle=False)
        parent = self._container(record.path)
        key = record.key
        ident = (*record.path, key)
        if array.ndim == 0 or array.shape[0] == 0:
            self._replace(
                parent,
                ident,
                lambda: write_whole_array(
                    parent, np.asarray(array), key=key, dims=record.dims, metadata=record.metadata
                ),
            )
            return
        step = block_rows(array.shape, array.dtype.itemsize)
        n, rest = divmod(array.shape[0], step)
        first = (step,) * n + ((rest,) if rest else ())
        structure = ArrayStructure(
            shape=tuple(array.shape),
            chunks=(first, *((int(s),) for s in array.shape[1:])),
            dims=record.dims,
            data_type=BuiltinDtype.from_numpy_dtype(array.dtype),
        )
        node = self._replace(
            parent,
            ident,
            lambda: parent.new(
                StructureFamily.array,
                [DataSource(structure=structure, structure_family=StructureFamily.array)],
                key=key,
                metadata=record.metadata,
            ),
        )
        zeros = (0,) * (array.ndim - 1)
        for i, start in enumerate(range(0, array.shape[0], step)):
            block = np.ascontiguousarray(array[start : start + step])
            node.write_block(block, block=(i, *zeros))

    def _array_rows(self, record: ArrayRows) -> None:
        """Write ``array`` at ``offset`` along ``axis``, extending the array.

        A block without elements (no particle found: ``(0, 1, 2)``) holds nothing to store,
        and Tiled answers HTTP 500 to it every time, which held back every later write of the
        consumer for the 12 retries before it was rejected: it is not sent.
        """
        rows = np.asarray(record.array)
        if rows.size == 0:
            logger.debug("%s: empty block %s not written", record.key, rows.shape)
            return
        parent = self._container(record.path)
        key = record.key
        ident = (*record.path, key)
        axis = record.axis
        offset = record.offset
        cached = self._arrays.get(ident)
        if cached is None and offset == 0:
            # the array's first rows: created at once (409: it is there already, below)
            try:
                node = parent.write_array(rows, key=key, dims=record.dims, metadata=record.metadata)
            except Exception as exc:
                if not _is_conflict(exc):
                    raise
            else:
                self._arrays[ident] = (node, rows.shape[axis])
                self._whole.discard(ident)
                return
        if cached is None:
            # made by an earlier process or a request whose answer was lost: its length in
            # Tiled says which of these rows are in already
            try:
                node = parent[key]
            except KeyError:
                if offset != 0:
                    raise PermanentWriteError(
                        f"{key}: first rows must start at offset 0, got {offset}"
                    ) from None
                raise  # 409 a moment ago, gone now (deleted): retried
            cached = self._arrays[ident] = (node, int(node.shape[axis]))
        node, current = cached
        if offset > current:
            raise PermanentWriteError(f"{key}: rows at offset {offset} leave a gap after {current}")
        end = offset + rows.shape[axis]
        position = tuple(offset if i == axis else 0 for i in range(rows.ndim))
        node.patch(rows.astype(node.dtype, copy=False), offset=position, extend=end > current)
        self._arrays[ident] = (node, max(current, end))

    def _external_frames(self, record: ExternalFrames) -> None:
        """Register the consumer's frame array as external data, or grow its advertised shape.

        Idempotent: the node is adopted when it exists (a request that failed after creating
        it, a consumer restarted), and the advertised number of frames never shrinks (every
        frame before it is on disk), so an older or repeated record changes nothing.
        """
        ident = (*record.path, record.key)
        cached = self._external.get(ident)
        if cached is None:
            parent = self._container(list(record.path))
            if record.key not in parent:
                try:
                    parent.new(
                        structure_family="array",
                        data_sources=[_frames_data_source(record, record.frames)],
                        key=record.key,
                        metadata=record.metadata,
                    )
                except Exception as exc:
                    if not _is_conflict(exc):
                        raise
            node = self.client.include_data_sources()[ident]
            cached = (node, node.data_sources()[0].id, int(node.shape[0]))
            self._external[ident] = cached
        node, source_id, advertised = cached
        if record.frames <= advertised:
            return
        from tiled.client.utils import handle_error
        from tiled.utils import safe_json_dump

        source = _frames_data_source(record, record.frames)
        source.id = source_id
        handle_error(
            node.context.http_client.put(
                node.uri.replace("/metadata/", "/data_source/", 1),
                content=safe_json_dump({"data_source": source}),
            )
        )
        self._external[ident] = (node, source_id, record.frames)

    def _table_rows(self, record: TableRows) -> None:
        """Append rows at a known row offset, so a retried append is never applied twice."""
        import pyarrow as pa

        table = pa.table({k: list(v) for k, v in record.rows.items()})
        if table.num_rows == 0:
            return  # no rows (no particle in a frame): nothing to append, no error
        parent = self._container(record.path)
        key = record.key
        ident = (*record.path, key)
        offset = record.offset
        node = self._tables.get(ident)
        if node is None:
            node = self._open_table(parent, ident, table, offset)
        if ident in self._unindexed and ROW_INDEX in table.column_names:
            table = table.drop_columns([ROW_INDEX])
        if ident in self._uncertain and offset >= 0:
            # After a failure or a restart the table may already hold these rows: its length
            # is read from Tiled (kept: exactly-once appends rest on it).
            self._table_len[ident] = len(node.read())
            self._uncertain.discard(ident)
        current = self._table_len.get(ident, offset)
        if offset >= 0 and current >= offset + table.num_rows:
            logger.info("rows %d.. of %s already in Tiled; not appended again", offset, key)
            return
        if offset >= 0 and offset < current:
            # Part of these rows is in already (a replay after a crash, a merged retry):
            # append the rest only.
            table = table.slice(current - offset)
            offset = current
        if offset >= 0 and current != offset:
            raise PermanentWriteError(f"{key}: rows at {offset} but the table holds {current}")
        try:
            node.append_partition(0, table)
        except Exception:
            self._uncertain.add(ident)
            raise
        self._table_len[ident] = current + table.num_rows

    def _open_table(self, parent: Any, ident: tuple[str, ...], table: Any, offset: int) -> Any:
        """The table ``ident`` for rows at ``offset``: created at once when they are its
        first (409: it is there already), else looked up; an existing one's length is read
        before the first append (``_uncertain``)."""
        import pyarrow as pa

        key = ident[-1]
        untyped = [f.name for f in table.schema if pa.types.is_null(f.type)]
        if offset <= 0 and not untyped:
            try:
                # rows read back by row_index (or seq_num) on every table storage
                node = create_ordered_table(parent, table.schema, key=key)
            except Exception as exc:
                if not _is_conflict(exc):
                    raise
            else:
                self._tables[ident] = node
                self._table_len[ident] = 0
                if ROW_INDEX not in table.column_names:
                    self._unindexed.add(ident)  # (a record spooled before row_index existed)
                return node
        try:
            node = parent[key]
        except KeyError:
            if untyped:
                # Tiled answers HTTP 500 "Unsupported PyArrow type: null" to such a table,
                # forever.
                raise PermanentWriteError(
                    f"{key}: columns {untyped} hold only nulls (no type); Tiled cannot create "
                    "a table with a null-typed column"
                ) from None
            if offset > 0:
                raise PermanentWriteError(
                    f"{key}: first rows must start at row 0, got {offset}"
                ) from None
            raise  # 409 a moment ago, gone now (deleted): retried
        self._tables[ident] = node
        self._uncertain.add(ident)
        if ROW_INDEX not in node.columns:
            # made before its rows had an index (a run replayed across an upgrade): its
            # rows keep the storage's order, and later ones fit its schema
            self._unindexed.add(ident)
        return node


#: Bytes per request when an array is written from its file (:class:`ArrayFile`).
UPLOAD_BLOCK_BYTES = 8 << 20


def block_rows(shape: tuple[int, ...], itemsize: int) -> int:
    """Rows (along the first axis) of one upload block of an array of ``shape``: about
    :data:`UPLOAD_BLOCK_BYTES`, at least one row."""
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return max(1, min(int(shape[0]), UPLOAD_BLOCK_BYTES // max(1, row)))


def _frames_data_source(record: ExternalFrames, frames: int) -> Any:
    """The Tiled data source of the first ``frames`` frames of a consumer's frame array."""
    from tiled.structures.array import ArrayStructure, BuiltinDtype
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import Asset, DataSource, Management

    from services.tiled.frame_files import tiled_chunks

    frame_shape = tuple(int(n) for n in record.frame_shape)
    structure = ArrayStructure(
        data_type=BuiltinDtype.from_numpy_dtype(np.dtype(record.dtype)),
        shape=(frames, *frame_shape),
        chunks=tiled_chunks(frames, frame_shape),
    )
    return DataSource(
        mimetype="application/x-zarr",
        assets=[Asset(data_uri=record.uri, is_directory=True, parameter="data_uri", num=None)],
        structure_family=StructureFamily.array,
        structure=structure,
        management=Management.external,
    )
