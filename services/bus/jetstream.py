"""The durable document bus: NATS JetStream subjects, message ids, and the consumers' side.

Layout
------
One stream (``nats.stream``, default ``BEAMWATCH``) holds every document once, under
``<subject_prefix>.<beamline>.<run uid>.<document name>``, e.g.
``beamwatch.docs.local.9d1c...e2.event``. The message id (``Nats-Msg-Id``) is the document's
identity (:func:`message_id`): JetStream drops a second message with the same id inside its
duplicate window, so a publisher that retries (the bridge after a lost PubAck) never stores a
document twice.

Runs are the unit of work
-------------------------
A consumer role (``raw``, ``analysis``) is any number of processes, on any machines, sharing
runs; the per-run state (descriptors, a pipeline's tracker) stays in one process:

1. **Claim.** All processes of a role pull from one durable consumer
   ``<durable_prefix>-<role>-runs`` that sees only the ``start`` documents. JetStream hands
   each message to exactly one puller: whoever gets a run's start *owns* the run. The owner
   keeps the claim unacknowledged while it works, and marks it in progress every
   ``ack_wait / 3`` seconds so JetStream does not hand it on.
2. **Per-run documents.** The owner reads the run's documents through a durable consumer of
   its own, ``<durable_prefix>-<role>-run-<hash of uid>`` filtered on
   ``<prefix>.*.<run uid>.>``, and acknowledges each document once the dispatcher has put its
   effects on disk (the run's journal and the write spool; see ``services.runs.journal``).
3. **Done.** When the run is finished, its after-scan stages are done and the spool has
   applied everything, the claim is acknowledged and the per-run consumer deleted.
4. **A worker dies.** Its claim is no longer kept in progress: after ``ack_wait`` JetStream
   delivers the start to another process (or to the same one restarted). The new owner
   * finds the run's journal on its disk (the same machine, restarted): it replays the
     journal (the state) and binds to the existing per-run consumer, which resumes after the
     last acknowledged document; the unacknowledged ones are delivered again;
   * has no journal (another machine): it recreates the per-run consumer from the run's first
     document and replays the whole run.
   Every write of the routers is idempotent (rows keyed by seq_num, arrays patched at
   offsets), so documents delivered twice change nothing in Tiled.

Why not one shared consumer of all documents: its messages would be spread over the workers
one by one, so a run's descriptor and its events would land in different processes. Why not
a KV lease per run: a lease needs its own expiry and fencing; a claim message that is kept in
progress, and redelivered by JetStream when it is not, is the same lease with JetStream's own
timer. A run counts against ``nats.max_runs`` until its stop is routed; after that it stays
claimed (and in progress) only until its last writes are in Tiled. Documents fetched but not
yet dispatched are kept in progress too, so a busy but live process never gets them twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from services.core.metrics import Metrics
from services.core.serialization import MalformedMessage, loads_bus_payload
from services.core.settings import BeamwatchSettings, NatsSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Core-NATS subject (``<subject_prefix>-<PING_TOKEN>``) on which the bridge forwards the
#: publishers' ``beamwatch_ping`` messages; consumers count them (slow-joiner guard).
PING_TOKEN = "_ping"
PING_NAME = "beamwatch_ping"
#: Run token for documents whose run the bridge cannot tell (their descriptor was never seen).
UNROUTED = "_unrouted"
#: Documents a run's fetch asks for at once.
FETCH_BATCH = 128

#: Called with (name, doc, ack): ``ack()`` once the document's effects are on disk.
Enqueue = Callable[[str, dict[str, Any], Callable[[], None]], None]


# ---- subjects and ids ---------------------------------------------------------------------------
def subject_token(uid: str) -> str:
    """A run uid as one subject token: ``.`` is the token separator, so it becomes ``~``."""
    return uid.replace(".", "~")


def token_uid(token: str) -> str:
    return token.replace("~", ".")


def doc_subject(nats: NatsSettings, run_uid: str | None, name: str) -> str:
    run = subject_token(run_uid) if run_uid else UNROUTED
    return f"{nats.subject_prefix}.{nats.beamline}.{run}.{name}"


def run_filter(nats: NatsSettings, run_uid: str) -> str:
    return f"{nats.subject_prefix}.*.{subject_token(run_uid)}.>"


def ping_subject(nats: NatsSettings) -> str:
    """Core NATS, outside the stream's subjects (a ping is not a document to keep)."""
    return f"{nats.subject_prefix}-{PING_TOKEN}"


