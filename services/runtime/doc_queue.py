"""The queue between a consumer's bus thread and its dispatch thread, bounded with back-pressure.

The bus thread decodes messages and puts them here; the dispatch thread routes them. A slow
dispatch thread must not make the process grow without bound, so the queue holds at most
``max_items`` documents and about ``max_bytes`` of arrays and strings. When it is full the bus
thread waits (back-pressure): it stops reading the socket, 0MQ holds up to its receive
high-water mark and then drops. 0MQ PUB/SUB drops silently, but not unnoticed: a dropped
Event is a ``seq_num`` gap (or an event fewer than the stop announces), which the dispatcher
counts as a loss and the routers recover or report (``services.runs.routing``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

#: (document name, document, arrival time on the bus, acknowledgement to call once dispatched
#: -- JetStream -- or None)
Item = tuple[str, dict[str, Any], float, Callable[[], None] | None]
#: What a document costs besides its arrays and strings (dicts, floats, keys).
DOCUMENT_OVERHEAD = 1024


def document_nbytes(value: Any, _depth: int = 0) -> int:
    """About how much memory a decoded document holds: its arrays, strings and bytes."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, bytes | bytearray | str):
        return len(value)
    if _depth > 6:
        return 0
    if isinstance(value, dict):
        return sum(document_nbytes(v, _depth + 1) + 8 for v in value.values())
    if isinstance(value, list | tuple):
        return sum(document_nbytes(v, _depth + 1) + 8 for v in value)
    return 0


class DocumentQueue:
    """FIFO of decoded documents bounded in count and bytes; :meth:`put` waits while full.

    A single document larger than ``max_bytes`` is let in when the queue is empty (it could
    never fit otherwise). ``on_change(depth, nbytes)`` is called after every change (metrics);
    ``on_wait(seconds)`` with the time a :meth:`put` waited (back-pressure).
    """

    def __init__(
        self,
        max_items: int,
        max_bytes: int,
        *,
        on_change: Callable[[int, int], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError(f"max_items and max_bytes must be >= 1, got {max_items}, {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[tuple[Item, int]] = deque()
        self._bytes = 0
        self._unfinished = 0
        self._cond = threading.Condition()
        self._on_change = on_change
        self._on_wait = on_wait
        #: the most documents / bytes held at once (for tests and the log)
        self.high_water_items = 0
        self.high_water_bytes = 0

    def _full_for(self, nbytes: int) -> bool:
        if not self._items:
            return False
        return len(self._items) >= self.max_items or self._bytes + nbytes > self.max_bytes

    def put(self, item: Item, stop: threading.Event | None = None) -> bool:
        """Queue ``item``, waiting while the queue is full; False if ``stop`` was set first."""
        nbytes = DOCUMENT_OVERHEAD + document_nbytes(item[1])
        waited_since: float | None = None
        with self._cond:
            while self._full_for(nbytes):
                if stop is not None and stop.is_set():
                    return False
                if waited_since is None:
                    waited_since = time.monotonic()
                self._cond.wait(0.2)
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._unfinished += 1
            self.high_water_items = max(self.high_water_items, len(self._items))
            self.high_water_bytes = max(self.high_water_bytes, self._bytes)
            depth, held = len(self._items), self._bytes
            self._cond.notify_all()
        if waited_since is not None and self._on_wait is not None:
            self._on_wait(time.monotonic() - waited_since)
        if self._on_change is not None:
            self._on_change(depth, held)
        return True

    def get(self, timeout: float) -> Item:
        """The oldest document; :class:`queue.Empty` after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise queue.Empty
                self._cond.wait(remaining)
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            depth, held = len(self._items), self._bytes
            self._cond.notify_all()
        if self._on_change is not None:
            self._on_change(depth, held)
        return item

    def task_done(self) -> None:
        with self._cond:
            self._unfinished -= 1
            self._cond.notify_all()

    @property
    def unfinished_tasks(self) -> int:
        """Documents queued or being dispatched."""
        with self._cond:
            return self._unfinished

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)
