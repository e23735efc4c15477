"""Per-run routing of Bluesky documents, with loss detection on the 0MQ bus.

One router object per run and per consumer role (STYLE.md: bluesky ``RunRouter``): the
dispatcher builds them from factories when a run starts and calls one method per document
name. The dispatcher also notices what PUB/SUB lost: a missing ``start`` (documents of an
unknown run), ``seq_num`` gaps, ``StreamDatum`` index gaps and a missing ``stop`` (run idle for
too long). Every loss is counted in ``beamwatch_messages_lost_total{kind=...}``; StreamDatum gaps
are recovered here (the detector file holds the frames; the missing document is rebuilt from its
neighbours), event gaps are handed to the routers, which recover from Tiled or the file.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from event_model import DatumPage, EventPage, unpack_datum_page, unpack_event_page

from services.core.identifiers import (
    InvalidIdentifier,
    check_datum_id,
    check_name,
    check_uid,
)
from services.core.metrics import Metrics
from services.core.serialization import UndecodableField
from services.runs.journal import RunJournal

logger = logging.getLogger(__name__)

Doc = dict[str, Any]

#: When the document being dispatched arrived on the bus (``time.monotonic()``); frames it
#: completes are timed from then, not from when the dispatcher got to them.
ARRIVAL: contextvars.ContextVar[float] = contextvars.ContextVar("beamwatch_arrival")
#: True while a run's journal is replayed after a crash (:meth:`RunDispatcher.replay`). Writes
#: are made again (idempotently), but what left the process the first time must not leave it
#: twice: drift feedback moves, and counts of losses, duplicates, dropped fields, refusals.
REPLAYING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "beamwatch_replaying", default=False
)


class RunRouter:
    """Base class of per-run routers: one method per document name, all optional."""

    def start(self, doc: Doc) -> None: ...
    def descriptor(self, doc: Doc) -> None: ...
    def event(self, doc: Doc) -> None: ...
    def resource(self, doc: Doc) -> None: ...
    def datum(self, doc: Doc) -> None: ...
    def stream_resource(self, doc: Doc) -> None: ...
    def stream_datum(self, doc: Doc) -> None: ...

    def stop(self, doc: Doc | None) -> None:
        """The run ended; ``doc`` is None when the stop document was lost."""

    def events_lost(self, descriptor: Doc, seq_nums: list[int]) -> None:
        """Events with these seq_nums never arrived; recover them if the router can."""

    def stream_lost(self, stream: str, seq_nums: list[int]) -> None:
        """No descriptor of ``stream`` arrived, yet the stop counts these events of it:
        the stream's descriptor and events are lost; recover them if the router can."""

    def bad_fields(self, descriptor: Doc, seq_num: int, problems: dict[str, str]) -> None:
        """Fields of the next Event (``seq_num``) were dropped; ``problems`` says why, by key."""

    def flush(self) -> None:
        """Nothing else is queued: write what the router holds back to batch it."""

    def close(self) -> None:
        """The consumer is shutting down while the run is still open."""


RouterFactory = Callable[[Doc], RunRouter | None]
StartRecovery = Callable[[str], Doc | None]
#: ``recover_stop(run_uid)``: the run's stop document as another copy of the run holds it
#: (``raw/<uid>`` in Tiled), or None
StopRecovery = Callable[[str], Doc | None]
#: ``defer(lookup, then)``: run ``lookup()`` (a request to Tiled, which may hang until its
#: timeout) off the dispatch thread, and later call ``then(result)`` on the dispatch thread.
Defer = Callable[[Callable[[], Any], Callable[[Any], None]], None]


def run_here(lookup: Callable[[], Any], then: Callable[[Any], None]) -> None:
    """The default :data:`Defer`: look up and go on at once, on the calling thread."""
    then(lookup())


@dataclass
class _Run:
    start: Doc
    routers: list[RunRouter]
    last_seen: float
    descriptors: dict[str, Doc] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    sres_stop: dict[str, int] = field(default_factory=dict)
    sres_seq_stop: dict[str, int] = field(default_factory=dict)
    #: events that came ahead of a gap, per descriptor: seq_num -> (event, arrival)
    held: dict[str, dict[int, Doc]] = field(default_factory=dict)
    gap_since: dict[str, float] = field(default_factory=dict)
    #: a stop that came before the last events, and since when it waits
    stop: Doc | None = None
    stop_since: float = 0.0


