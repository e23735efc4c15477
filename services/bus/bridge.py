"""The bridge: every Bluesky document, once, into the JetStream stream.

Source ``zmq`` (default): a SUB socket on the bluesky 0MQ proxy. Source ``nats``: a durable
pull consumer on a subject where Bluesky already publishes to JetStream (``bluesky-nats``'s
``NATSPublisher`` writes ``<subject>.<document name>``, msgpack); each document is
acknowledged there once the stream has stored its copy.

Each document goes to ``<prefix>.<beamline>.<run uid>.<name>`` (``services.bus.jetstream``)
with its identity as ``Nats-Msg-Id``. Events, datums and stream datums do not name their run:
the bridge remembers the run of every descriptor and resource, in memory and in a JetStream
key-value bucket (``<stream>_index``), so a restarted bridge still routes the events of a run
it saw start.

``nats.bridges`` bridges (2 by default) read the same proxy and publish every document: a
document is stored once (the duplicate window drops the other copies), and a bridge SIGKILLed
with documents in its socket or restarting while the proxy sends loses nothing while another
one runs. So that one bridge's copy never shadows another's, a document a bridge cannot route
(it missed the descriptor) is published under its own id, and a stand-in start is published
only when the stream still has no start of the run ``STAND_IN_GRACE`` seconds later.

Publishing is asynchronous and ordered; when a PubAck fails or does not come, everything from
that document on is published again in order, and the duplicate window drops what the stream
already had.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from services.bus.jetstream import (
    PING_NAME,
    NatsLoop,
    connect,
    decode_message,
    doc_subject,
    ensure_stream,
    message_id,
    ping_subject,
)
from services.core import serialization
from services.core.metrics import Metrics
from services.core.serialization import MalformedMessage, parse_bus_message
from services.core.settings import BeamwatchSettings

logger = logging.getLogger(__name__)

#: Documents published and not acknowledged by the stream yet, at most.
WINDOW = 2048
#: Bytes kept free for headers below the server's max_payload.
HEADER_ROOM = 1024
#: 0MQ messages handed to the publisher at once.
ZMQ_BATCH = 256
#: A PubAck not received after this many seconds counts as failed (publish again).
PUBACK_TIMEOUT = 5.0
#: Seconds a bridge waits for another bridge to store a start it did not see itself, before it
#: stands in for it.
STAND_IN_GRACE = 2.0
#: Index key of a run's start (beside descriptor and resource uids).
_RUN = "run-"
#: Documents whose run is found through their descriptor or resource.
_BY_DESCRIPTOR = ("event", "event_page", "stream_datum")
_BY_RESOURCE = ("datum", "datum_page")


@dataclass
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str] | None
    on_stored: Any = None


class Bridge:
    """Copies documents into the stream. :meth:`run` until :meth:`request_stop`."""

    def __init__(self, settings: BeamwatchSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.nats = settings.nats
        self.metrics = metrics or Metrics("bridge")
        self._loop = NatsLoop("bridge-nats")
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._run_of: dict[str, str] = {}
        self._queue: asyncio.Queue[_Outgoing] | None = None
        self._window = threading.BoundedSemaphore(WINDOW)
        self._stop = threading.Event()
        self._publisher: Any = None
        self.published = 0
        self.failed: BaseException | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop.run(self._start(), 70)

    async def _start(self) -> None:
        from nats.js.api import KeyValueConfig

        self._nc = await connect(self.settings.nats_url, name="beamwatch-bridge")
        self._js = self._nc.jetstream()
        await ensure_stream(self._js, self.nats)
        self._kv = await self._js.create_key_value(
            KeyValueConfig(bucket=f"{self.nats.stream}_index", history=1, ttl=self.nats.max_age)
        )
        self._queue = asyncio.Queue()
        self._publisher = asyncio.ensure_future(self._publish_loop())

    def run(self) -> int:
        """Bridge until stopped (0) or until publishing failed for good (1: restart me)."""
        self.start()
        try:
            if self.nats.source == "nats":
                self._loop.run(self._read_nats_source())
            else:
                self._read_zmq()
        finally:
            self.close()
        return 1 if self.failed is not None else 0

    def request_stop(self) -> None:
        self._stop.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every document handed over is stored in the stream."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._in_flight() == 0:
                return True
            time.sleep(0.01)
        return False

    def _in_flight(self) -> int:
        return WINDOW - self._window._value  # type: ignore[attr-defined]

    def close(self) -> None:
        self.flush(10)
        if self._nc is not None:
            try:
                self._loop.run(self._close(), 10)
            except Exception:  # noqa: BLE001 - closing anyway
                logger.warning("closing the NATS connection failed", exc_info=True)
        self._loop.stop()

    async def _close(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
        await self._nc.close()

    # ---- sources -----------------------------------------------------------------------------
    def _read_zmq(self) -> None:
        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        socket.setsockopt(zmq.RCVHWM, self.settings.bus.rcvhwm)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.settings.bus.out_address)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        logger.info(
            "bridging %s into stream %s at %s",
            self.settings.bus.out_address,
            self.nats.stream,
            self.settings.nats_url,
        )
        try:
            while not self._stop.is_set() and self.failed is None:
                if not socket.poll(200, zmq.POLLIN):
                    continue
                messages = [socket.recv()]
                while len(messages) < ZMQ_BATCH:  # what else is there: one hand-over for all
                    try:
                        messages.append(socket.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                self.handle_zmq(messages)
        finally:
            socket.close(0)

    def handle_zmq(self, messages: list[bytes]) -> None:
        """0MQ messages from the proxy (``prefix name payload``), in order."""
        service = self.metrics.service
        batch: list[tuple[str, dict[str, Any], bytes]] = []
        for message in messages:
            parts = message.split(b" ", 2)
            if parts[1:2] == [PING_NAME.encode()]:
                self.metrics.messages_received.labels(service, PING_NAME).inc()
                self._loop.submit(self._nc.publish(ping_subject(self.nats), b""))
                continue
            try:
                name, doc = parse_bus_message(message)
            except MalformedMessage as exc:
                self.metrics.messages_malformed.labels(service, "payload").inc()
                logger.warning("dropped malformed bus message (%d bytes): %s", len(message), exc)
                continue
            self.metrics.messages_received.labels(service, name).inc()
            batch.append((name, doc, parts[2]))
        if batch:
            self.publish(batch)

    async def _read_nats_source(self) -> None:
        """Documents Bluesky publishes to JetStream itself, read durably."""
        import nats.errors
        from nats.js.api import AckPolicy, ConsumerConfig

        stream = await self._js.find_stream_name_by_subject(self.nats.source_subject)
        sub = await self._js.pull_subscribe(
            self.nats.source_subject,
            durable=f"{self.nats.durable_prefix}-bridge-source",
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.nats.ack_wait),
        )
        logger.info("bridging %s (stream %s) into %s", self.nats.source_subject, stream, self.nats)
        while not self._stop.is_set() and self.failed is None:
            try:
                msgs = await sub.fetch(256, timeout=0.2)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                try:
                    name, doc = decode_message(msg.subject, msg.data)
                except MalformedMessage as exc:
                    self.metrics.messages_malformed.labels(self.metrics.service, "payload").inc()
                    logger.warning("dropped malformed message on %s: %s", msg.subject, exc)
                    await msg.term()
                    continue
                self.metrics.messages_received.labels(self.metrics.service, name).inc()
                run_uid = await self._run_uid(name, doc)
                await self._acquire()
                await self._queue_put(name, doc, msg.data, run_uid, on_stored=msg.ack)

    # ---- routing and publishing --------------------------------------------------------------
    def publish(self, batch: list[tuple[str, dict[str, Any], bytes]]) -> None:
        """Hand (name, doc, payload) over in order (from the 0MQ thread); blocks while the
        window is full."""
        for _ in batch:
            self._window.acquire()
        self._loop.run(self._route_and_queue(batch))

    async def _route_and_queue(self, batch: list[tuple[str, dict[str, Any], bytes]]) -> None:
        for name, doc, payload in batch:
            run_uid = await self._run_uid(name, doc)
            await self._queue_put(name, doc, payload, run_uid)

    async def _acquire(self) -> None:
        while not self._window.acquire(blocking=False):
            await asyncio.sleep(0.005)

    async def _queue_put(
        self,
        name: str,
        doc: dict[str, Any],
        payload: bytes,
        run_uid: str | None,
        on_stored: Any = None,
    ) -> None:
        assert self._queue is not None
        limit = int(self._nc.max_payload) - HEADER_ROOM
        if len(payload) > limit:
            # The server would refuse it: say so, and go on with the next documents.
            self.metrics.messages_lost.labels(self.metrics.service, "too_large").inc()
            logger.error(
                "%s of %d bytes exceeds the server's max_payload (%d): not stored; raise "
                "nats.max_payload (embedded) or max_payload of the cluster",
                name,
                len(payload),
                limit,
                extra={"run_uid": run_uid},
            )
            self._window.release()
            if on_stored is not None:
                await on_stored()
            return
        msg_id = message_id(name, doc)
        if run_uid is None:
            self.metrics.messages_lost.labels(self.metrics.service, "unrouted").inc()
            logger.warning("%s of an unknown run: published as unrouted", name)
            # an id of its own: the copy another bridge routes to its run is not a duplicate
            msg_id = f"unrouted:{msg_id}" if msg_id else None
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        self._queue.put_nowait(
            _Outgoing(doc_subject(self.nats, run_uid, name), payload, headers, on_stored)
        )

    async def _run_uid(self, name: str, doc: dict[str, Any]) -> str | None:
        """The run a document belongs to; remembers descriptors and resources."""
        try:
            if name == "start":
                await self._remember(_RUN + str(doc["uid"]), str(doc["uid"]))
                return str(doc["uid"])
            if name in ("descriptor", "resource", "stream_resource"):
                run_uid = str(doc["run_start"])
                await self._ensure_started(run_uid, doc)
                await self._remember(str(doc["uid"]), run_uid)
                return run_uid
            if name == "stop":
                await self._ensure_started(str(doc["run_start"]), doc)
                return str(doc["run_start"])
            if name in _BY_DESCRIPTOR:
                key = doc["stream_resource"] if name == "stream_datum" else doc["descriptor"]
                return await self._lookup(str(key))
            if name in _BY_RESOURCE:
                return await self._lookup(str(doc["resource"]))
        except (KeyError, TypeError):
            return None
        return None

    async def _ensure_started(self, run_uid: str, doc: dict[str, Any]) -> None:
        """A run whose start never reached the bridge gets a stand-in start, so that it can be
        claimed (its start is what consumers claim); the consumers see
        ``beamwatch_start_lost`` as they would on 0MQ."""
        if await self._start_known(run_uid):
            return
        # Another bridge on the same proxy may be storing the start right now (this one was
        # restarting when it came): a stand-in stored first would shadow the real start.
        await asyncio.sleep(STAND_IN_GRACE)
        if await self._start_known(run_uid):
            return
        self.metrics.messages_lost.labels(self.metrics.service, "start").inc()
        logger.warning("documents of a run whose start was never seen", extra={"run_uid": run_uid})
        stand_in = {
            "uid": run_uid,
            "time": doc.get("time", time.time()),
            "beamwatch_start_lost": True,
        }
        await self._remember(_RUN + run_uid, run_uid)
        await self._acquire()
        await self._queue_put("start", stand_in, serialization.dumps(stand_in), run_uid)

    async def _start_known(self, run_uid: str) -> bool:
        """Whether this bridge, the index bucket or the stream knows the run's start."""
        if await self._lookup(_RUN + run_uid) is not None:
            return True
        try:
            await self._js.get_last_msg(self.nats.stream, doc_subject(self.nats, run_uid, "start"))
        except Exception:  # noqa: BLE001 - not found (or the stream is unreachable)
            return False
        self._run_of[_RUN + run_uid] = run_uid
        return True

    async def _remember(self, uid: str, run_uid: str) -> None:
        if self._run_of.get(uid) == run_uid:
            return
        self._run_of[uid] = run_uid
        try:
            await self._kv.put(_kv_key(uid), run_uid.encode())
        except Exception as exc:  # noqa: BLE001 - the in-memory map still routes
            logger.warning("cannot record the run of %s: %s", uid, exc)

    async def _lookup(self, uid: str) -> str | None:
        run_uid = self._run_of.get(uid)
        if run_uid is not None:
            return run_uid
        try:
            entry = await self._kv.get(_kv_key(uid))
        except Exception:  # noqa: BLE001 - not found (or the bucket is unreachable)
            return None
        if entry.value:
            run_uid = entry.value.decode()
            self._run_of[uid] = run_uid
        return run_uid

    async def _publish_loop(self) -> None:
        assert self._queue is not None
        inflight: deque[tuple[_Outgoing, Any, float]] = deque()
        try:
            while True:
                if self._queue.empty() and not inflight:
                    item = await self._queue.get()
                    inflight.append(await self._send(item))
                while not self._queue.empty() and len(inflight) < WINDOW:
                    inflight.append(await self._send(self._queue.get_nowait()))
                await self._settle(inflight)
                if inflight:
                    await asyncio.sleep(0)
                    if not inflight[0][1].done():
                        await asyncio.wait([inflight[0][1]], timeout=0.05)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("the bridge cannot publish")
            self.failed = exc

    async def _send(self, item: _Outgoing) -> tuple[_Outgoing, Any, float]:
        future = await self._js.publish_async(item.subject, item.payload, headers=item.headers)
        return item, future, time.monotonic()

    async def _settle(self, inflight: deque[tuple[_Outgoing, Any, float]]) -> None:
        while inflight:
            item, future, sent = inflight[0]
            if future.done() and future.exception() is None:
                inflight.popleft()
                await self._stored(item, future.result())
                continue
            if future.done() or time.monotonic() - sent > PUBACK_TIMEOUT:
                error = future.exception() if future.done() else "no PubAck"
                logger.warning("publishing to the stream failed (%s); publishing again", error)
                await self._publish_again(inflight)
                continue
            return

    async def _publish_again(self, inflight: deque[tuple[_Outgoing, Any, float]]) -> None:
        """Publish every unconfirmed document again, in order, each until the stream has it."""
        items = [item for item, _future, _sent in inflight]
        inflight.clear()
        backoff = 0.1
        for item in items:
            while True:
                try:
                    ack = await self._js.publish(
                        item.subject, item.payload, headers=item.headers, timeout=PUBACK_TIMEOUT
                    )
                    break
                except Exception as exc:  # noqa: BLE001 - server restarting: keep trying
                    logger.warning("stream unavailable (%s); retrying in %.1f s", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            await self._stored(item, ack)

    async def _stored(self, item: _Outgoing, ack: Any) -> None:
        if getattr(ack, "duplicate", False):
            self.metrics.messages_duplicated.labels(self.metrics.service, "stream").inc()
        self.published += 1
        self._window.release()
        if item.on_stored is not None:
            await item.on_stored()


def _kv_key(uid: str) -> str:
    # KV keys: letters, digits, - _ = . / ; uids are checked to be of these (plus none else)
    return "".join(c if c.isalnum() or c in "-_=" else "_" for c in uid)
