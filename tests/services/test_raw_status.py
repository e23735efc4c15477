"""``raw/<uid>`` says ``complete`` only when it holds every Event of the run.

``benchmarks.chaos --no-pause`` (0MQ, the raw consumer killed four times while the RunEngine
went on publishing) found ``raw complete`` with 25 of 26 rows lost: the stream's descriptor had
come while the consumer was down, so the stop's ``num_events`` for it was checked against no
descriptor the consumer knew. The same rules as the analysis side: a stream the stop counts but
whose descriptor never came, a run closed without its stop, and a run opened from a stand-in
start are ``incomplete``. Real RunEngine documents through the real dispatcher and spool.
"""

from __future__ import annotations

from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.core.metrics import Metrics
from services.runs.ingest import RawRunRouter
from services.runs.routing import RunDispatcher
from services.tiled.records import Metadata, Record
from services.tiled.spool import Spool
from tests.services.test_routing import Clock
from tests.sim import N_ENERGIES, energies, small_txm


def _raw_status(tmp_path, drop) -> dict:
    txm = small_txm(tmp_path / "detector", "stream", seed=3)
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(xanes_scan_plan(txm, energies(), n_flats=1))
    primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")
    applied: list[Record] = []
    metrics = Metrics("raw")
    spool = Spool(tmp_path / "spool", applied.append, metrics)
    clock = Clock()
    dispatcher = RunDispatcher(
        [lambda start: RawRunRouter(spool)], metrics, clock=clock, idle_timeout=600.0
    )
    for name, doc in docs:
        if not drop(name, doc, primary):
            dispatcher(name, doc)
    clock.now += 60.0  # gaps waited for, then declared lost
    dispatcher.sweep()
    clock.now += 700.0  # past the idle timeout: a run without its stop is closed
    dispatcher.sweep()
    spool.start()
    assert spool.wait_empty(60)
    spool.stop()
    statuses = [
        r.metadata for r in applied if isinstance(r, Metadata) and "beamwatch_status" in r.metadata
    ]
    assert len(statuses) == 1, statuses
    return statuses[0]


def _primary(name, doc, primary):
    return (name == "descriptor" and doc["uid"] == primary) or (
        name == "event" and doc["descriptor"] == primary
    )


def test_every_document_in_is_complete(tmp_path):
    md = _raw_status(tmp_path, lambda name, doc, primary: False)
    assert md["beamwatch_status"] == "complete", md
    assert md["beamwatch_missing_seq_nums"] == {}


def test_a_stream_whose_descriptor_never_came_is_missing(tmp_path):
    md = _raw_status(tmp_path, _primary)
    assert md["beamwatch_status"] == "incomplete", md
    assert md["beamwatch_missing_seq_nums"] == {"primary": list(range(1, N_ENERGIES + 1))}


def test_a_run_closed_without_its_stop_is_incomplete(tmp_path):
    md = _raw_status(tmp_path, lambda name, doc, primary: name == "stop")
    assert md["beamwatch_status"] == "incomplete", md
    assert md["beamwatch_stop_lost"] is True


def test_a_run_opened_from_a_stand_in_start_is_incomplete(tmp_path):
    # the start was lost and nothing recovers it: the dispatcher opens the run from a
    # stand-in start, which says nothing of what the run was
    md = _raw_status(tmp_path, lambda name, doc, primary: name == "start")
    assert md["beamwatch_status"] == "incomplete", md
    assert md["beamwatch_start_lost"] is True
