"""An Event whose frame cannot be found (its Datum or StreamDatum was lost on the bus) costs
that frame only: the frames after it are analysed, and the run ends ``incomplete`` naming it.

Found by ``benchmarks.chaos``: after the analysis consumer was killed mid-run, an Event whose
Datum had been in flight raised "event refers to unknown datum" at the head of the frame
queue again for every later Event, so no later frame of the run was analysed, and the run
could still end ``complete``.
"""

from __future__ import annotations

import pytest
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.analysis.router import AnalysisRunRouter, FrameStatsPipeline, RegistryEntry
from services.core.metrics import Metrics
from services.runs.routing import RunDispatcher
from services.tiled.records import Metadata, Record, TableRows
from services.tiled.spool import Spool
from tests.sim import N_ENERGIES, energies, small_txm


# A lost Datum in mid-run; a lost last StreamDatum (a lost StreamDatum with later ones is
# rebuilt from its neighbours by the dispatcher, so the frame is not lost).
@pytest.mark.parametrize(("source", "lost_seq"), [("resource", 3), ("stream", N_ENERGIES)])
def test_a_lost_frame_reference_costs_one_frame_and_the_run_says_so(tmp_path, source, lost_seq):
    txm = small_txm(tmp_path / "detector", source, seed=3)
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(xanes_scan_plan(txm, energies(), n_flats=1))
    primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")
    key = txm.camera.image_key
    if source == "resource":  # the Datum the primary Event refers to
        event = next(
            d
            for n, d in docs
            if n == "event" and (d["descriptor"], d["seq_num"]) == (primary, lost_seq)
        )
        lost = next(d for n, d in docs if n == "datum" and d["datum_id"] == event["data"][key])
    else:
        lost = [d for n, d in docs if n == "stream_datum" and d["descriptor"] == primary][
            lost_seq - 1
        ]

    applied: list[Record] = []
    metrics = Metrics("analysis")
    spool = Spool(tmp_path / "spool", applied.append, metrics)
    entry = RegistryEntry("frames", lambda start: True, FrameStatsPipeline)
    dispatcher = RunDispatcher(
        [lambda start: AnalysisRunRouter(start, [entry], spool, metrics)], metrics
    )
    for name, doc in docs:
        if doc is not lost:
            dispatcher(name, doc)
    spool.start()
    assert spool.wait_empty(30)
    spool.stop()

    stats = [r for r in applied if isinstance(r, TableRows) and r.key == "frame_stats"]
    seq_nums = [s for r in stats for s in r.rows["seq_num"]]
    # the flats (at the first and the last energy) and every primary frame but the lost one
    expected_primary = [s for s in range(1, N_ENERGIES + 1) if s != lost_seq]
    assert sorted(seq_nums) == sorted([1, 2, *expected_primary])
    final = [r.metadata for r in applied if isinstance(r, Metadata)][-1]
    assert final["status"] == "incomplete"
    assert final["missing_seq_nums"] == {"primary": [lost_seq]}
