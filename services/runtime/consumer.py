"""A consumer process: bus -> per-run routers -> spool -> Tiled, with metrics.

Two roles run side by side under ``beamwatch up``:

``raw``       registers every run in Tiled under ``raw/<uid>`` with bluesky's TiledWriter;
``analysis``  feeds frames to the pipelines of the registry, results under ``analysis/<uid>``.

The bus is drained by its own thread into a bounded in-memory queue (``doc_queue``): a slow
pipeline holds the bus thread back (back-pressure) instead of growing memory without bound; its
depth, bytes and waiting time are metrics, and what 0MQ then drops is counted as bus losses.

With ``bus.mode: nats`` the documents come from the JetStream stream instead
(``services.bus.jetstream``): the consumer claims whole runs (other processes of the same role,
here or on other machines, take the others), and acknowledges each document once the
dispatcher has put its effects on disk (journal and spool); a run is released when it is
finished and all its writes are in Tiled.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from services.analysis.child_stage import ChildStages
from services.analysis.registry import default_registry
from services.analysis.results import RecoveryInterrupted
from services.analysis.router import AnalysisRunRouter, PipelineRegistry, RawEvent
from services.bus.bridge import PUBACK_TIMEOUT
from services.bus.jetstream import JetStreamRuns
from services.bus.subscriber import BusSubscriber
from services.core.identifiers import InvalidIdentifier, check_uid
from services.core.layout import (
    ANALYSIS,
    FINAL_STATUSES,
    RAW,
    MetadataKeys,
    RawStatus,
    Status,
    not_complete,
    status_node,
)
from services.core.metrics import Metrics
from services.core.settings import BeamwatchSettings
from services.runs.ingest import STAND_IN_STOP_KEY, RawRunRouter
from services.runs.journal import RunJournal
from services.runs.routing import Doc, RouterFactory, RunDispatcher
from services.runtime.doc_queue import DocumentQueue
from services.tiled.applier import TiledApplier, connect, is_transient, is_unreachable
from services.tiled.frame_files import remove_stale_temp_files
from services.tiled.records import (
    ArrayRows,
    Container,
    Metadata,
    RawDoc,
    RawDocs,
    Record,
    TableRows,
)
from services.tiled.spool import Spool

logger = logging.getLogger(__name__)

ROLES = ("raw", "analysis")
#: How often the dispatcher gives up on gaps and idle runs, in seconds.
SWEEP_INTERVAL = 0.25
#: Documents fetched from JetStream but not dispatched yet, at most (back-pressure: no
#: document waits unacknowledged long enough to be delivered again).
MAX_QUEUED = 512
#: A queue item that replays a run's journal (JetStream mode: when the run is claimed again).
REPLAY = "__replay__"
#: A queue item that hands the result of a lookup made off the dispatch thread back to it.
LOOKED_UP = "__looked_up__"


class LazyClient:
    """Connects to Tiled on first use and again after a failure (the server may restart)."""

    def __init__(self, url: str, api_key: str, timeout: float = 20.0) -> None:
        self._url = url
        self._api_key = api_key
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = connect(self._url, self._api_key, timeout=self._timeout)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.context.close()
                self._client = None


class _ReconnectingApplier:
    """One :class:`TiledApplier` for all the spool's workers (it holds each run's state)."""

    def __init__(self, client: LazyClient) -> None:
        self._client = client
        self._applier: TiledApplier | None = None
        self._lock = threading.Lock()

    def __call__(self, record: Record) -> None:
        applier = self._applier
        if applier is None:
            with self._lock:
                if self._applier is None:
                    self._applier = TiledApplier(self._client.get())
                applier = self._applier
        applier(record)


def gap_wait(settings: BeamwatchSettings) -> float:
    """How long a seq_num gap (or a stop before its last events) is waited for.

    On the JetStream bus a document is not lost when it is late: a publish that went into a
    dying ``nats-server`` is published again by the bridge once its PubAck has not come for
    ``PUBACK_TIMEOUT`` s, and lands in the stream behind the documents sent after the
    reconnect (the chaos run, seed 19: an event 2.4 s after its run's stop, given up at
    ``reorder_timeout`` 2 s). So the wait there covers the bridge's retry: twice its timeout.
    """
    if settings.bus.mode == "nats":
        return max(settings.reorder_timeout, 2 * PUBACK_TIMEOUT)
    return settings.reorder_timeout


class Consumer:
    """One consumer role, runnable in-process (tests) or as a child of ``beamwatch up``."""

    def __init__(
        self,
        role: str,
        settings: BeamwatchSettings,
        *,
        metrics: Metrics | None = None,
        registry: PipelineRegistry | None = None,
        bus_address: str | None = None,
        child_stages: ChildStages | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.role = role
        self.settings = settings
        self.metrics = metrics or Metrics(role)
        self._feedback: Any = None
        self._registry: Any = None  # the analysis registry, closed when the consumer stops
        #: child processes of after-scan stages (the default registry's tomograms, or those of
        #: a given registry's pipelines): killed when the consumer stops
        self._child_stages = child_stages
        self._client = LazyClient(
            settings.tiled_url, settings.resolved_api_key(), settings.tiled.request_timeout
        )
        self.spool = Spool(
            settings.spool_dir / role,
            _ReconnectingApplier(self._client),
            self.metrics,
            max_backoff=settings.retry_max_backoff,
            is_transient=is_transient,
            is_unreachable=is_unreachable,
            on_reject=self._report_rejected,
            workers=settings.spool_workers,
        )
        self._rejected: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        # ``after_scan_workers`` threads (2 by default): a long stage (a tomogram's
        # reconstruction) does not hold back the end of the next run; each stage is parallel
        # inside already (numpy, torch). A tomogram's in-memory stage runs in a child process
        # (services.analysis.child_stage), which its worker thread waits for, relaying its
        # writes to the spool.
        self._after_scan_pool = ThreadPoolExecutor(
            settings.after_scan_workers, thread_name_prefix=f"{role}-after-scan"
        )
        self._after_scan_jobs: set[Future[None]] = set()
        self._after_scan_lock = threading.Lock()
        self._after_scan_runs: dict[str, int] = {}
        # Runs to resume: their journals survived a crash. Spooled writes of those runs are
        # dropped, the replay makes them again (idempotently) in the right order.
        self.journal = RunJournal(settings.spool_dir / role / "runs")
        self._resume = self.journal.runs()
        self._finished_runs: set[str] = set()
        if self._resume:
            resume = set(self._resume)
            dropped = self.spool.discard_runs(resume)
            logger.warning(
                "resuming %d runs after a crash; %d spooled writes of them will be remade",
                len(resume),
                dropped,
            )
        factory: RouterFactory
        recover_start: Callable[[str], Doc | None] | None
        if role == "raw":
            roots = settings.readable_roots
            refused = self.metrics.resources_refused
            frames_dir = settings.raw_frames_readable
            frame_errors = self.metrics.spool_errors.labels(self.metrics.service, "frame_file")
            if frames_dir is not None:
                frames_dir.mkdir(parents=True, exist_ok=True)
                remove_stale_temp_files(frames_dir)  # a SIGKILL mid-write leaves one

            def raw_factory(start: Doc) -> RawRunRouter | None:
                return RawRunRouter(
                    self.spool,
                    readable_roots=roots,
                    on_refused=lambda kind: refused.labels(self.role, kind).inc(),
                    frames_dir=frames_dir,
                    on_frame_error=frame_errors.inc,
                )

            factory = raw_factory

            recover_start = recover_stop = None
        else:
            if registry is None:
                from services.analysis.xanes_live import FeedbackPublisher

                self._feedback = FeedbackPublisher(settings.bus.feedback_address)
                from services.analysis.tomo_slabs import SlabConfig

                if settings.after_scan_child and self._child_stages is None:
                    self._child_stages = ChildStages(
                        settings.spool_dir / role / "stages",
                        threads=settings.after_scan_threads,
                        log_level=settings.log_level,
                        timeout=settings.after_scan_timeout,
                        metrics=self.metrics,
                    )
                registry = default_registry(
                    settings.data_dir / "figures",
                    self._feedback,
                    slabs=SlabConfig(settings.dask, settings.slab_work_dir),
                    series_dir=settings.data_dir / "series",
                    references_dir=settings.data_dir,
                    metrics=self.metrics,
                    child_stages=self._child_stages,
                )
            reg = self._registry = registry

            def factory(start: Doc) -> AnalysisRunRouter | None:
                entries = reg.select(start)
                if not entries:
                    return None
                return AnalysisRunRouter(
                    start,
                    entries,
                    self.spool,
                    self.metrics,
                    raw_lookup=self._raw_events,
                    after_scan=self._submit_after_scan,
                )

            recover_start = self._recover_start
            recover_stop = self._recover_stop
        self.dispatcher = RunDispatcher(
            [factory],
            self.metrics,
            recover_start=recover_start,
            recover_stop=recover_stop,
            idle_timeout=settings.run_idle_timeout,
            reorder_timeout=gap_wait(settings),
            journal=self.journal,
            on_finish=self._run_finished,
            recovery_timeout=settings.recovery_timeout,
            defer=self._defer,
        )
        bus_queue = f"{role}-bus"
        # the gauges of the bus queue, looked up once: they are set at every put and get
        self._bus_depth = self.metrics.queue_depth.labels(bus_queue)
        self._bus_bytes = self.metrics.queue_bytes.labels(bus_queue)
        self._queue = DocumentQueue(
            settings.dispatch_queue_documents,
            int(settings.dispatch_queue_mb * 2**20),
            on_change=self._bus_queue_changed,
            on_wait=self.metrics.backpressure_seconds.labels(bus_queue).inc,
        )
        self._bus: BusSubscriber | None = None
        self.runs_source: JetStreamRuns | None = None
        if settings.bus.mode == "nats":
            # Journals are replayed when their runs are claimed again (here or elsewhere).
            self.runs_source = JetStreamRuns(
                role,
                settings,
                self.metrics,
                self._enqueue,
                room=lambda: self._queue.qsize() < min(MAX_QUEUED, self._queue.max_items),
                claim_room=self._room_for_a_run,
                journaled=set(self._resume),
                replay=self._queue_replay,
                given_up=self._run_given_up,
            )
            self._resume = []
        else:
            self._bus = BusSubscriber(
                bus_address or settings.bus.out_address,
                self._enqueue,
                self.metrics,
                rcvhwm=settings.bus.rcvhwm,
            )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Lookups in Tiled for the dispatcher (the start of a run of which only the stop
        # came), on a thread of their own: the dispatch thread never waits for Tiled there.
        self._lookups: queue.Queue[tuple[Callable[[], Any], Callable[[Any], None]]] = queue.Queue()
        self._lookups_busy = 0
        self._lookups_lock = threading.Lock()

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._registry is not None:
            # before any thread that routes documents starts: imports made by two threads at
            # once can deadlock in a package that imports its own modules (a warm-up thread
            # beside the dispatch thread left pipelines.xanes half imported: "cannot import
            # name 'detect_particles'", the run's xanes failed)
            self._registry.warm_up()
        self.spool.start()
        loops = [(self._dispatch_loop, "dispatch"), (self._lookup_loop, "lookup")]
        if self._bus is not None:
            loops.append((self._bus_loop, "bus"))
        for target, name in loops:
            t = threading.Thread(target=target, name=f"{self.role}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.runs_source is not None:
            self.runs_source.start()

    def stop(self, drain_timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            # a lookup may hang until its request timeout: its (daemon) thread is not waited
            # for, what it finds is of no use any more
            t.join(timeout=0.5 if t.name.endswith("-lookup") else 10)
        self.dispatcher.close()
        if self._child_stages is not None:
            # a stage in a child ends now, its run left open (replayed by the next process)
            self._child_stages.close()
        self._after_scan_pool.shutdown(wait=True)
        if self._registry is not None:
            self._registry.close()  # after the after-scan stages that use its series state
        self.spool.stop(drain_timeout)
        self._remove_done_journals()  # releases the claims of runs now done
        if self.runs_source is not None:
            self.runs_source.close()  # open runs: claimed again after ack_wait
        self.journal.close()
        if self._bus is not None:
            self._bus.close()
        self._client.close()
        if self._feedback is not None:
            self._feedback.close()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the queue is processed and the spool is drained (for tests and demo)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lookups_lock:
                looking_up = self._lookups_busy
            if (
                looking_up == 0
                and self._queue.unfinished_tasks == 0
                and self.after_scan_depth() == 0
                and self.spool.depth() == 0
            ):
                return True
            self.spool.wait_empty(0.2)
        return False

    def run_forever(self) -> int:
        """Run until asked to stop (0) or until a worker thread dies (1: restart the process).

        A consumer whose bus, dispatch or spool thread died would look alive while doing
        nothing; it exits instead, so the supervisor shows ``child_up`` 0 and restarts it.
        """
        self.start()
        try:
            while not self._stop.wait(1.0):
                dead = self.dead_workers()
                if dead:
                    logger.critical("worker threads %s died; exiting to be restarted", dead)
                    return 1
            return 0
        finally:
            self.stop()

    def dead_workers(self) -> list[str]:
        dead = [t.name for t in self._threads if not t.is_alive()]
        if not self.spool.is_alive():
            dead.append("spool")
        if self.runs_source is not None and not self.runs_source.is_alive():
            dead.append("jetstream")
        return dead

    def request_stop(self) -> None:
        self._stop.set()

    # ---- rejected writes ----------------------------------------------------------------------
    def _report_rejected(self, record: Record, error: str) -> None:
        """Name a write Tiled will not accept in the metadata of the run (or pipeline) it is
        for, with the seq_nums or rows it held; the applier then keeps that run or pipeline
        from saying ``complete`` (:meth:`TiledApplier._metadata`)."""
        raw = isinstance(record, RawDoc | RawDocs)
        path: tuple[str, ...] = () if isinstance(record, RawDoc | RawDocs) else record.path
        node = status_node((RAW, record.run) if raw and record.run else path)
        if node is None:
            return
        target = node[0]
        entry: dict[str, Any] = {
            "op": record.op,
            "key": record.label,
            "path": "/".join(path),
            "error": error[:500],
            **rejected_contents(record),
        }
        rejected = self._rejected.setdefault(target, [])
        rejected.append(entry)
        keys = MetadataKeys()
        metadata = {keys.rejected_writes: list(rejected), keys.write_errors: len(rejected)}
        metadata.update(_final_status_of(record, target, node[1]))
        self.spool.put(Metadata(target, metadata, notice=True))

    def _run_given_up(self, run_uid: str, reason: str) -> None:
        """A run that crashed every worker (JetStream): ``failed`` in its Tiled container."""
        try:
            check_uid(run_uid, "run uid")
        except InvalidIdentifier as exc:
            logger.error("cannot mark the run failed in Tiled: %s", exc)
            return
        keys = MetadataKeys()
        if self.role == "raw":
            target, status = (RAW, run_uid), {keys.raw_status: RawStatus.FAILED.value}
        else:
            target, status = (ANALYSIS, run_uid), {keys.status: Status.FAILED.value}
        self.spool.put(Metadata(target, {**status, keys.error: reason}))

    # ---- loops ---------------------------------------------------------------------------------
    def _submit_after_scan(self, run_uid: str, job: Callable[[], None]) -> None:
        def run() -> None:
            try:
                job()
            except RecoveryInterrupted:
                # stopping before the run's lost frames were recovered: its journal stays,
                # and the next process replays the run and recovers them
                logger.warning("run left unfinished at shutdown", extra={"run_uid": run_uid})
                with self._after_scan_lock:
                    self._finished_runs.discard(run_uid)
            except Exception:
                logger.exception("after-scan stage failed", extra={"run_uid": run_uid})

        future = self._after_scan_pool.submit(run)
        with self._after_scan_lock:
            self._after_scan_jobs.add(future)
            self._after_scan_runs[run_uid] = self._after_scan_runs.get(run_uid, 0) + 1
        future.add_done_callback(lambda _f: self._after_scan_run_done(run_uid))
        future.add_done_callback(self._after_scan_done)
        self.metrics.queue_depth.labels(f"{self.role}-after-scan").set(self.after_scan_depth())

    def _after_scan_done(self, future: Future[None]) -> None:
        with self._after_scan_lock:
            self._after_scan_jobs.discard(future)
        self.metrics.queue_depth.labels(f"{self.role}-after-scan").set(self.after_scan_depth())

    def _after_scan_run_done(self, run_uid: str) -> None:
        with self._after_scan_lock:
            left = self._after_scan_runs.get(run_uid, 1) - 1
            if left > 0:
                self._after_scan_runs[run_uid] = left
            else:
                self._after_scan_runs.pop(run_uid, None)

    def _run_finished(self, run_uid: str) -> None:
        self._finished_runs.add(run_uid)
        if self.runs_source is not None:
            self.runs_source.run_finished(run_uid)

    def _remove_done_journals(self) -> None:
        """Journals of finished runs go once their stages are done and their writes applied."""
        if not self._finished_runs:
            return
        with self._after_scan_lock:
            busy = set(self._after_scan_runs)
        for run_uid in list(self._finished_runs - busy):
            if self.spool.pending(run_uid) == 0:
                self.journal.remove(run_uid)
                self._finished_runs.discard(run_uid)
                if self.runs_source is not None:
                    self.runs_source.run_done(run_uid)

    def _room_for_a_run(self) -> bool:
        """Whether to claim another run of the stream: not while ``nats.max_after_scan``
        after-scan stages are queued or running here (0: no limit), so that queued runs go to
        idle workers instead of waiting behind this one's stages."""
        limit = self.settings.nats.max_after_scan
        return limit == 0 or self.after_scan_depth() < limit

    def after_scan_depth(self) -> int:
        """After-scan stages queued or running."""
        with self._after_scan_lock:
            return len(self._after_scan_jobs)

    def _enqueue(self, name: str, doc: Doc, ack: Callable[[], None] | None = None) -> None:
        # Arrival on the bus: the clock of every latency starts here. While the queue is full
        # this waits, and the socket is not read meanwhile (back-pressure).
        if not self._queue.put((name, doc, time.monotonic(), ack), self._stop):
            logger.info("stopping: %s document not dispatched", name)

    def _queue_replay(self, run_uid: str) -> None:
        # A claimed run with a journal here: the dispatch thread replays it in bus order.
        self._queue.put((REPLAY, {"uid": run_uid}, time.monotonic(), None), self._stop)

    def _bus_queue_changed(self, depth: int, nbytes: int) -> None:
        self._bus_depth.set(depth)
        self._bus_bytes.set(nbytes)

    def _bus_loop(self) -> None:
        assert self._bus is not None
        while not self._stop.is_set():
            self._bus.poll_once(200)

    def _dispatch_loop(self) -> None:
        for run_uid in self._resume:
            try:
                self.dispatcher.replay(run_uid, self.journal.documents(run_uid))
            except Exception:
                logger.exception("resuming run from its journal failed", extra={"run_uid": run_uid})
        self._resume = []
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while not self._stop.is_set():
            if time.monotonic() >= next_sweep:  # also under load: gaps must not wait forever
                self.dispatcher.sweep()
                self._remove_done_journals()
                next_sweep = time.monotonic() + SWEEP_INTERVAL
            try:
                name, doc, received, ack = self._queue.get(timeout=SWEEP_INTERVAL)
            except queue.Empty:
                continue
            try:
                if name == REPLAY:
                    self.dispatcher.replay(doc["uid"], self.journal.documents(doc["uid"]))
                elif name == LOOKED_UP:
                    doc["then"](doc["result"])
                else:
                    self.dispatcher(name, doc, received)
                if self._queue.qsize() == 0:
                    # Idle: nothing to batch with, so what the routers hold goes now (held
                    # documents are in the run's journal already, so an ack is safe).
                    self.dispatcher.flush()
            except Exception:
                logger.exception("dispatching %s failed", name)
            finally:
                # Acked once dispatched: what it changed is in the run's journal and the
                # spool, both on disk (a document that failed is not retried forever).
                if ack is not None:
                    ack()
                self._queue.task_done()

    # ---- lookups off the dispatch thread ---------------------------------------------------------
    def _defer(self, lookup: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """Run ``lookup`` on the lookup thread; ``then(result)`` comes back through the queue,
        so the dispatch thread calls it between documents."""
        with self._lookups_lock:
            self._lookups_busy += 1
        self._lookups.put((lookup, then))

    def _lookup_loop(self) -> None:
        while not self._stop.is_set():
            try:
                lookup, then = self._lookups.get(timeout=SWEEP_INTERVAL)
            except queue.Empty:
                continue
            try:
                try:
                    result = lookup()
                except Exception:
                    logger.exception("lookup in Tiled failed")
                    result = None
                item = (LOOKED_UP, {"then": then, "result": result}, time.monotonic(), None)
                self._queue.put(item, self._stop)
            finally:
                with self._lookups_lock:
                    self._lookups_busy -= 1

    # ---- recovery from Tiled ---------------------------------------------------------------------
    def _recover_start(self, run_uid: str) -> Doc | None:
        try:
            client = self._client.get()
            node = client["raw"][run_uid]
            start = dict(node.metadata.get("start") or {})
        except KeyError:
            logger.warning("start of run %s not in Tiled (yet)", run_uid)
            return None
        except Exception:
            logger.warning("start of run %s not found in Tiled", run_uid, exc_info=True)
            return None
        return start or None

    def _recover_stop(self, run_uid: str) -> Doc | None:
        """The stop of a run this consumer never got, as the raw path stored it."""
        try:
            stop = self._client.get()["raw"][run_uid].metadata.get("stop")
        except Exception:
            logger.warning(
                "stop of an idle run not found in Tiled", exc_info=True, extra={"run_uid": run_uid}
            )
            return None
        if not stop or stop.get(STAND_IN_STOP_KEY):
            # raw/ lost the stop too: its stand-in stop counts no Events
            return None
        return dict(stop)

    def _raw_events(self, run_uid: str, stream: str, seq_nums: list[int]) -> dict[int, RawEvent]:
        """The Events of a stream as ``raw/<uid>`` holds them, for frames lost on the bus.

        Waits, up to ``recovery_timeout``, for the raw path to have finished the run (its stop
        is in ``raw/<uid>``) and for Tiled to answer: at the stop of a run the raw consumer may
        be behind, or Tiled restarting. After that, what ``raw/`` holds is taken.
        """
        deadline = time.monotonic() + self.settings.recovery_timeout
        while True:
            try:
                run = self._client.get()["raw"][run_uid]
                # done: its stop is in, or its status (a stop Tiled refused leaves that)
                done = "stop" in run.metadata or MetadataKeys().raw_status in run.metadata
                if done or time.monotonic() >= deadline:
                    return read_raw_events(run, stream, seq_nums)
                logger.info("waiting for raw/ to finish the run", extra={"run_uid": run_uid})
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise
                logger.info(
                    "raw/ not readable yet (%s); retrying",
                    type(exc).__name__,
                    extra={"run_uid": run_uid},
                )
            if self._stop.wait(1.0):
                raise RecoveryInterrupted(run_uid)


def _final_status_of(record: Record, target: tuple[str, ...], key: str) -> dict[str, Any]:
    """For the notice of a rejected write that would have ended its run or pipeline (its
    final status): that end, ``incomplete`` instead of ``complete``. Without it the status
    stayed what it was, ``running`` for good (the notice only turns ``complete`` into
    ``incomplete``)."""
    if not isinstance(record, Metadata | Container) or tuple(record.path) != target:
        return {}
    status = (record.metadata or {}).get(key)
    if status not in FINAL_STATUSES:
        return {}
    ended = {key: not_complete(status)}
    error = (record.metadata or {}).get(MetadataKeys().error)
    if error is not None:
        ended[MetadataKeys().error] = error
    return ended


def read_raw_events(run: Any, stream: str, seq_nums: list[int]) -> dict[int, RawEvent]:
    """Rows and frames of ``seq_nums`` in ``raw/<uid>/<stream>`` (absent ones left out).

    Frame ``i`` of a stream's image array is the Event with seq_num ``i + 1`` (the raw path
    appends in seq_num order); where the stream's rows have a gap that holds only for the
    seq_nums before it, so later ones are not taken from the array.
    """
    if stream not in run:
        return {}
    node = run[stream]
    base = node.base if hasattr(node, "base") else node
    if "internal" not in base:
        return {}
    table = base["internal"].read()
    if "seq_num" not in table.columns:
        return {}
    rows = {int(r["seq_num"]): r for r in table.to_dict(orient="records")}
    first_gap = next(s for s in range(1, len(rows) + 2) if s not in rows)
    wanted = [s for s in seq_nums if s in rows]
    images: dict[int, dict[str, Any]] = {s: {} for s in wanted}
    in_array = [s for s in wanted if s < first_gap]
    for key in base:
        array = base[key]
        if key == "internal" or getattr(array, "structure_family", None) != "array":
            continue
        if len(array.shape) < 3 or not in_array:
            continue
        lo, hi = min(in_array) - 1, min(max(in_array), int(array.shape[0]))
        if hi <= lo:
            continue
        block = array[lo:hi]
        for s in in_array:
            if s - 1 < hi:
                images[s][key] = block[s - 1 - lo]
    out = {}
    for s in wanted:
        row = rows[s]
        readings = {
            k: v for k, v in row.items() if k not in ("seq_num", "time") and not k.startswith("ts_")
        }
        out[s] = RawEvent(float(row.get("time", float("nan"))), readings, images[s])
    return out


def rejected_contents(record: Record) -> dict[str, Any]:
    """What a rejected write held, for the run's metadata: the Events' seq_nums of raw
    documents (per descriptor uid), the rows of a table or array append."""
    if isinstance(record, RawDoc | RawDocs):
        docs = record.records if isinstance(record, RawDocs) else (record,)
        seq_nums: dict[str, list[int]] = {}
        for one in docs:
            if one.name == "event":
                seq_nums.setdefault(str(one.doc.get("descriptor")), []).append(
                    int(one.doc.get("seq_num", -1))
                )
            elif one.name == "event_page":
                seq_nums.setdefault(str(one.doc.get("descriptor")), []).extend(
                    int(n) for n in one.doc.get("seq_num", [])
                )
        names = sorted({one.name for one in docs})
        return {"documents": names, "seq_nums": seq_nums} if seq_nums else {"documents": names}
    if isinstance(record, TableRows):
        return {"rows": [record.offset, record.offset + record.n_rows]}
    if isinstance(record, ArrayRows):
        return {"rows": [record.offset, record.offset + int(record.array.shape[record.axis])]}
    return {}