class RunDispatcher:
    """Route documents of many interleaved runs to per-run routers and count what was lost."""

    def __init__(
        self,
        factories: Iterable[RouterFactory],
        metrics: Metrics,
        *,
        recover_start: StartRecovery | None = None,
        recover_stop: StopRecovery | None = None,
        idle_timeout: float = 600.0,
        reorder_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        journal: RunJournal | None = None,
        on_finish: Callable[[str], None] | None = None,
        recovery_timeout: float = 120.0,
        defer: Defer = run_here,
    ) -> None:
        self._journal = journal
        self._defer = defer
        #: runs whose start is being looked up for a stop that came alone
        self._start_lookups: set[str] = set()
        #: idle runs whose stop is being looked up
        self._stop_lookups: set[str] = set()
        self._recovery_timeout = recovery_timeout
        #: stops of runs none of whose documents came, whose start is not in Tiled yet (the
        #: raw path may be behind, Tiled restarting): run uid -> (stop, since, next try)
        self._orphan_stops: dict[str, tuple[Doc, float, float]] = {}
        self._reorder_timeout = reorder_timeout
        #: events whose descriptor has not arrived yet: descriptor uid -> [(event, arrival)]
        self._early: dict[str, list[tuple[str, Doc, float]]] = {}
        self._on_finish = on_finish
        self._replaying = False
        self._factories = list(factories)
        self._metrics = metrics
        self._recover_start = recover_start
        self._recover_stop = recover_stop
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._run_of_descriptor: dict[str, str] = {}
        self._run_of_resource: dict[str, str] = {}
        #: finished runs, oldest first; with their descriptors and resources (above) they
        #: name documents delivered again after the finish. The oldest are forgotten beyond
        #: FINISHED_KEPT, so a process that lives for months does not grow without end.
        self._finished: dict[str, None] = {}

    # ---- public ----------------------------------------------------------------------------
    @property
    def open_runs(self) -> list[str]:
        return list(self._runs)

    def __call__(self, name: str, doc: Doc, received: float | None = None) -> None:
        token = ARRIVAL.set(received if received is not None else time.monotonic())
        try:
            self._dispatch(name, doc)
        finally:
            ARRIVAL.reset(token)

    def _dispatch(self, name: str, doc: Doc) -> None:
        handler = getattr(self, f"_on_{name}", None)
        if handler is None:
            logger.debug("ignoring %s document", name)
            return
        try:
            validate_document(name, doc)
        except InvalidIdentifier as exc:
            self._metrics.messages_malformed.labels(self._metrics.service, "identifier").inc()
            logger.warning("dropped %s document: %s", name, exc)
            return
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._metrics.messages_malformed.labels(self._metrics.service, "schema").inc()
            logger.warning("dropped %s document: %s: %s", name, type(exc).__name__, exc)
            return
        journal = self._journal if not self._replaying else None
        try:
            run_uid = self._run_uid_of(name, doc)
            if name != "start" and run_uid in self._finished:
                self._of_finished_run(name, run_uid)
                return
            if name == "stop" and run_uid not in self._runs and run_uid not in self._finished:
                # its start is looked up off this thread; the stop comes back when it is found
                self._open_from_stop(doc)
                return
            journaled = journal is not None and run_uid in self._runs
            if journaled:  # before routing: the stop must be in before the run is finished
                journal.append(run_uid, name, doc)  # type: ignore[union-attr, arg-type]
            handler(doc)
            if journal is not None and not journaled:
                run_uid = self._run_uid_of(name, doc)
                if run_uid is not None and run_uid in self._runs:  # this document opened it
                    journal.append(run_uid, name, doc)
        except KeyError as exc:
            self._metrics.messages_malformed.labels(self._metrics.service, "schema").inc()
            logger.warning("dropped %s document missing required field %s", name, exc)

    def _of_finished_run(self, name: str, run_uid: str) -> None:
        """A document of a run already finished here: delivered again (a durable bus
        redelivers what was journaled but not acknowledged when a consumer died, and the
        journal's replay may have finished the run before they come) or too late for it. It
        must neither reopen the run (as a run whose start was never seen) nor count as lost
        (as an event for an unknown descriptor)."""
        self._count(self._metrics.messages_duplicated, name)
        logger.info(
            "%s of a run finished here already dropped (delivered again)",
            name,
            extra={"run_uid": run_uid},
        )

    def replay(self, run_uid: str, documents: list[tuple[str, Doc]]) -> None:
        """Route a journaled run's documents again (after a crash), without journaling them."""
        logger.warning(
            "resuming run from its journal (%d documents)",
            len(documents),
            extra={"run_uid": run_uid},
        )
        self._replaying = True
        token = REPLAYING.set(True)
        try:
            for name, doc in documents:
                self(name, doc)
        finally:
            REPLAYING.reset(token)
            self._replaying = False

    def _run_uid_of(self, name: str, doc: Doc) -> str | None:
        if name == "start":
            return str(doc["uid"])
        if name in ("descriptor", "resource", "stream_resource", "stop"):
            return str(doc["run_start"])
        if name in ("event", "event_page"):
            return self._run_of_descriptor.get(doc["descriptor"])
        if name in ("datum", "datum_page"):
            return self._run_of_resource.get(doc["resource"])
        if name == "stream_datum":
            return self._run_of_resource.get(doc["stream_resource"])
        return None

    def sweep(self) -> None:
        """Give up waiting: for gaps and early events after ``reorder_timeout``, for the
        events a held stop announced after ``reorder_timeout``, for a stop after the idle
        timeout."""
        now = self._clock()
        for uid, (stop, _since, next_try) in list(self._orphan_stops.items()):
            if now >= next_try and uid not in self._start_lookups:
                self("stop", stop)
        for descriptor_uid, early in list(self._early.items()):
            if now - early[0][2] > self._reorder_timeout:
                del self._early[descriptor_uid]
                self._lost(
                    "descriptor",
                    len(early),
                    None,
                    f"events for unknown descriptor {descriptor_uid}",
                )
        for uid, run in list(self._runs.items()):
            for descriptor_uid, since in list(run.gap_since.items()):
                if now - since > self._reorder_timeout:
                    self._give_up_gap(uid, run, descriptor_uid)
            if run.stop is not None and now - run.stop_since > self._reorder_timeout:
                self._finish(uid, run.stop)
        self.flush()
        for uid, run in list(self._runs.items()):
            if now - run.last_seen > self._idle_timeout and uid not in self._stop_lookups:
                self._look_for_stop(uid)

    def _look_for_stop(self, uid: str) -> None:
        """An idle run without its stop: the stop is looked for in another copy of the run
        (``raw/<uid>``), off the dispatch thread (``defer``), so that its ``num_events``
        counts the Events this consumer never saw and they are recovered like any other lost
        ones. Without it the run ends without its stop and never says complete."""
        if self._recover_stop is None:
            self._stop_looked_up(uid, None)
            return
        recover = self._recover_stop
        self._stop_lookups.add(uid)
        self._defer(lambda: recover(uid), lambda stop: self._stop_looked_up(uid, stop))

    def _stop_looked_up(self, uid: str, stop: Doc | None) -> None:
        """On the dispatch thread: the lookup of :meth:`_look_for_stop` has ended."""
        self._stop_lookups.discard(uid)
        run = self._runs.get(uid)
        if run is None:
            return  # its stop came meanwhile
        if self._clock() - run.last_seen <= self._idle_timeout:
            return  # documents came meanwhile: not idle any more
        self._lost("stop", 1, uid, f"no stop document after {self._idle_timeout:.0f} s idle")
        if not isinstance(stop, dict) or stop.get("run_start") != uid:
            self._finish(uid, None)
            return
        self._count(self._metrics.messages_recovered, "stop")
        logger.warning("recovered the stop of an idle run", extra={"run_uid": uid})
        if self._journal is not None and not self._replaying:
            self._journal.append(uid, "stop", stop)
        self._finish(uid, stop)

    def flush(self) -> None:
        """Let every open run's routers write what they hold back (the consumer is idle)."""
        for uid, run in list(self._runs.items()):
            for router in run.routers:
                self._call(router, "flush", uid)

    def close(self) -> None:
        for uid, run in list(self._runs.items()):
            for router in run.routers:
                self._call(router, "close", uid)
        self._runs.clear()

    # ---- documents ---------------------------------------------------------------------------
    def _on_start(self, doc: Doc) -> None:
        uid = doc["uid"]
        if uid in self._runs or uid in self._finished:
            logger.warning("duplicate start document for run %s ignored", uid)
            return
        self._open(doc)

    def _on_descriptor(self, doc: Doc) -> None:
        known = self._runs.get(doc["run_start"])
        if known is not None and doc["uid"] in known.descriptors:
            # delivered again (a durable bus redelivers what was not acknowledged yet)
            self._metrics.messages_duplicated.labels(self._metrics.service, "descriptor").inc()
            return
        run = self._run_for(doc["run_start"], doc)
        run.descriptors[doc["uid"]] = doc
        run.last_seq.setdefault(doc["uid"], 0)
        self._run_of_descriptor[doc["uid"]] = run.start["uid"]
        self._send(run, "descriptor", doc)
        for name, early, _arrival in self._early.pop(doc["uid"], []):
            getattr(self, f"_on_{name}")(early)  # in arrival order; events are ordered later

    def _hold_early(self, name: str, doc: Doc) -> None:
        """A document that refers to a descriptor not seen yet: its descriptor may be late."""
        early = self._early.setdefault(doc["descriptor"], [])
        if len(early) < MAX_HELD_EVENTS and len(self._early) < MAX_HELD_EVENTS:
            early.append((name, doc, self._clock()))
        else:
            self._lost("descriptor", 1, None, f"{name} for unknown descriptor {doc['descriptor']}")

    def _on_event(self, doc: Doc) -> None:
        run_uid = self._run_of_descriptor.get(doc["descriptor"])
        if run_uid is None or run_uid not in self._runs:
            self._hold_early("event", doc)
            return
        run = self._runs[run_uid]
        run.last_seen = self._clock()
        descriptor_uid = doc["descriptor"]
        seq = int(doc["seq_num"])
        last = run.last_seq.get(descriptor_uid, 0)
        held = run.held.setdefault(descriptor_uid, {})
        if seq <= last or seq in held:
            self._count(self._metrics.messages_duplicated, "event")
            logger.warning("duplicate or late event seq_num %d (last %d) dropped", seq, last)
            return
        if seq > last + 1:
            if len(held) >= MAX_HELD_EVENTS:
                self._give_up_gap(run_uid, run, descriptor_uid)
                self._on_event(doc)
                return
            held[seq] = doc  # wait a while for the missing ones: the bus may reorder
            run.gap_since.setdefault(descriptor_uid, self._clock())
            return
        self._deliver(run_uid, run, doc)
        self._release_held(run_uid, run, descriptor_uid)
        self._maybe_finish_held_stop(run_uid, run)

    def _release_held(self, run_uid: str, run: _Run, descriptor_uid: str) -> None:
        held = run.held.get(descriptor_uid, {})
        while held and min(held) == run.last_seq.get(descriptor_uid, 0) + 1:
            self._deliver(run_uid, run, held.pop(min(held)))
        if held:
            run.gap_since.setdefault(descriptor_uid, self._clock())
        else:
            run.gap_since.pop(descriptor_uid, None)

    def _give_up_gap(self, run_uid: str, run: _Run, descriptor_uid: str) -> None:
        """The events before the first held one are lost: say so, then release the held."""
        held = run.held.get(descriptor_uid, {})
        if not held:
            run.gap_since.pop(descriptor_uid, None)
            return
        last = run.last_seq.get(descriptor_uid, 0)
        missing = list(range(last + 1, min(held)))
        self._events_lost(run_uid, run, descriptor_uid, missing)
        run.last_seq[descriptor_uid] = min(held) - 1
        run.gap_since.pop(descriptor_uid, None)
        self._release_held(run_uid, run, descriptor_uid)
        self._maybe_finish_held_stop(run_uid, run)

    def _events_lost(
        self, run_uid: str, run: _Run, descriptor_uid: str, missing: list[int]
    ) -> None:
        if not missing:
            return
        self._lost("event", len(missing), run_uid, f"seq_num gap {missing[0]}..{missing[-1]}")
        descriptor = run.descriptors[descriptor_uid]
        for router in run.routers:
            self._call(router, "events_lost", run_uid, descriptor, missing)

    def _streams_lost(self, run_uid: str, run: _Run, stop: Doc) -> None:
        """Streams the stop counts events of, none of whose descriptors arrived."""
        seen = {d.get("name", "primary") for d in run.descriptors.values()}
        for stream, n in (stop.get("num_events") or {}).items():
            if stream in seen or not isinstance(n, int) or isinstance(n, bool) or n < 1:
                continue
            if n > MAX_HELD_EVENTS * 100:
                logger.warning("stop counts %d events of stream %r: not believed", n, stream[:80])
                continue
            try:
                check_name(stream, "stream name")
            except InvalidIdentifier as exc:
                logger.warning("stop counts events of a stream with a bad name: %s", exc)
                continue
            self._lost("descriptor", 1, run_uid, f"no descriptor of stream {stream!r} ({n} events)")
            for router in run.routers:
                self._call(router, "stream_lost", run_uid, stream, list(range(1, n + 1)))

    def _expected_events(self, run: _Run) -> dict[str, int]:
        """Per descriptor, how many events the held stop announced (``num_events``)."""
        counts = (run.stop or {}).get("num_events") or {}
        out: dict[str, int] = {}
        for descriptor_uid, descriptor in run.descriptors.items():
            n = counts.get(descriptor.get("name", "primary"))
            if isinstance(n, int) and not isinstance(n, bool):
                out[descriptor_uid] = n
        # several descriptors of one stream share its count: the last one carries it
        return out

    def _all_events_in(self, run: _Run) -> bool:
        if any(run.held.values()):
            return False
        by_stream: dict[str, int] = {}
        for descriptor_uid, descriptor in run.descriptors.items():
            name = descriptor.get("name", "primary")
            by_stream[name] = by_stream.get(name, 0) + run.last_seq.get(descriptor_uid, 0)
        counts = (run.stop or {}).get("num_events") or {}
        return all(
            by_stream.get(name, 0) >= n
            for name, n in counts.items()
            if isinstance(n, int) and not isinstance(n, bool)
        )

    def _maybe_finish_held_stop(self, run_uid: str, run: _Run) -> None:
        if run.stop is not None and self._all_events_in(run):
            self._finish(run_uid, run.stop)

    def _deliver(self, run_uid: str, run: _Run, doc: Doc) -> None:
        seq = int(doc["seq_num"])
        run.last_seq[doc["descriptor"]] = seq
        descriptor = run.descriptors[doc["descriptor"]]
        problems = bad_event_fields(doc, descriptor)
        if problems:
            doc = _without_fields(doc, problems)
            for key, problem in problems.items():
                self._count(self._metrics.event_fields_dropped, _problem_kind(problem))
                logger.warning(
                    "event seq_num %d: field %r dropped, the others kept: %s",
                    seq,
                    key[:80],
                    problem,
                    extra={"run_uid": run_uid},
                )
            for router in run.routers:
                self._call(router, "bad_fields", run_uid, descriptor, seq, problems)
        self._send(run, "event", doc)

    def _on_event_page(self, doc: Doc) -> None:
        for event in unpack_event_page(cast(EventPage, doc)):  # checked by validate_document
            self._on_event(dict(event))

    def _on_resource(self, doc: Doc) -> None:
        run = self._run_for(doc["run_start"], doc)
        self._run_of_resource[doc["uid"]] = run.start["uid"]
        self._send(run, "resource", doc)

    def _on_datum(self, doc: Doc) -> None:
        run_uid = self._run_of_resource.get(doc["resource"])
        if run_uid is None or run_uid not in self._runs:
            self._lost("resource", 1, None, f"datum for unknown resource {doc['resource']}")
            return
        self._send(self._runs[run_uid], "datum", doc)

    def _on_datum_page(self, doc: Doc) -> None:
        for datum in unpack_datum_page(cast(DatumPage, doc)):
            self._on_datum(dict(datum))

    def _on_stream_resource(self, doc: Doc) -> None:
        run = self._run_for(doc["run_start"], doc)
        self._run_of_resource[doc["uid"]] = run.start["uid"]
        run.sres_stop[doc["uid"]] = 0
        self._send(run, "stream_resource", doc)

    def _on_stream_datum(self, doc: Doc) -> None:
        run_uid = self._run_of_resource.get(doc["stream_resource"])
        if run_uid is None or run_uid not in self._runs:
            self._lost("resource", 1, None, f"stream_datum for unknown {doc['stream_resource']}")
            return
        run = self._runs[run_uid]
        if doc["descriptor"] not in run.descriptors:
            self._hold_early("stream_datum", doc)
            return
        sres = doc["stream_resource"]
        expected = run.sres_stop.get(sres, 0)
        start, stop = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        if start > expected:
            gap = start - expected
            self._lost("stream_datum", 1, run_uid, f"StreamDatum gap, frames {expected}..{start}")
            seq_start = int(doc["seq_nums"]["start"]) - gap if doc.get("seq_nums") else 0
            rebuilt = {
                "uid": f"{sres}/recovered-{uuid.uuid4().hex[:8]}",
                "stream_resource": sres,
                "descriptor": doc["descriptor"],
                "indices": {"start": expected, "stop": start},
                "seq_nums": {"start": seq_start, "stop": seq_start + gap if seq_start else 0},
            }
            self._count(self._metrics.messages_recovered, "stream_datum")
            logger.info(
                "rebuilt lost StreamDatum for frames %d..%d from the detector file", expected, start
            )
            self._send(run, "stream_datum", rebuilt)
        run.sres_stop[sres] = max(stop, expected)
        self._send(run, "stream_datum", doc)

    def _open_from_stop(self, doc: Doc) -> None:
        """A stop of a run none of whose documents arrived (they were lost, e.g. while the
        consumer restarted): the run is opened from its start as recovered from Tiled, so
        that its routers can rebuild what the stop says it held. The start is looked up off
        the dispatch thread (``defer``: Tiled may hang until the request timeout, and other
        runs' documents must not wait for it); a start not in Tiled yet is looked for again
        by :meth:`sweep` for ``recovery_timeout``. Without a recovered start no phantom run
        is made for a stop alone."""
        uid = doc["run_start"]
        if uid in self._start_lookups:
            return  # being looked up already (a duplicate stop)
        if uid not in self._orphan_stops:
            self._lost("start", 1, uid, "stop of a run none of whose documents arrived")
        if self._recover_start is None:
            return
        recover = self._recover_start
        self._start_lookups.add(uid)
        self._defer(lambda: recover(uid), lambda start: self._start_looked_up(doc, start))

    def _start_looked_up(self, doc: Doc, start: Doc | None) -> None:
        """On the dispatch thread: the lookup of :meth:`_open_from_stop` has ended."""
        uid = doc["run_start"]
        self._start_lookups.discard(uid)
        if uid in self._runs or uid in self._finished:
            # other documents of the run came meanwhile and opened it: the stop goes to it
            self._orphan_stops.pop(uid, None)
            self("stop", doc)
            return
        if start is None:
            now = self._clock()
            since = self._orphan_stops.get(uid, (doc, now, now))[1]
            if now - since < self._recovery_timeout:
                self._orphan_stops[uid] = (doc, since, now + ORPHAN_RETRY_SECONDS)
            else:
                self._orphan_stops.pop(uid, None)
                logger.error(
                    "start of a run not found in Tiled within %.0f s of its stop: no analysis",
                    self._recovery_timeout,
                    extra={"run_uid": uid},
                )
            return
        self._orphan_stops.pop(uid, None)
        self._count(self._metrics.messages_recovered, "start")
        logger.warning("recovered the start of a run from its stop", extra={"run_uid": uid})
        self._open(start)
        self._journal_recovered_start(start)
        self("stop", doc)  # journaled and routed as the run's own now

    def _journal_recovered_start(self, start: Doc) -> None:
        if self._journal is not None and not self._replaying:
            self._journal.append(start["uid"], "start", start)

    def _on_stop(self, doc: Doc) -> None:
        uid = doc["run_start"]
        if uid not in self._runs:
            return  # a stop of a finished run, or of a run that could not be recovered
        run = self._runs[uid]
        if run.stop is not None:
            return  # a duplicate stop
        run.stop, run.stop_since = doc, self._clock()
        if not self._all_events_in(run):
            logger.info(
                "stop came before the last events; waiting for them", extra={"run_uid": uid}
            )
            return
        self._finish(uid, doc)

    # ---- helpers ----------------------------------------------------------------------------
    def _open(self, start: Doc) -> _Run:
        routers: list[RunRouter] = []
        for factory in self._factories:
            try:
                router = factory(start)
            except Exception:
                logger.exception(
                    "router factory %r failed", factory, extra={"run_uid": start["uid"]}
                )
                self._metrics.pipeline_errors.labels(self._metrics.service, "factory").inc()
                continue
            if router is not None:
                routers.append(router)
        run = _Run(start=start, routers=routers, last_seen=self._clock())
        self._runs[start["uid"]] = run
        for router in routers:
            self._call(router, "start", start["uid"], start)
        return run

    def _run_for(self, run_uid: str, doc: Doc) -> _Run:
        run = self._runs.get(run_uid)
        if run is not None:
            run.last_seen = self._clock()
            return run
        self._lost("start", 1, run_uid, "documents arrived for a run whose start was never seen")
        start = self._recover_start(run_uid) if self._recover_start else None
        if start is not None:
            self._count(self._metrics.messages_recovered, "start")
            logger.info("recovered start document of run %s", run_uid)
        else:
            start = {
                "uid": run_uid,
                "time": doc.get("time", time.time()),
                "beamwatch_start_lost": True,
            }
        run = self._open(start)
        # the document that opened the run is journaled after it: a replay opens it the same
        self._journal_recovered_start(start)
        return run

    def _finish(self, uid: str, stop: Doc | None) -> None:
        run = self._runs.get(uid)
        if run is None:
            return
        for descriptor_uid in list(run.held):
            self._give_up_gap(uid, run, descriptor_uid)  # may finish the run itself
        if uid not in self._runs:
            return
        run.stop = stop
        if stop is not None:
            counts = self._expected_events(run)
            for descriptor_uid, n in counts.items():
                if descriptor_uid != _last_descriptor_of_stream(run, descriptor_uid):
                    continue
                self._events_lost(
                    uid,
                    run,
                    descriptor_uid,
                    list(range(run.last_seq.get(descriptor_uid, 0) + 1, n + 1)),
                )
            self._streams_lost(uid, run, stop)
        self._runs.pop(uid, None)
        for router in run.routers:
            self._call(router, "stop", uid, stop)
        self._finished[uid] = None
        if len(self._finished) > FINISHED_KEPT + FINISHED_KEPT // 10:
            self._forget_oldest_finished(len(self._finished) - FINISHED_KEPT)
        # the descriptors keep naming their run (as resources do): a document delivered
        # again after the finish is known as one of a finished run (_of_finished_run)
        if self._on_finish is not None:
            self._on_finish(uid)

    def _forget_oldest_finished(self, n: int) -> None:
        oldest = list(self._finished)[:n]
        for uid in oldest:
            del self._finished[uid]
        gone = set(oldest)
        for mapping in (self._run_of_descriptor, self._run_of_resource):
            for key in [k for k, run_uid in mapping.items() if run_uid in gone]:
                del mapping[key]

    def _send(self, run: _Run, method: str, doc: Doc) -> None:
        run.last_seen = self._clock()
        for router in run.routers:
            self._call(router, method, run.start["uid"], doc)

    def _call(self, router: RunRouter, method: str, run_uid: str, *args: Any) -> None:
        try:
            getattr(router, method)(*args)
        except Exception:
            logger.exception(
                "%s.%s failed", type(router).__name__, method, extra={"run_uid": run_uid}
            )
            self._metrics.pipeline_errors.labels(self._metrics.service, type(router).__name__).inc()

    def _count(self, counter: Any, label: str, amount: float = 1) -> None:
        """Count an event of the bus, unless it is a replay's (counted when it happened)."""
        if not REPLAYING.get():
            counter.labels(self._metrics.service, label).inc(amount)

    def _lost(self, kind: str, count: int, run_uid: str | None, detail: str) -> None:
        self._count(self._metrics.messages_lost, kind, count)
        logger.warning("bus loss (%s x%d): %s", kind, count, detail, extra={"run_uid": run_uid})


