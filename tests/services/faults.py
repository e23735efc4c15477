"""Faults injected into real Tiled traffic, and the spool the fault tests write through.

Shared by the exactly-once tests (raw rows and frames, analysis tables, the tomography
masks): the server commits a write, the client is told it failed, the spool retries it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from services.core.metrics import Metrics
from services.tiled.applier import TiledApplier, is_transient
from services.tiled.spool import Spool

__all__ = ["CommittedButFailed", "started_spool"]


class CommittedButFailed:
    """Turns the answers to chosen, already applied requests into HTTP 500, or (``timeout``)
    into the client's read timeout: the server committed, the client gave up waiting."""

    def __init__(self, matches, times, timeout=False):
        self.matches = matches
        self.left = times
        self.timeout = timeout
        self.injected: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        with self._lock:
            if response.is_success and self.left > 0 and self.matches(request):
                self.left -= 1
                self.injected.append(f"{request.method} {request.url.path}")
                if self.timeout:
                    raise httpx.ReadTimeout("injected: no answer in time", request=request)
                response.status_code = 500


def started_spool(client, directory: Path, metrics: Metrics, **options) -> Spool:
    """A started spool writing to the Tiled ``client`` as the consumers do, with a short
    back-off (0.2 s) so that retries after an injected fault come quickly."""
    spool = Spool(
        directory,
        TiledApplier(client),
        metrics,
        max_backoff=0.2,
        is_transient=is_transient,
        **options,
    )
    spool.start()
    return spool