def message_id(name: str, doc: dict[str, Any]) -> str | None:
    """The identity of a document, for JetStream's duplicate window.

    ``uid`` where the document has one, ``descriptor/seq_num`` for events (an Event's uid is
    the same on a retry, but events re-made by a publisher after a restart keep only their
    seq_num), the datum id for datums, first and last entries for pages.
    """
    try:
        if name == "event":
            return f"event:{doc['descriptor']}:{int(doc['seq_num'])}"
        if name == "event_page":
            seq = doc["seq_num"]
            return f"event_page:{doc['descriptor']}:{int(seq[0])}-{int(seq[-1])}"
        if name == "datum":
            return f"datum:{doc['datum_id']}"
        if name == "datum_page":
            ids = doc["datum_id"]
            return f"datum_page:{doc['resource']}:{ids[0]}-{ids[-1]}"
        uid = doc.get("uid")
        return f"{name}:{uid}" if isinstance(uid, str) else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def consumer_name(nats: NatsSettings, role: str, run_uid: str | None = None) -> str:
    """Durable consumer names: the role's claim consumer, or one run's (uid hashed: names may
    not hold ``.``, and a uid may)."""
    if run_uid is None:
        return f"{nats.durable_prefix}-{role}-runs"
    digest = hashlib.sha1(run_uid.encode()).hexdigest()[:20]
    return f"{nats.durable_prefix}-{role}-run-{digest}"


def decode_message(subject: str, payload: bytes) -> tuple[str, dict[str, Any]]:
    """(document name, document) of a stream message; :class:`MalformedMessage` otherwise."""
    name = subject.rsplit(".", 1)[-1]
    doc = loads_bus_payload(payload)
    if not isinstance(doc, dict):
        raise MalformedMessage(f"{name} payload is a {type(doc).__name__}, not a map")
    return name, doc


# ---- an asyncio loop in a thread -----------------------------------------------------------------
class NatsLoop:
    """nats-py is asyncio; beamwatch's consumers are threads. One loop thread runs the client."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


async def connect(url: str, *, timeout: float = 60.0, name: str = "beamwatch") -> Any:
    """Connect to NATS, waiting up to ``timeout`` s for the server (it may be starting).

    ``url`` may list several servers of a cluster, comma-separated.
    """
    import nats

    servers = [part.strip() for part in url.split(",") if part.strip()]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await nats.connect(
                servers,
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=_on_error,
                disconnected_cb=_on_disconnected,
                reconnected_cb=_on_reconnected,
            )
        except Exception as exc:  # noqa: BLE001 - any failure to reach the server: retry
            if time.monotonic() > deadline:
                raise TimeoutError(f"NATS not reachable in {timeout:.0f} s") from exc
            await asyncio.sleep(0.2)


async def _on_error(exc: Exception) -> None:
    # the server restarting: the client reconnects by itself (one line, not a traceback)
    logger.warning("NATS: %s: %s", type(exc).__name__, exc)


async def _on_disconnected() -> None:
    logger.warning("NATS: disconnected; reconnecting")


async def _on_reconnected() -> None:
    logger.warning("NATS: reconnected")


async def ensure_stream(js: Any, nats: NatsSettings) -> None:
    """Create the document stream, or bring an existing one to these settings."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    config = StreamConfig(
        name=nats.stream,
        subjects=[f"{nats.subject_prefix}.>"],
        storage=StorageType.FILE,
        duplicate_window=nats.duplicate_window,
        max_age=nats.max_age,
        num_replicas=nats.replicas,
    )
    try:
        await js.stream_info(nats.stream)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except Exception:  # noqa: BLE001 - another process created it first
            await js.stream_info(nats.stream)
    await js.update_stream(config)


# ---- the consumers' side -------------------------------------------------------------------------
@dataclass
class _OwnedRun:
    uid: str
    claim: Any
    subscription: Any = None
    task: asyncio.Task[None] | None = None
    delivered: int = 1


