"""Raw runs into Tiled exactly once, under retries: bluesky's TiledWriter made idempotent.

bluesky 1.15's ``TiledWriter`` is written for a client whose requests either succeed or fail
cleanly and are never repeated. Our spool repeats a write after any transient failure, and a
server can fail *after* committing (Tiled + DuckDB answer HTTP 500 "No active transaction" to
an append that landed). Under such a retry ``TiledWriter`` breaks the run:

* ``_RunWriter.event`` appends the row to its batch cache *before* writing and clears the
  cache only on success, so a retried Event is written with its first copy again (a row
  committed despite the 500 then appears three times: the flaky
  ``test_run_appears_in_tiled_with_every_frame[stream]`` with 8285 eV three times);
* ``_RunWriter._write_external_data`` grows the consolidator (the array's advertised shape)
  before the request, so a retried StreamDatum advertises its frames twice (51 or 57 frames for a
  50-frame file: every read fails with HTTP 422);
* ``RunNormalizer`` pops the Datum of an Event while converting it, so a retried Event finds no
  Datum; creating a container that a failed request did create answers 409.

So the parts that are not retry-safe are replaced here, and the rest of bluesky's code (the
normaliser, the consolidators, the layout) is kept:

* each spooled document is normalised exactly once (its normalised documents are kept until all
  of them are written), so the normaliser's state never sees a retry;
* Event rows are appended one by one, never cached; after a failed append the table's seq_nums
  are read back and a row already there is not appended again;
* a StreamDatum grows the consolidator once (keyed by stream resource and index range); its
  retry only re-sends the resulting data source, which is a replacement and so idempotent;
* a container or array node that exists already (409) is taken as it is;
* an Event whose Datum was lost on the bus no longer costs the run its stop: the normaliser
  raised at the stop ("Cannot emit StreamDatum ... Datum document is missing"), the stop was
  rejected, ``raw/<uid>`` never got it, and the analysis consumer waited ``recovery_timeout``
  for it at every look for lost frames (benchmarks.chaos). Such references are dropped at the
  stop and named (:attr:`RawWriter.unregistered`); the run's status says ``incomplete``.

Writes are batched adaptively: when the spool has one record waiting (an idle beamline) it is
written alone; when Tiled lags, the spool hands over a run's queued records at once
(:class:`~services.tiled.records.RawDocs`) and their Event rows become one table append per
stream, their StreamDatums one data-source update per stream resource
(:meth:`RawWriter.apply_many`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from bluesky.callbacks.tiled_writer import RunNormalizer, _RunWriter
from event_model import DocumentNames, unpack_event_page

from services.tiled.records import RawDoc
from services.tiled.tables import OrderedTables

logger = logging.getLogger(__name__)

Doc = dict[str, Any]


def is_conflict(exc: BaseException) -> bool:
    """True for an HTTP 409 answer: what we tried to create is there already."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 409