#: Events held per descriptor while waiting for a gap to fill (and early events overall).
MAX_HELD_EVENTS = 10_000
#: Seconds between looks in Tiled for the start of a run of which only the stop came.
ORPHAN_RETRY_SECONDS = 2.0
#: Finished runs remembered (a few hundred bytes each) to know their documents delivered again.
FINISHED_KEPT = 10_000


def _last_descriptor_of_stream(run: _Run, descriptor_uid: str) -> str:
    name = run.descriptors[descriptor_uid].get("name", "primary")
    same = [d for d, doc in run.descriptors.items() if doc.get("name", "primary") == name]
    return same[-1]


# ---- field checks -------------------------------------------------------------------------------
_NUMERIC_KINDS = frozenset("biuf")
_JSON_NUMBER_TYPES = frozenset({"number", "integer", "boolean"})


def bad_event_fields(doc: Doc, descriptor: Doc) -> dict[str, str]:
    """Which fields of an Event cannot be used, and why (empty when all are good).

    Checked against the descriptor's ``data_keys``: a value that could not be decoded, a key
    the descriptor does not declare, an image (declared with >= 2 dimensions) that is not a
    non-empty numeric array of the declared rank and shape, a number that is not a number.
    """
    data_keys = descriptor.get("data_keys") or {}
    problems: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        info = data_keys.get(key)
        if isinstance(value, UndecodableField):
            problems[key] = f"undecodable: {value.reason}"
        elif not isinstance(info, dict):
            problems[key] = "unknown key: not a data key of the descriptor"
        elif info.get("external"):
            if not isinstance(value, str):
                problems[key] = f"type: external reference is a {type(value).__name__}"
        elif len(info.get("shape") or []) >= 2:
            problem = _image_problem(value, list(info["shape"]))
            if problem:
                problems[key] = problem
        elif not info.get("shape") and info.get("dtype") in _JSON_NUMBER_TYPES:
            if not _is_number(value):
                problems[key] = f"type: {type(value).__name__} where a number is declared"
    return problems


