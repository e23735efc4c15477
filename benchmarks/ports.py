"""Loopback ports for the processes a benchmark or a test starts (no other imports: the tests'
conftest uses it too)."""

from __future__ import annotations

import socket

#: ports free_port() has handed out in this process
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now that no earlier call in this process returned.

    The kernel may give the same ephemeral port to two ``bind(0)`` calls in a row once the
    first socket is closed: a fresh clone's ``up`` once got one port for Tiled and for a
    consumer's metrics, and the test's Tiled client read Prometheus text where it expected
    JSON. Each port is handed out once.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
