"""Pure logic of ``benchmarks.worker_scaling``: the CPUs ``--cpus-per-worker`` gives each
worker, the frames a run must hold once."""

from __future__ import annotations

import os

import pytest

from benchmarks.worker_scaling import expected_frame_seq_nums, worker_cpus


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


def test_each_frame_of_a_run_is_expected_once_per_stream():
    # XANES: energies 1..n in the primary stream, 2 flats (first and last energy)
    assert expected_frame_seq_nums("xanes", 3) == [1, 1, 2, 2, 3]
    # tomography: projections 1..n, one dark and one flat
    assert expected_frame_seq_nums("tomo", 2) == [1, 1, 1, 2]
    with pytest.raises(ValueError, match="kind"):
        expected_frame_seq_nums("xrd", 2)
