"""Subscribe to the Bluesky 0MQ bus and decode documents safely (msgpack, never pickle)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from services.core.metrics import Metrics
from services.core.serialization import MalformedMessage, parse_bus_message

logger = logging.getLogger(__name__)

#: Not a Bluesky document: publishers send ``publisher("beamwatch_ping", {})`` until the
#: consumers count it, so no document of the run is sent before the path is live.
PING_NAME = b"beamwatch_ping"

DocumentCallback = Callable[[str, dict[str, Any]], None]


class BusSubscriber:
    """A SUB socket on the proxy's out address; hands decoded (name, doc) to a callback.

    Malformed messages (pickles, garbage, unknown names) are logged with what was wrong,
    counted in ``beamwatch_messages_malformed`` and dropped; the loop keeps running.
    """

    def __init__(
        self,
        address: str,
        callback: DocumentCallback,
        metrics: Metrics,
        *,
        rcvhwm: int = 100_000,
        context: zmq.Context | None = None,
    ) -> None:
        self.address = address
        self._callback = callback
        self._metrics = metrics
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(address)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.connected = threading.Event()
        self._received: dict[str, Any] = {}  # the counter of each document name, looked up once

    def poll_once(self, timeout_ms: int = 200, max_messages: int = 1000) -> bool:
        """Wait up to ``timeout_ms`` for a message, then handle every message already queued
        (up to ``max_messages``: one poll per burst, not per message); True if any came."""
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return False
        for _ in range(max_messages):
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.handle_message(message)
        return True

    def handle_message(self, message: bytes) -> None:
        service = self._metrics.service
        if message.split(b" ", 2)[1:2] == [PING_NAME]:
            # A publisher checking that its path through the proxy is live (slow joiner).
            self._metrics.messages_received.labels(service, PING_NAME.decode()).inc()
            return
        try:
            name, doc = parse_bus_message(message)
        except MalformedMessage as exc:
            reason = _reason(message)
            self._metrics.messages_malformed.labels(service, reason).inc()
            logger.warning(
                "dropped malformed bus message (%d bytes, %s): %s", len(message), reason, exc
            )
            return
        counter = self._received.get(name)
        if counter is None:
            counter = self._received[name] = self._metrics.messages_received.labels(service, name)
        counter.inc()
        self._callback(name, doc)

    def close(self) -> None:
        self._socket.close(0)


def _reason(message: bytes) -> str:
    parts = message.split(b" ", 2)
    if len(parts) == 3 and parts[2][:1] == b"\x80":
        return "pickle"
    if len(parts) != 3:
        return "framing"
    return "payload"


def wait_until_delivered(
    send_ping: Callable[[], None],
    pings_seen: Callable[[], float | Sequence[float]],
    timeout: float = 30.0,
) -> None:
    """Ping through the bus until every consumer has counted a ping sent *here* (0MQ
    slow-joiner guard).

    ``pings_seen`` returns the ping count of each consumer (or of one). The counts from
    before the first ping are the baseline: a ping of an earlier publisher proves nothing
    about this one's path. A fresh PUB socket drops what it sends until its subscriber's
    subscription has arrived, so a guard satisfied by old pings let a new publisher's
    ``start`` and descriptor vanish (on the JetStream path, the bridge then published the
    run's events as unrouted and no consumer ever took the run).
    """
    import time

    deadline = time.monotonic() + timeout
    before = _counts(pings_seen())
    while not all(math.isfinite(b) for b in before):  # a consumer not answering yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"the consumers' ping counts unreadable for {timeout} s")
        time.sleep(0.05)
        before = _counts(pings_seen())
    while time.monotonic() < deadline:
        send_ping()
        seen = _counts(pings_seen())
        if len(seen) == len(before) and all(s > b for s, b in zip(seen, before, strict=True)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no consumer received a ping of this publisher within {timeout} s")


def _counts(seen: float | Sequence[float]) -> list[float]:
    return [float(seen)] if isinstance(seen, int | float) else [float(s) for s in seen]