def _is_number(value: Any) -> bool:
    if isinstance(value, bool | int | float | np.bool_ | np.number):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in _NUMERIC_KINDS


def _image_problem(value: Any, shape: list[Any]) -> str | None:
    if isinstance(value, str | bytes):
        return "type: a string where an image is declared"
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - ragged nested lists and the like
        return f"type: not an array ({exc})"
    if arr.dtype.kind not in _NUMERIC_KINDS:
        return f"dtype: {arr.dtype} is not numeric"
    if arr.size == 0:
        return f"shape: zero-sized array {arr.shape}"
    declared = [int(n) for n in shape if isinstance(n, int)]
    if arr.ndim != len(shape):
        return f"shape: {arr.ndim}-D array {arr.shape} where {len(shape)}-D {shape} is declared"
    if len(declared) == len(shape) and all(n > 0 for n in declared):
        if tuple(declared) != arr.shape:
            return f"shape: {arr.shape} where {tuple(declared)} is declared"
    return None


def _problem_kind(problem: str) -> str:
    return problem.split(":", 1)[0]


def _without_fields(doc: Doc, problems: dict[str, str]) -> Doc:
    out = dict(doc)
    for name in ("data", "timestamps", "filled"):
        if isinstance(doc.get(name), dict):
            out[name] = {k: v for k, v in doc[name].items() if k not in problems}
    return out


