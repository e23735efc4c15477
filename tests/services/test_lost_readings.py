"""A lost Event whose frame is in the detector file but whose readings are found nowhere.

The frame's image is rebuilt from the file (``frames`` has every frame), but without its energy
it has no place on the XANES energy axis: it must not feed the spectra, and ``xanes`` ends
``incomplete`` naming it, never ``complete``. When ``raw/`` holds the Event (the raw consumer
got it), its readings come from there and the frame is used like any other.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.analysis.router import (
    AnalysisRunRouter,
    FrameStatsPipeline,
    RawEvent,
    RegistryEntry,
)
from services.analysis.xanes_live import SeriesStore, XanesLivePipeline, select
from services.core.metrics import Metrics
from services.core.serialization import UndecodableField
from services.runs.routing import RunDispatcher
from services.tiled.records import ArrayWrite, Metadata, Record, TableRows
from services.tiled.spool import Spool
from tests.services.test_routing import Clock
from tests.sim import N_ENERGIES, energies, small_txm

LOST = 4  # the primary Event neither consumer got


def _run(
    tmp_path,
    raw_holds_the_event: bool,
    lose: int | None = LOST,
    lose_start=False,
    lose_stop=False,
    garble: int | None = None,
    raw_has_stop: bool = False,
    raw_garbled: bool = False,
):
    txm = small_txm(tmp_path / "detector", "stream", seed=5)
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(xanes_scan_plan(txm, energies(), n_flats=1))
    primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")
    lost = next(
        (d for n, d in docs if n == "event" and (d["descriptor"], d["seq_num"]) == (primary, lose)),
        None,
    )
    looked_up: list[tuple[str, list[int]]] = []

    def raw_lookup(run_uid, stream, seq_nums):
        # what raw/<uid>/<stream> in Tiled holds: the Event's row (its frame is in the file)
        looked_up.append((stream, seq_nums))
        if lost is None or not raw_holds_the_event or stream != "primary" or lose not in seq_nums:
            return {}
        if raw_garbled:  # a row the rebuild cannot read (readings not a mapping)
            return {lose: RawEvent(lost["time"], None)}  # type: ignore[arg-type]
        return {lose: RawEvent(lost["time"], dict(lost["data"]))}

    applied: list[Record] = []
    metrics = Metrics("analysis")
    spool = Spool(tmp_path / "spool", applied.append, metrics)
    entries = [
        RegistryEntry("frames", lambda start: True, FrameStatsPipeline),
        RegistryEntry(
            "xanes",
            select,
            lambda start: XanesLivePipeline(
                start, feedback=None, figures_dir=tmp_path / "figures", series=SeriesStore()
            ),
        ),
    ]
    clock = Clock()
    stop = next(d for n, d in docs if n == "stop")
    dispatcher = RunDispatcher(
        [lambda start: AnalysisRunRouter(start, entries, spool, metrics, raw_lookup=raw_lookup)],
        metrics,
        clock=clock,
        recover_stop=(lambda uid: dict(stop)) if raw_has_stop else None,
    )
    for name, doc in docs:
        if name == "event" and (doc["descriptor"], doc["seq_num"]) == (primary, garble):
            # the Event came, but its energy could not be decoded: dropped, the rest kept
            doc = {**doc, "data": {**doc["data"], "energy": UndecodableField("truncated ext")}}
        if (
            doc is not lost
            and not (lose_start and name == "start")
            and not (lose_stop and name == "stop")
        ):
            dispatcher(name, doc)
    clock.now += 60.0  # the gap is waited for, then declared lost; the stop goes through
    dispatcher.sweep()
    if lose_stop:
        clock.now += 700.0  # past the idle timeout (600 s): the run is closed without a stop
        dispatcher.sweep()
    spool.start()
    assert spool.wait_empty(60)
    spool.stop()
    # a lost last Event is seen as lost only through the stop's num_events
    unseen = lost is None or (lose == N_ENERGIES and lose_stop and not raw_has_stop)
    assert looked_up == ([] if unseen else [("primary", [lose])])
    return applied, metrics


def _final(applied, pipeline):
    return [r.metadata for r in applied if isinstance(r, Metadata) and r.path[-1] == pipeline][-1]


def _column(applied, pipeline, table, column):
    return [
        v
        for r in applied
        if isinstance(r, TableRows) and r.path[-1] == pipeline and r.key == table
        for v in r.rows[column]
    ]


def test_a_frame_whose_energy_is_lost_feeds_no_spectrum_and_the_run_names_it(tmp_path):
    applied, metrics = _run(tmp_path, raw_holds_the_event=False)
    # the image is in the detector file: the frame statistics have every frame
    assert _final(applied, "frames")["status"] == "complete"
    assert LOST in _column(applied, "frames", "frame_stats", "seq_num")
    # but it cannot be placed on the energy axis: left out of every XANES result
    xanes = _final(applied, "xanes")
    assert xanes["status"] == "incomplete", xanes
    assert xanes["missing_seq_nums"] == {"primary": [LOST]}
    assert xanes["recovery_entered"] is True
    kept = [s for s in range(1, N_ENERGIES + 1) if s != LOST]
    assert _column(applied, "xanes", "frames", "seq_num") == kept
    (axis,) = [r.array for r in applied if isinstance(r, ArrayWrite) and r.key == "energy"]
    np.testing.assert_allclose(axis, np.delete(energies(), LOST - 1))
    (spectra,) = [r.array for r in applied if isinstance(r, ArrayWrite) and r.key == "spectra"]
    assert spectra.shape[1] == N_ENERGIES - 1
    labels = {"service": "analysis", "pipeline": "xanes"}
    assert metrics.registry.get_sample_value("beamwatch_frames_unusable_total", labels) == 1


def test_a_lost_frame_that_cannot_be_rebuilt_is_missing_and_the_run_ends(tmp_path):
    """The rebuild of a lost frame raises (raw/ holds a row it cannot read): the frame is
    named missing in every pipeline, which ends ``incomplete`` instead of staying ``running``
    (the error used to escape the after-scan job, and no final status was written)."""
    applied, _metrics = _run(tmp_path, raw_holds_the_event=True, raw_garbled=True)
    for pipeline in ("frames", "xanes"):
        final = _final(applied, pipeline)
        assert final["status"] == "incomplete", final
        assert final["missing_seq_nums"] == {"primary": [LOST]}, final
    # every other frame exactly once: the primary ones, and the flat before and after the scan
    kept = [s for s in range(1, N_ENERGIES + 1) if s != LOST]
    assert _column(applied, "xanes", "frames", "seq_num") == kept
    stats = Counter(_column(applied, "frames", "frame_stats", "seq_num"))
    assert stats == Counter(kept) + Counter([1, 2]), stats


def test_a_frame_whose_readings_raw_holds_is_used(tmp_path):
    applied, metrics = _run(tmp_path, raw_holds_the_event=True)
    for pipeline in ("frames", "xanes"):
        md = _final(applied, pipeline)
        assert md["status"] == "complete", (pipeline, md)
        assert md["missing_seq_nums"] == {}
    seq_nums = _column(applied, "xanes", "frames", "seq_num")
    assert sorted(seq_nums) == list(range(1, N_ENERGIES + 1))
    recovered = dict(zip(seq_nums, _column(applied, "xanes", "frames", "energy"), strict=True))
    assert recovered[LOST] == pytest.approx(energies()[LOST - 1])
    (axis,) = [r.array for r in applied if isinstance(r, ArrayWrite) and r.key == "energy"]
    assert len(axis) == N_ENERGIES
    labels = {"service": "analysis", "pipeline": "xanes"}
    assert not metrics.registry.get_sample_value("beamwatch_frames_unusable_total", labels)


def test_a_run_with_nothing_lost_never_enters_recovery(tmp_path):
    # the wait for raw/ (recovery_timeout) is for runs that lost documents only: a run with
    # every document never looks there (raw_lookup is not called: asserted in _run)
    applied, metrics = _run(tmp_path, raw_holds_the_event=False, lose=None)
    for pipeline in ("frames", "xanes"):
        md = _final(applied, pipeline)
        assert md["status"] == "complete", (pipeline, md)
        assert md["recovery_entered"] is False
    assert not metrics.registry.get_sample_value(
        "beamwatch_recoveries_total", {"service": "analysis"}
    )
    assert _column(applied, "xanes", "frames", "recovered") == [False] * N_ENERGIES


def test_a_run_opened_from_a_stand_in_start_never_says_complete(tmp_path):
    # the start was lost and not in raw/ when the run's next document came: the run is opened
    # from a stand-in start, from which the registry cannot tell which pipelines the run
    # wanted: benchmarks.chaos (seed 14, 5 scans) found such a XANES run with "frames
    # complete" and no xanes results at all. Every pipeline it has says incomplete.
    applied, _metrics = _run(tmp_path, raw_holds_the_event=False, lose=None, lose_start=True)
    for pipeline in ("frames", "xanes"):
        md = _final(applied, pipeline)
        assert md["status"] == "incomplete", (pipeline, md)
        assert md["start_lost"] is True


def test_a_run_closed_without_its_stop_never_says_complete(tmp_path):
    # benchmarks.chaos (seed 14) found "frames complete" with 18 of 26 rows lost: the
    # consumer's later Events and the stop were lost in kills, the run was closed after the
    # idle timeout, and without the stop's num_events nothing counted the unseen Events.
    applied, _metrics = _run(tmp_path, raw_holds_the_event=False, lose=None, lose_stop=True)
    for pipeline in ("frames", "xanes"):
        md = _final(applied, pipeline)
        assert md["status"] == "incomplete", (pipeline, md)
        assert md["stop_lost"] is True
    # every Event that did come is still used
    assert sorted(_column(applied, "xanes", "frames", "seq_num")) == list(range(1, N_ENERGIES + 1))


def test_a_frame_whose_energy_could_not_be_decoded_feeds_no_spectrum_and_the_run_names_it(
    tmp_path,
):
    # The Event arrived, but its energy was undecodable: the field is dropped and the rest of
    # the Event kept (its image feeds the frame statistics). Without its energy the frame has
    # no place on the energy axis; it used to fail the whole xanes pipeline ("event seq_num N
    # has no reading 'energy'"): now it is left out and named, like a lost reading.
    applied, metrics = _run(tmp_path, raw_holds_the_event=False, lose=None, garble=LOST)
    assert _final(applied, "frames")["status"] == "complete"
    assert sorted(_column(applied, "frames", "frame_stats", "seq_num")).count(LOST) == 1
    xanes = _final(applied, "xanes")
    assert xanes["status"] == "incomplete", xanes
    assert xanes["missing_seq_nums"] == {"primary": [LOST]}
    assert [b["data_key"] for b in xanes["bad_fields"]] == ["energy"]
    kept = [s for s in range(1, N_ENERGIES + 1) if s != LOST]
    assert _column(applied, "xanes", "frames", "seq_num") == kept
    (spectra,) = [r.array for r in applied if isinstance(r, ArrayWrite) and r.key == "spectra"]
    assert spectra.shape[1] == N_ENERGIES - 1
    labels = {"service": "analysis", "pipeline": "xanes"}
    assert metrics.registry.get_sample_value("beamwatch_frames_unusable_total", labels) == 1


def test_a_lost_stop_is_taken_from_raw_and_the_events_after_the_last_seen_are_recovered(
    tmp_path,
):
    # The last Event and the stop were lost (the analysis consumer was down): the run goes
    # idle, its stop is read from raw/<uid>, whose num_events names the Event never seen, and
    # that Event is rebuilt from raw/ and the detector file: the run is whole again.
    applied, metrics = _run(
        tmp_path, raw_holds_the_event=True, lose=N_ENERGIES, lose_stop=True, raw_has_stop=True
    )
    for pipeline in ("frames", "xanes"):
        md = _final(applied, pipeline)
        assert md["status"] == "complete", (pipeline, md)
        assert md["stop_lost"] is False and md["recovery_entered"] is True
    assert _column(applied, "xanes", "frames", "seq_num") == list(range(1, N_ENERGIES + 1))
    labels = {"service": "analysis", "kind": "stop"}
    assert metrics.registry.get_sample_value("beamwatch_messages_recovered_total", labels) == 1


def test_a_lost_stop_not_in_raw_leaves_the_run_incomplete(tmp_path):
    applied, _metrics = _run(
        tmp_path, raw_holds_the_event=True, lose=N_ENERGIES, lose_stop=True, raw_has_stop=False
    )
    xanes = _final(applied, "xanes")
    assert xanes["status"] == "incomplete" and xanes["stop_lost"] is True, xanes
    # the Event never seen is not counted without the stop: only the seen ones are in
    assert _column(applied, "xanes", "frames", "seq_num") == list(range(1, N_ENERGIES))
