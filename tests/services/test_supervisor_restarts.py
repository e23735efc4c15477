"""The supervisor's restart delay grows only while a child keeps dying soon after its start.

Found by ``benchmarks.chaos``: the delay grew with every restart for good (2^restarts s, up to
30 s), so a child that had run for hours waited 30 s to come back after its sixth crash, and
a consumer that is down loses what is published on the 0MQ bus meanwhile.
"""

from __future__ import annotations

import shutil
import time

from services.runtime.supervisor import ChildSpec, Supervisor

STABLE_AFTER = 2.0


def _deaths_in_a_row(argv: list[str], cycles: int) -> list[int]:
    """Run a child that exits by itself ``cycles`` times; the supervisor's count of quick
    deaths in a row after each (restarts are not waited for: they are due at once)."""
    supervisor = Supervisor([ChildSpec("child", argv)], stable_after=STABLE_AFTER)
    (child,) = supervisor._children
    supervisor.start()
    seen = []
    try:
        for _ in range(cycles):
            assert child.proc is not None
            child.proc.wait(30)
            supervisor.check()  # notices the death, schedules the restart
            seen.append(child.quick_deaths)
            child.next_start = time.monotonic()
            supervisor.check()  # restarts it
    finally:
        supervisor.stop()
    return seen


def test_the_delay_grows_while_a_child_dies_at_once():
    assert _deaths_in_a_row([shutil.which("true") or "/bin/true"], 3) == [1, 2, 3]
    assert [Supervisor.restart_delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_child_that_ran_long_enough_is_restarted_after_the_shortest_delay():
    sleeper = [shutil.which("sleep") or "/bin/sleep", str(STABLE_AFTER + 0.5)]
    assert _deaths_in_a_row(sleeper, 2) == [1, 1]
