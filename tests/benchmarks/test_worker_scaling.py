"""The CPUs ``benchmarks.worker_scaling --cpus-per-worker`` gives each worker."""

from __future__ import annotations

import os

import pytest

from benchmarks.worker_scaling import worker_cpus


def test_each_worker_gets_cpus_of_its_own_in_order():
    allowed = sorted(os.sched_getaffinity(0))
    assert worker_cpus(len(allowed), 1) == [[cpu] for cpu in allowed]
    assert worker_cpus(1, len(allowed)) == [allowed]
    assert worker_cpus(3, 0) == [[], [], []]  # not pinned


def test_the_feeds_cpus_are_left_to_it():
    allowed = sorted(os.sched_getaffinity(0))
    feed = allowed[:1]
    assert worker_cpus(len(allowed) - 1, 1, feed) == [[cpu] for cpu in allowed[1:]]
    with pytest.raises(ValueError, match="besides the feed's"):
        worker_cpus(len(allowed), 1, feed)


def test_more_cpus_than_the_machine_has_are_refused():
    allowed = sorted(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match=f"need {len(allowed) + 1} CPUs"):
        worker_cpus(len(allowed) + 1, 1)