class JetStreamRuns:
    """A consumer role's share of the stream: runs it claimed, their documents, acked.

    See the module docstring for the protocol. ``enqueue`` receives each document with its
    ``ack``; ``room()`` says whether the consumer can take more (back-pressure: nothing is
    fetched while its queue is full, so no document waits unacknowledged for ``ack_wait``);
    ``replay(uid)`` is called (from the loop thread, in order with ``enqueue``) before the
    documents of a run taken over whose journal is on this machine; ``given_up(uid, reason)``
    (from a thread of the loop's executor) records a run given up after
    ``nats.max_run_deliveries`` deliveries, before its claim is terminated.
    """

    def __init__(
        self,
        role: str,
        settings: BeamwatchSettings,
        metrics: Metrics,
        enqueue: Enqueue,
        *,
        room: Callable[[], bool] = lambda: True,
        claim_room: Callable[[], bool] = lambda: True,
        journaled: set[str] | None = None,
        replay: Callable[[str], None] | None = None,
        given_up: Callable[[str, str], None] | None = None,
    ) -> None:
        self.role = role
        self.settings = settings
        self.nats = settings.nats
        self._metrics = metrics
        self._enqueue = enqueue
        self._room = room
        self._claim_room = claim_room
        self._journaled = set(journaled or ())
        self._replay = replay
        self._given_up = given_up
        self._loop = NatsLoop(f"{role}-nats")
        self._nc: Any = None
        self._js: Any = None
        self._claims: Any = None
        self._runs: dict[str, _OwnedRun] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._releases: list[Any] = []
        self._finished: set[str] = set()
        self._waiting: dict[int, Any] = {}  # delivered, not acknowledged yet (Msg: unhashable)
        self.claimed: list[str] = []  # every run this process took, in order (tests, metrics)
        self.failed: BaseException | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        self._loop.run(self._start(), timeout + 5)

    async def _start(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        url = self.settings.nats_url
        self._nc = await connect(url, name=f"beamwatch-{self.role}")
        self._js = self._nc.jetstream()
        await ensure_stream(self._js, self.nats)
        await self._nc.subscribe(ping_subject(self.nats), cb=self._on_ping)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.nats.ack_wait,
            max_deliver=-1,
            max_ack_pending=-1,
        )
        self._claims = await self._js.pull_subscribe(
            f"{self.nats.subject_prefix}.*.*.start",
            durable=consumer_name(self.nats, self.role),
            stream=self.nats.stream,
            config=config,
        )
        self._tasks = [
            asyncio.ensure_future(self._claim_loop()),
            asyncio.ensure_future(self._keep_claims()),
        ]
        logger.info("%s: reading runs of stream %s at %s", self.role, self.nats.stream, url)

    def is_alive(self) -> bool:
        return self._loop.is_alive() and self.failed is None

    def close(self) -> None:
        if self._nc is None:
            self._loop.stop()
            return
        self._closing = True
        for release in self._releases:  # acknowledge what is done before leaving
            try:
                release.result(10)
            except Exception:  # noqa: BLE001 - the claim comes back after ack_wait
                logger.warning("releasing a run failed", exc_info=True)
        try:
            self._loop.run(self._close(), 10)
        except Exception:  # noqa: BLE001 - closing: nothing more to do
            logger.warning("closing the NATS connection failed", exc_info=True)
        self._loop.stop()

    async def _close(self) -> None:
        for task in [*self._tasks, *(r.task for r in self._runs.values() if r.task)]:
            task.cancel()
        await self._nc.close()

    # ---- what the consumer calls ------------------------------------------------------------
    def run_done(self, run_uid: str) -> None:
        """The run is finished and everything of it is in Tiled: release it for good."""
        if not self._closing and self._nc is not None:
            self._releases = [f for f in self._releases if not f.done()]
            self._releases.append(self._loop.submit(self._release(run_uid)))

    def run_finished(self, run_uid: str) -> None:
        """The run's stop is routed; its last writes may still wait in the spool. It no longer
        counts against ``max_runs`` (a spool that is never empty under load must not stop
        the worker from taking runs), but stays claimed until :meth:`run_done`."""
        self._finished.add(run_uid)

    @property
    def owned_runs(self) -> list[str]:
        return list(self._runs)

    # ---- loop side --------------------------------------------------------------------------
    async def _on_ping(self, _msg: Any) -> None:
        self._metrics.messages_received.labels(self._metrics.service, PING_NAME).inc()

    async def _claim_loop(self) -> None:
        import nats.errors

        try:
            while True:
                working = [uid for uid in self._runs if uid not in self._finished]
                # A run taken again (its last owner died) is worked on alone until it is
                # released: if it kills this process too, no other run dies with it and
                # its delivery count is its own.
                retaken = any(run.delivered > 1 for run in self._runs.values())
                full = len(working) >= self.nats.max_runs
                if retaken or full or not self._room() or not self._claim_room():
                    await asyncio.sleep(0.05)
                    continue
                try:
                    msgs = await self._claims.fetch(1, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    return
                for msg in msgs:
                    await self._claim(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead claim loop must show: the consumer restarts
            logger.exception("%s: claiming runs failed", self.role)
            self.failed = exc

    async def _claim(self, msg: Any) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        token = msg.subject.split(".")[-2]
        uid = token_uid(token)
        owned = self._runs.get(uid)
        if owned is not None:  # delivered again while we hold it (a late heartbeat)
            owned.claim = msg
            return
        delivered = msg.metadata.num_delivered
        durable = consumer_name(self.nats, self.role, uid)
        limit = self.nats.max_run_deliveries
        if limit and delivered > limit:
            await self._give_up(uid, msg, delivered)
            return
        resume = uid in self._journaled
        if not resume:
            try:  # no state of this run here: replay it from its first document
                await self._js.delete_consumer(self.nats.stream, durable)
            except NotFoundError:
                pass
        else:
            self._journaled.discard(uid)
            if self._replay is not None:
                self._replay(uid)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.nats.ack_wait,
            max_deliver=-1,
            max_ack_pending=self.nats.max_ack_pending,
            inactive_threshold=max(self.nats.max_age, 3600.0),
        )
        sub = await self._js.pull_subscribe(
            run_filter(self.nats, uid), durable=durable, stream=self.nats.stream, config=config
        )
        run = _OwnedRun(uid, msg, sub, delivered=delivered)
        self._runs[uid] = run
        self.claimed.append(uid)
        service = self._metrics.service
        self._metrics.runs_claimed.labels(service, "first" if delivered == 1 else "again").inc()
        self._metrics.runs_owned.labels(service).set(len(self._runs))
        run.task = asyncio.ensure_future(self._read_run(run))
        logger.info(
            "%s: took run (delivery %d, %s)",
            self.role,
            delivered,
            "resuming after the last ack" if resume else "from its first document",
            extra={"run_uid": uid},
        )

    async def _give_up(self, uid: str, claim: Any, delivered: int) -> None:
        """The run came back once too often: every worker that took it died (or stalled past
        ``ack_wait``). Say so, mark it failed, and terminate its claim so that JetStream never
        hands it out again; the other runs go on."""
        from nats.js.errors import NotFoundError

        reason = (
            f"given up after {delivered - 1} deliveries: each {self.role} worker that took the "
            f"run died or stalled before finishing it (nats.max_run_deliveries = "
            f"{self.nats.max_run_deliveries}); its documents stay in stream {self.nats.stream}"
        )
        logger.error("%s: run %s", self.role, reason, extra={"run_uid": uid})
        self._metrics.runs_given_up.labels(self._metrics.service).inc()
        self._journaled.discard(uid)
        if self._given_up is not None:  # on disk (the spool) before the claim goes for good
            await asyncio.get_running_loop().run_in_executor(None, self._given_up, uid, reason)
        await _quiet(claim.term())
        try:
            await self._js.delete_consumer(
                self.nats.stream, consumer_name(self.nats, self.role, uid)
            )
        except NotFoundError:
            pass

    async def _read_run(self, run: _OwnedRun) -> None:
        import nats.errors

        try:
            while True:
                if not self._room():
                    await asyncio.sleep(0.02)
                    continue
                try:
                    msgs = await run.subscription.fetch(FETCH_BATCH, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                for msg in msgs:
                    self._deliver(run, msg)
        except asyncio.CancelledError:
            raise
        except nats.errors.ConnectionClosedError:
            return
        except Exception as exc:
            logger.exception("%s: reading run failed", self.role, extra={"run_uid": run.uid})
            self.failed = exc

    def _deliver(self, run: _OwnedRun, msg: Any) -> None:
        try:
            name, doc = decode_message(msg.subject, msg.data)
        except MalformedMessage as exc:
            self._metrics.messages_malformed.labels(self._metrics.service, "payload").inc()
            logger.warning(
                "dropped malformed stream message on %s: %s",
                msg.subject,
                exc,
                extra={"run_uid": run.uid},
            )
            asyncio.ensure_future(msg.term())
            return
        self._metrics.messages_received.labels(self._metrics.service, name).inc()
        loop = self._loop.loop
        self._waiting[id(msg)] = msg

        def ack() -> None:  # from the dispatch thread
            loop.call_soon_threadsafe(self._ack, msg)

        self._enqueue(name, doc, ack)

    def _ack(self, msg: Any) -> None:
        self._waiting.pop(id(msg), None)
        asyncio.ensure_future(_quiet(msg.ack()))

    async def _keep_claims(self) -> None:
        """Mark every owned run, and every document still waiting in the consumer's queue, in
        progress well within ``ack_wait`` (our heartbeat): neither goes to anyone else, nor
        comes again, while this process is alive."""
        while True:
            await asyncio.sleep(self.nats.ack_wait / 3)
            for run in list(self._runs.values()):
                await _quiet(run.claim.in_progress())
            for msg in list(self._waiting.values()):
                await _quiet(msg.in_progress())

    async def _release(self, run_uid: str) -> None:
        run = self._runs.pop(run_uid, None)
        self._finished.discard(run_uid)
        self._metrics.runs_owned.labels(self._metrics.service).set(len(self._runs))
        if run is None:
            return
        if run.task is not None:
            run.task.cancel()
        await _quiet(run.claim.ack_sync(timeout=5))
        await _quiet(run.subscription.unsubscribe())
        await _quiet(
            self._js.delete_consumer(self.nats.stream, consumer_name(self.nats, self.role, run_uid))
        )
        logger.info("%s: run done and released", self.role, extra={"run_uid": run_uid})


async def _quiet(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        await coro
    except Exception as exc:  # noqa: BLE001 - a lost ack is redelivered and deduplicated
        logger.warning("NATS call failed: %s: %s", type(exc).__name__, exc)