# ---- document checks at the boundary ------------------------------------------------------------
def _mapping(doc: Doc, field: str) -> dict[str, Any]:
    value = doc[field]
    if not isinstance(value, dict):
        raise TypeError(f"{field} is a {type(value).__name__}, expected a map")
    return value


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{field} is a {type(value).__name__}, expected an integer")
    return int(value)


def _check_page_lists(doc: Doc, fields: tuple[str, ...], length: int | None, what: str) -> None:
    """``unpack_event_page`` / ``unpack_datum_page`` pad short lists: refuse them here."""
    for name in fields:
        values = doc[name]
        if not isinstance(values, list):
            raise TypeError(f"{what} {name} is a {type(values).__name__}, expected a list")
        if length is not None and len(values) != length:
            raise ValueError(f"{what} {name} has {len(values)} entries for a page of {length}")


def _check_page_columns(columns: Any, length: int, what: str) -> None:
    if not isinstance(columns, dict):
        raise TypeError(f"{what} column map is a {type(columns).__name__}")
    for key, values in columns.items():
        if not isinstance(values, list) or len(values) != length:
            raise ValueError(f"{what} column {key!r} is not a list of the page length")


def validate_document(name: str, doc: Doc) -> None:
    """Check the identifiers and types a router relies on; raise with what is wrong.

    Raises
    ------
    InvalidIdentifier
        A uid or name that could become a path or a Tiled key is not of the safe form.
    KeyError, TypeError, ValueError
        A required field is missing or of the wrong type.
    """
    if name == "start":
        check_uid(doc["uid"], "start uid")
    elif name == "descriptor":
        check_uid(doc["uid"], "descriptor uid")
        check_uid(doc["run_start"], "descriptor run_start")
        check_name(doc.get("name", "primary"), "stream name")
        for key, info in _mapping(doc, "data_keys").items():
            check_name(key, "data key")
            if not isinstance(info, dict):
                raise TypeError(f"data key {key!r} is described by a {type(info).__name__}")
    elif name == "event":
        check_uid(doc["descriptor"], "event descriptor")
        if _int(doc["seq_num"], "seq_num") < 1:
            raise ValueError(f"seq_num {doc['seq_num']} is not >= 1")
        _mapping(doc, "data")
        if not isinstance(doc.get("timestamps", {}), dict):
            raise TypeError("timestamps is not a map")
    elif name == "event_page":
        check_uid(doc["descriptor"], "event_page descriptor")
        seq_nums = doc["seq_num"]
        if not isinstance(seq_nums, list):
            raise TypeError("event_page seq_num is not a list")
        _check_page_lists(doc, ("uid", "time"), len(seq_nums), "event_page")
        columns = (_mapping(doc, "data"), _mapping(doc, "timestamps"), doc.get("filled") or {})
        for column in columns:
            _check_page_columns(column, len(seq_nums), "event_page")
    elif name in ("resource", "stream_resource"):
        check_uid(doc["uid"], f"{name} uid")
        check_uid(doc["run_start"], f"{name} run_start")
        if name == "stream_resource":
            check_name(doc["data_key"], "stream_resource data_key")
    elif name == "datum":
        check_datum_id(doc["datum_id"], "datum_id")
        check_uid(doc["resource"], "datum resource")
    elif name == "datum_page":
        check_uid(doc["resource"], "datum_page resource")
        _check_page_lists(doc, ("datum_id",), None, "datum_page")
        for datum_id in doc["datum_id"]:
            check_datum_id(datum_id, "datum_id")
        _check_page_columns(_mapping(doc, "datum_kwargs"), len(doc["datum_id"]), "datum_page")
    elif name == "stream_datum":
        check_uid(doc["stream_resource"], "stream_datum stream_resource")
        check_uid(doc["descriptor"], "stream_datum descriptor")
        indices = _mapping(doc, "indices")
        start, stop = _int(indices["start"], "indices.start"), _int(indices["stop"], "indices.stop")
        if not 0 <= start <= stop:
            raise ValueError(f"stream_datum indices {start}..{stop} are not an interval")
    elif name == "stop":
        check_uid(doc["run_start"], "stop run_start")
