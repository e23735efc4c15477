"""A consumer process: bus -> per-run routers -> spool -> Tiled, with metrics.

Two roles run side by side under ``beamwatch up``:

``raw``       registers every run in Tiled under ``raw/<uid>`` with bluesky's TiledWriter;
``analysis``  feeds frames to the pipelines of the registry, results under ``analysis/<uid>``.

The bus is drained by its own thread into an in-memory queue so a slow pipeline never makes
0MQ drop messages; the queue depth is a metric.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from services.analysis.registry import default_registry
from services.analysis.router import AnalysisRunRouter, PipelineRegistry
from services.bus.subscriber import BusSubscriber
from services.core.metrics import Metrics
from services.core.settings import BeamwatchSettings
from services.runs.ingest import RawRunRouter
from services.runs.journal import RunJournal
from services.runs.routing import Doc, RouterFactory, RunDispatcher
from services.tiled.applier import TiledApplier, connect, is_transient
from services.tiled.spool import Spool

logger = logging.getLogger(__name__)

ROLES = ("raw", "analysis")
#: How often the dispatcher gives up on gaps and idle runs, in seconds.
SWEEP_INTERVAL = 0.25
#: Threads running after-scan stages (maps, reconstructions) off the dispatch thread.
AFTER_SCAN_WORKERS = 2


class LazyClient:
    """Connects to Tiled on first use and again after a failure (the server may restart)."""

    def __init__(self, url: str, api_key: str) -> None:
        self._url = url
        self._api_key = api_key
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = connect(self._url, self._api_key)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.context.close()
                self._client = None


class _ReconnectingApplier:
    def __init__(self, client: LazyClient) -> None:
        self._client = client
        self._applier: TiledApplier | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self._applier is None:
            self._applier = TiledApplier(self._client.get())
        self._applier(record)


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
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.role = role
        self.settings = settings
        self.metrics = metrics or Metrics(role)
        self._feedback: Any = None
        self._client = LazyClient(settings.tiled_url, settings.resolved_api_key())
        self.spool = Spool(
            settings.spool_dir / role,
            _ReconnectingApplier(self._client),
            self.metrics,
            max_backoff=settings.retry_max_backoff,
            is_transient=is_transient,
            on_reject=self._report_rejected,
        )
        self._rejected: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        # Two workers: a long stage (a tomogram's reconstruction) does not hold back the end
        # of the next run; each stage is parallel inside already (numpy, torch).
        self._after_scan_pool = ThreadPoolExecutor(
            AFTER_SCAN_WORKERS, thread_name_prefix=f"{role}-after-scan"
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
            dropped = self.spool.discard(lambda record: _record_run(record) in resume)
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

            def raw_factory(start: Doc) -> RawRunRouter | None:
                return RawRunRouter(
                    self.spool,
                    readable_roots=roots,
                    on_refused=lambda kind: refused.labels(self.role, kind).inc(),
                )

            factory = raw_factory

            recover_start = None
        else:
            if registry is None:
                from services.analysis.xanes_live import FeedbackPublisher

                self._feedback = FeedbackPublisher(settings.bus.feedback_address)
                from services.analysis.tomo_slabs import SlabConfig

                registry = default_registry(
                    settings.data_dir / "figures",
                    self._feedback,
                    slabs=SlabConfig(settings.dask, settings.slab_work_dir),
                )
            reg = registry

            def factory(start: Doc) -> AnalysisRunRouter | None:
                entries = reg.select(start)
                if not entries:
                    return None
                return AnalysisRunRouter(
                    start,
                    entries,
                    self.spool,
                    self.metrics,
                    readings_lookup=self._lookup_readings,
                    after_scan=self._submit_after_scan,
                )

            recover_start = self._recover_start
        self.dispatcher = RunDispatcher(
            [factory],
            self.metrics,
            recover_start=recover_start,
            idle_timeout=settings.run_idle_timeout,
            reorder_timeout=settings.reorder_timeout,
            journal=self.journal,
            on_finish=self._finished_runs.add,
        )
        self._queue: queue.Queue[tuple[str, Doc, float]] = queue.Queue()
        self._bus = BusSubscriber(
            bus_address or settings.bus.out_address,
            self._enqueue,
            self.metrics,
            rcvhwm=settings.bus.rcvhwm,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.spool.start()
        for target, name in ((self._bus_loop, "bus"), (self._dispatch_loop, "dispatch")):
            t = threading.Thread(target=target, name=f"{self.role}-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, drain_timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self.dispatcher.close()
        self._after_scan_pool.shutdown(wait=True)
        self.spool.stop(drain_timeout)
        self._remove_done_journals()
        self.journal.close()
        self._bus.close()
        self._client.close()
        if self._feedback is not None:
            self._feedback.close()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the queue is processed and the spool is drained (for tests and demo)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                self._queue.unfinished_tasks == 0
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
        return dead

    def request_stop(self) -> None:
        self._stop.set()

    # ---- rejected writes ----------------------------------------------------------------------
    def _report_rejected(self, record: dict[str, Any], error: str) -> None:
        """Name a write Tiled will not accept in the metadata of the run (or pipeline) it is for."""
        path = [str(p) for p in record.get("path") or []]
        if record.get("op") == "raw_doc" and record.get("run"):
            target = ["raw", str(record["run"])]
        elif path[:1] == ["analysis"] and len(path) >= 3:
            target = path[:3]
        elif path[:1] == ["raw"] and len(path) >= 2:
            target = path[:2]
        else:
            return
        entry = {
            "op": record.get("op"),
            "key": record.get("key") or record.get("name"),
            "path": "/".join(path),
            "error": error[:500],
        }
        rejected = self._rejected.setdefault(tuple(target), [])
        rejected.append(entry)
        self.spool.put(
            {
                "op": "metadata",
                "path": target,
                "metadata": {"rejected_writes": rejected, "write_errors": len(rejected)},
                "notice": True,
            }
        )

    # ---- loops ---------------------------------------------------------------------------------
    def _submit_after_scan(self, run_uid: str, job: Callable[[], None]) -> None:
        def run() -> None:
            try:
                job()
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

    def _remove_done_journals(self) -> None:
        """Journals of finished runs go once their stages are done and the spool is empty."""
        if not self._finished_runs or self.spool.depth() > 0:
            return
        with self._after_scan_lock:
            busy = set(self._after_scan_runs)
        for run_uid in list(self._finished_runs - busy):
            self.journal.remove(run_uid)
            self._finished_runs.discard(run_uid)

    def after_scan_depth(self) -> int:
        """After-scan stages queued or running."""
        with self._after_scan_lock:
            return len(self._after_scan_jobs)

    def _enqueue(self, name: str, doc: Doc) -> None:
        # Arrival on the bus: the clock of every latency starts here.
        self._queue.put((name, doc, time.monotonic()))
        self.metrics.queue_depth.labels(f"{self.role}-bus").set(self._queue.qsize())

    def _bus_loop(self) -> None:
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
                name, doc, received = self._queue.get(timeout=SWEEP_INTERVAL)
            except queue.Empty:
                continue
            try:
                self.dispatcher(name, doc, received)
            except Exception:
                logger.exception("dispatching %s failed", name)
            finally:
                self._queue.task_done()

    # ---- recovery from Tiled ---------------------------------------------------------------------
    def _recover_start(self, run_uid: str) -> Doc | None:
        try:
            client = self._client.get()
            node = client["raw"][run_uid]
            start = dict(node.metadata.get("start") or {})
        except Exception:
            logger.warning("start of run %s not found in Tiled", run_uid, exc_info=True)
            return None
        return start or None

    def _lookup_readings(
        self, run_uid: str, stream: str, seq_nums: list[int]
    ) -> dict[int, dict[str, Any]]:
        client = self._client.get()
        node = client["raw"][run_uid][stream]
        table = (node.base if hasattr(node, "base") else node)["internal"].read()
        out: dict[int, dict[str, Any]] = {}
        if "seq_num" not in table.columns:
            return out
        wanted = set(seq_nums)
        for row in table.to_dict(orient="records"):
            seq = int(row["seq_num"])
            if seq in wanted:
                out[seq] = {k: v for k, v in row.items() if k != "seq_num"}
        return out


def _record_run(record: dict[str, Any]) -> str | None:
    """The run a spooled write belongs to."""
    if record.get("op") == "raw_doc":
        return record.get("run")
    path = record.get("path") or []
    if len(path) >= 2 and path[0] in ("raw", "analysis"):
        return str(path[1])
    return None
