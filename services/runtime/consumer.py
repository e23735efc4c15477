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
from collections.abc import Callable
from typing import Any

from services.analysis.registry import default_registry
from services.analysis.router import AnalysisRunRouter, PipelineRegistry
from services.bus.subscriber import BusSubscriber
from services.core.metrics import Metrics
from services.core.settings import BeamwatchSettings
from services.runs.ingest import RawRunRouter
from services.runs.routing import Doc, RouterFactory, RunDispatcher
from services.tiled.applier import TiledApplier, connect, is_transient
from services.tiled.spool import Spool

logger = logging.getLogger(__name__)

ROLES = ("raw", "analysis")


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
        )
        factory: RouterFactory
        recover_start: Callable[[str], Doc | None] | None
        if role == "raw":
            factory = lambda start: RawRunRouter(self.spool)  # noqa: E731
            recover_start = None
        else:
            if registry is None:
                from services.analysis.xanes_live import FeedbackPublisher

                self._feedback = FeedbackPublisher(settings.bus.feedback_address)
                registry = default_registry(settings.data_dir / "figures", self._feedback)
            reg = registry

            def factory(start: Doc) -> AnalysisRunRouter | None:
                entries = reg.select(start)
                if not entries:
                    return None
                return AnalysisRunRouter(
                    start, entries, self.spool, self.metrics, readings_lookup=self._lookup_readings
                )

            recover_start = self._recover_start
        self.dispatcher = RunDispatcher(
            [factory],
            self.metrics,
            recover_start=recover_start,
            idle_timeout=settings.run_idle_timeout,
        )
        self._queue: queue.Queue[tuple[str, Doc]] = queue.Queue()
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
        self.spool.stop(drain_timeout)
        self._bus.close()
        self._client.close()
        if self._feedback is not None:
            self._feedback.close()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the queue is processed and the spool is drained (for tests and demo)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0 and self.spool.depth() == 0:
                return True
            self.spool.wait_empty(0.2)
        return False

    def run_forever(self) -> None:
        self.start()
        try:
            self._stop.wait()
        finally:
            self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    # ---- loops ---------------------------------------------------------------------------------
    def _enqueue(self, name: str, doc: Doc) -> None:
        self._queue.put((name, doc))
        self.metrics.queue_depth.labels(f"{self.role}-bus").set(self._queue.qsize())

    def _bus_loop(self) -> None:
        while not self._stop.is_set():
            self._bus.poll_once(200)

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                name, doc = self._queue.get(timeout=0.5)
            except queue.Empty:
                self.dispatcher.sweep()
                continue
            try:
                self.dispatcher(name, doc)
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