class IdempotentRunWriter(_RunWriter):
    """bluesky's per-run writer with Event rows and StreamDatums safe to retry.

    Documents are plain dicts here (decoded from the bus), hence ``Any`` where bluesky
    declares its TypedDicts.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(client, batch_size=1)
        self._uncertain_tables: set[str] = set()
        self._seq_nums_in_table: dict[str, set[int]] = {}
        self._consumed: set[tuple[str, int, int]] = set()
        #: streams whose node this writer created (not adopted after a 409)
        self._created_streams: set[str] = set()

    # ---- containers: take what a failed request created -----------------------------------------
    def start(self, doc: Any) -> None:  # type: ignore[override]
        try:
            super().start(doc)
        except Exception as exc:
            if not is_conflict(exc):
                raise
            self.access_tags = doc.get("tiled_access_tags")
            self.root_node = self.client[doc["uid"]]

    def descriptor(self, doc: Any) -> None:  # type: ignore[override]
        try:
            super().descriptor(doc)
            self._created_streams.add(doc["name"])
        except Exception as exc:
            if not is_conflict(exc) or self.root_node is None:
                raise
            name = doc["name"]
            desc_node = self.root_node[name].base
            self._desc_nodes[doc["uid"]] = self._desc_nodes[name] = desc_node
            if "internal" in desc_node:
                self._internal_tables[name] = desc_node["internal"]
                self._uncertain_tables.add(name)

    # ---- Event rows: appended in blocks, each row never twice -----------------------------------
    def event(self, doc: Any) -> None:  # type: ignore[override]
        self.events([doc])

    def events(self, docs: list[Any]) -> None:
        """Append the rows of Events of one stream in one request, leaving out any row that
        is in the table already (a retry after a failure or a timeout that committed)."""
        desc_node = self._desc_nodes[docs[0]["descriptor"]]
        desc_name = desc_node.item["id"]
        # A stream node this writer has just created holds no table until its first append,
        # and an append that failed marks the stream uncertain: only then (or for a stream
        # made by an earlier process) is Tiled asked whether a table is there.
        known_empty = desc_name in self._created_streams and desc_name not in self._uncertain_tables
        if desc_name not in self._internal_tables and not known_empty and "internal" in desc_node:
            self._internal_tables[desc_name] = desc_node["internal"]  # made by a failed request
            self._uncertain_tables.add(desc_name)
        if desc_name in self._uncertain_tables:
            table_node = self._internal_tables.get(desc_name)
            if table_node is None:
                # the append that was to create the table failed before it was made (Tiled
                # killed: "internal" is not there): no row is in yet. Reading it raised
                # KeyError for every later Event of the stream (chaos seed 19: all rows of
                # 'flat' rejected, the run said complete).
                self._seq_nums_in_table[desc_name] = set()
            else:
                table = table_node.read(["seq_num"])
                self._seq_nums_in_table[desc_name] = {int(s) for s in table["seq_num"]}
            self._uncertain_tables.discard(desc_name)
        present = self._seq_nums_in_table.setdefault(desc_name, set())
        rows: dict[int, dict[str, Any]] = {}
        for doc in docs:
            seq_num = int(doc["seq_num"])
            if seq_num in present or seq_num in rows:
                logger.info("row seq_num %d of %s is in Tiled already", seq_num, desc_name)
                continue
            row = {"seq_num": seq_num, "time": doc["time"], **doc["data"]}
            row.update({f"ts_{k}": v for k, v in doc["timestamps"].items()})
            rows[seq_num] = row
        if not rows:
            return
        try:
            # ordered by seq_num on every table storage (services.tiled.tables)
            self._write_internal_data(list(rows.values()), desc_node=OrderedTables(desc_node))
        except Exception:
            self._uncertain_tables.add(desc_name)
            raise
        present.update(rows)

    def event_page(self, doc: Any) -> None:  # type: ignore[override]
        self.events(list(unpack_event_page(doc)))

    # ---- StreamDatum: grow the consolidator once, re-send its data source on retry --------------
    def stream_datum(self, doc: Any) -> None:  # type: ignore[override]
        self._write_external_data(doc)

    def consume_stream_datum(self, doc: Any) -> Any:
        """Grow the consolidator by a StreamDatum (once, however often it is retried); return
        the node whose data source must then be updated."""
        sres_uid, desc_uid = doc["stream_resource"], doc["descriptor"]
        key = (sres_uid, int(doc["indices"]["start"]), int(doc["indices"]["stop"]))
        sres_node, consolidator = self.get_sres_node(sres_uid, desc_uid)
        if key not in self._consumed:
            consolidator.consume_stream_datum(doc)
            self._consumed.add(key)
        return sres_node

    def update_data_source(self, sres_node: Any) -> None:
        """Send the data source of a stream resource node (a replacement: idempotent)."""
        consolidator = next(
            c for uid, c in self._consolidators.items() if self._sres_nodes.get(uid) is sres_node
        )
        self._update_data_source_for_node(sres_node, consolidator.get_data_source())

    def _write_external_data(self, doc: Any) -> None:  # type: ignore[override]
        self.update_data_source(self.consume_stream_datum(doc))

    def get_sres_node(self, sres_uid: str, desc_uid: str | None = None) -> tuple[Any, Any]:
        try:
            return super().get_sres_node(sres_uid, desc_uid)
        except Exception as exc:
            if not is_conflict(exc) or desc_uid is None:
                raise
        # The node was created by a request that failed after committing: adopt it.
        from bluesky.consolidators import consolidator_factory

        sres_doc = self._stream_resource_cache[sres_uid]
        desc_node = self._desc_nodes[desc_uid]
        full_data_key = f"{desc_node.item['id']}_{sres_doc['data_key']}"
        consolidator = consolidator_factory(sres_doc, desc_node.metadata)
        sres_node = desc_node[consolidator.data_key]
        self._consolidators[sres_uid] = self._consolidators[full_data_key] = consolidator
        self._sres_nodes[sres_uid] = self._sres_nodes[full_data_key] = sres_node
        return sres_node, consolidator


class _Normalizer(RunNormalizer):
    """bluesky's normaliser, without a JSON-schema validation of every Event and StreamDatum
    it emits (about 1.5 ms each, most of the raw path's CPU at beamline rates). Their fields
    were checked where they entered (``services.runs.routing.validate_document``) and the
    normaliser builds them itself; every other document is still validated."""

    def emit(self, name: Any, doc: Any) -> None:
        if name in _UNVALIDATED:
            self.dispatcher.process(name, doc)
        else:
            super().emit(name, doc)


_UNVALIDATED = frozenset({DocumentNames.event, DocumentNames.stream_datum})


class RawRun:
    """One run's normaliser and writer; each spooled document is normalised exactly once."""

    def __init__(self, client: Any) -> None:
        self.normalizer = _Normalizer()
        self.writer = IdempotentRunWriter(client)
        #: seq_nums per stream of Events whose Datum never came (dropped at the stop)
        self.unregistered: dict[str, list[int]] = {}
        self._collected: list[tuple[str, Doc]] = []
        self.normalizer.subscribe(lambda name, doc: self._collected.append((name, doc)))

    def normalize(self, name: str, doc: Doc) -> list[tuple[str, Doc]]:
        self._collected = []
        if name == "stop":
            self._drop_unresolved_references()
        self.normalizer(name, copy.deepcopy(doc))
        return self._collected

    def _drop_unresolved_references(self) -> dict[str, list[int]]:
        """Take out of the normaliser the Events' references to Datums that never came (lost
        on the bus), which would make it refuse the stop; returns and keeps
        (:attr:`unregistered`) their seq_nums per stream: the frames they stand for are
        registered only where a later frame of the same file covers them."""
        normalizer = self.normalizer
        kept = []
        for ref in normalizer._ext_ref_cache:  # noqa: SLF001 - bluesky keeps no public view
            datum_id, data_key, desc_uid, seq_num = ref
            if datum_id in normalizer._datum_cache:  # noqa: SLF001
                kept.append(ref)
                continue
            stream = normalizer._desc_name_by_uid.get(desc_uid, desc_uid)  # noqa: SLF001
            self.unregistered.setdefault(stream, []).append(int(seq_num))
            logger.warning(
                "event seq_num %s of stream %s refers to Datum %s (%s), which never came; "
                "its frame is not registered",
                seq_num,
                stream,
                datum_id,
                data_key,
            )
        normalizer._ext_ref_cache[:] = kept  # noqa: SLF001
        return self.unregistered


#: Normalised documents whose writes can wait for the end of a batch: Event rows (one table
#: append per stream) and StreamDatums (one data-source update per stream resource). Any other
#: document is written in its place, after the waiting ones before it.
_DEFERRABLE = frozenset({"event", "stream_datum"})


class _Pending:
    """A normalised document of a record, until it is written."""

    __slots__ = ("doc", "name", "written")

    def __init__(self, name: str, doc: Doc) -> None:
        self.name, self.doc, self.written = name, doc, False


class RawWriter:
    """Applies :class:`~services.tiled.records.RawDoc` records, alone or a run's queue at
    once (``RawDocs``); a record's normalised documents are written in order and each at most
    once, however often the record is retried."""

    def __init__(self, raw_container: Any) -> None:
        # TiledWriter does the same: the data-source API needs the sources in the answers.
        self._client = raw_container.include_data_sources()
        self._runs: dict[str, RawRun] = {}
        self._pending: dict[str, list[_Pending]] = {}
        #: run uid -> stream -> seq_nums of Events whose Datum never came, from the run's
        #: stop until its status is written (:meth:`take_unregistered`)
        self.unregistered: dict[str, dict[str, list[int]]] = {}

    def take_unregistered(self, run_uid: str) -> dict[str, list[int]]:
        """The seq_nums per stream whose frames the run's stop found no Datum for (once)."""
        return self.unregistered.pop(run_uid, {})

    def __call__(self, record: RawDoc) -> None:
        self.apply_many([record])

    def apply_many(self, records: list[RawDoc] | tuple[RawDoc, ...]) -> None:
        """Write the records in order, Event rows and StreamDatums in blocks."""
        batch: list[tuple[str, str, str, RawRun, list[_Pending]]] = []
        for record in records:
            name, doc, run_uid = record.name, record.doc, record.run
            if not run_uid:
                raise ValueError(f"raw_doc record of a {name} without its run uid")
            run = self._runs.get(run_uid)
            if run is None:
                run = self._runs[run_uid] = RawRun(self._client)
            rid = record.rid or f"{run_uid}:{name}:{id(record)}"
            pending = self._pending.get(rid)
            if pending is None:
                normalized = run.normalize(name, doc)
                pending = self._pending[rid] = [_Pending(n, d) for n, d in normalized]
            batch.append((rid, name, run_uid, run, pending))
        waiting: list[tuple[RawRun, _Pending]] = []
        for _rid, _name, _uid, run, pending in batch:
            for item in pending:
                if item.written:
                    continue
                if item.name in _DEFERRABLE:
                    waiting.append((run, item))
                    continue
                self._flush(waiting)
                run.writer(item.name, item.doc)
                item.written = True
        self._flush(waiting)
        for rid, name, run_uid, _run, _pending in batch:
            self._pending.pop(rid, None)
            if name == "stop":
                done = self._runs.pop(run_uid, None)
                if done is not None and done.unregistered:
                    self.unregistered[run_uid] = {
                        stream: sorted(set(seq)) for stream, seq in done.unregistered.items()
                    }

    @staticmethod
    def _flush(waiting: list[tuple[RawRun, _Pending]]) -> None:
        """Write the waiting Event rows (one append per run and stream) and StreamDatums (one
        data-source update per node), then mark them written."""
        if not waiting:
            return
        rows: dict[tuple[int, str], list[_Pending]] = {}
        nodes: dict[tuple[int, int], tuple[RawRun, Any]] = {}
        for run, item in waiting:
            if item.name == "event":
                desc = run.writer._desc_nodes[item.doc["descriptor"]].item["id"]
                rows.setdefault((id(run), desc), []).append(item)
            else:
                node = run.writer.consume_stream_datum(item.doc)
                nodes[(id(run), id(node))] = (run, node)
        runs = {id(run): run for run, _item in waiting}
        for (run_id, _desc), items in rows.items():
            runs[run_id].writer.events([item.doc for item in items])
            for item in items:
                item.written = True
        for run, node in nodes.values():
            run.writer.update_data_source(node)
        for _run, item in waiting:
            item.written = True
        waiting.clear()
