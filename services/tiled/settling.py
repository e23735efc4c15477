"""Writes to Tiled that have ended before their run's next request, even past a timeout.

A client that stops waiting for a write (its timeout) cannot tell whether the server will
still apply it: a request queued behind a locked database commits whenever its turn comes,
possibly after the spool's retry has re-read the table and appended the rows again (rows
twice), or after a later update of the same run (an older data source or status written over
a newer one). Keying rows does not help there: the re-read cannot see rows that are not
committed yet. So the client must not re-read, nor write anything more of that run, until the
server is done with the write.

:class:`SettlingTransport` gives that. A write (any method but GET, HEAD, OPTIONS) is sent on a
thread of its own with no read timeout, so its connection stays open until the server answers;
the caller waits ``timeout`` seconds as before and then gets :class:`httpx.ReadTimeout` (the
spool retries later; the worker goes on with other runs), while the request goes on. Until it
has ended (answered, or its connection closed: a server that died applies nothing more), every
later request for the same run (its uid in the path under ``raw/`` or ``analysis/``, or made
inside :func:`requests_of`; reads included, so the retry's re-read, which the tiled client
may make on threads of its own) waits for it, at most ``timeout`` seconds, and otherwise
fails with ReadTimeout in turn. The run's lane waits; other runs go on; when the run's next
request is sent, the write is in or will never be.

A write still without an answer after ``settle_timeout`` seconds is given up (logged as an
error): the server may apply it later, which this cannot exclude. Nor can it when the consumer
itself dies while a write hangs in the server (a restarted consumer's re-read may come before
the hung commit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from services.core.layout import ANALYSIS, RAW

logger = logging.getLogger(__name__)

#: Methods that change nothing on the server: sent directly, with the client's timeout.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_current = threading.local()


@contextmanager
def requests_of(key: str | None) -> Iterator[None]:
    """Requests made by this thread inside the block are for ``key`` (a run's lane): they wait
    for a write of the same key that outlived its timeout."""
    previous = getattr(_current, "key", None)
    _current.key = key
    try:
        yield
    finally:
        _current.key = previous


def _keys(request: httpx.Request) -> frozenset[str]:
    """The runs a request is for: the thread's (:func:`requests_of`) and the one its path
    names (``.../raw/<uid>/...``, ``.../analysis/<uid>/...``)."""
    keys = set()
    current = getattr(_current, "key", None)
    if current is not None:
        keys.add(current)
    parts = request.url.path.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in (RAW, ANALYSIS) and parts[i + 1]:
            keys.add(parts[i + 1])
            break
    return frozenset(keys)


class _Write:
    """A write request on its own thread, until the server has answered it."""

    def __init__(self, request: httpx.Request) -> None:
        self.description = f"{request.method} {request.url.path}"
        self.started = time.monotonic()
        self.done = threading.Event()
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None

    def outcome(self) -> httpx.Response:
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


class SettlingTransport(httpx.BaseTransport):
    """Wraps a client's transport so that a write of a run that timed out is waited for
    before any other request of that run is sent (module docstring)."""

    def __init__(
        self, inner: httpx.BaseTransport, *, timeout: float, settle_timeout: float | None = 600.0
    ) -> None:
        self._inner = inner
        self._timeout = timeout
        self._settle_timeout = settle_timeout
        self._lock = threading.Lock()
        #: run -> the write for that run that timed out and has not ended yet
        self._unsettled: dict[str, _Write] = {}

    def __getattr__(self, name: str) -> Any:
        # the tiled client reads attributes of its own transport (``cache``)
        return getattr(self._inner, name)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        keys = _keys(request)
        self._wait_for_earlier_writes(keys, request)
        if request.method in READ_METHODS:
            return self._inner.handle_request(request)
        return self._write(keys, request)

    def _wait_for_earlier_writes(self, keys: frozenset[str], request: httpx.Request) -> None:
        deadline = time.monotonic() + self._timeout
        for key in keys:
            with self._lock:
                write = self._unsettled.get(key)
            if write is None:
                continue
            if not write.done.wait(max(deadline - time.monotonic(), 0.0)):
                raise httpx.ReadTimeout(
                    f"an earlier write of {key} ({write.description}, "
                    f"{time.monotonic() - write.started:.0f} s ago) is still in progress at "
                    f"the server; {request.method} {request.url.path} waits for it",
                    request=request,
                )

    def _write(self, keys: frozenset[str], request: httpx.Request) -> httpx.Response:
        write = _Write(request)
        timeouts = dict(request.extensions.get("timeout") or {})
        wait = timeouts.get("read") or self._timeout
        timeouts["read"] = self._settle_timeout
        request.extensions["timeout"] = timeouts
        thread = threading.Thread(
            target=self._send, args=(keys, write, request), name="tiled-write", daemon=True
        )
        thread.start()
        if write.done.wait(wait):
            return write.outcome()
        with self._lock:
            if not write.done.is_set():
                for key in keys:
                    self._unsettled[key] = write
                logger.warning(
                    "Tiled write %s: no answer in %.1f s; the next request of %s waits until "
                    "the server has answered it",
                    write.description,
                    wait,
                    ", ".join(sorted(keys)) or "no run (nothing waits)",
                )
                raise httpx.ReadTimeout(
                    f"no answer in {wait:.1f} s (the request goes on)", request=request
                )
        return write.outcome()

    def _send(self, keys: frozenset[str], write: _Write, request: httpx.Request) -> None:
        try:
            response = self._inner.handle_request(request)
            try:
                raw = b"".join(response.iter_raw())
            finally:
                response.close()
            # a response the caller can read (its body read here: the server is done)
            write.response = type(response)(
                status_code=response.status_code,
                headers=response.headers,
                stream=httpx.ByteStream(raw),
                extensions=response.extensions,
                request=request,
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            write.error = exc
            if isinstance(exc, httpx.TimeoutException):
                logger.error(
                    "Tiled write %s: no answer in %s s; given up (the server may still apply it)",
                    write.description,
                    self._settle_timeout,
                )
        finally:
            with self._lock:
                write.done.set()
                waited_for = [k for k in keys if self._unsettled.get(k) is write]
                for key in waited_for:
                    del self._unsettled[key]
            if waited_for:
                logger.info(
                    "Tiled write %s ended after %.1f s",
                    write.description,
                    time.monotonic() - write.started,
                )

    def close(self) -> None:
        self._inner.close()


def install(client: Any, *, timeout: float, settle_timeout: float | None = 600.0) -> None:
    """Make the tiled ``client``'s writes settle (wraps its httpx transport)."""
    http_client = client.context.http_client
    if not isinstance(http_client._transport, SettlingTransport):
        http_client._transport = SettlingTransport(
            http_client._transport, timeout=timeout, settle_timeout=settle_timeout
        )
