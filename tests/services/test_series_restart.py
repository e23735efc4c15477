"""Operando series state survives a restart of the analysis consumer (issue 14, point 2).

The documents of a two-scan operando series (real RunEngine, frames inside the Events) go
through the analysis routers and the pipelines ``beamwatch up`` registers; between the scans
the registry is rebuilt from the same data dir, as a restarted consumer does. The second scan's
cross-scan deformation must equal the one of a consumer that ran through both scans.
"""

from __future__ import annotations

import numpy as np
from bluesky import RunEngine

from bluesky_plans.devices import SimTXM
from bluesky_plans.plans import operando_xanes_plan
from services.analysis.registry import default_registry
from services.analysis.router import AnalysisRunRouter
from services.core.metrics import Metrics
from services.runs.routing import RunDispatcher, RunRouter
from services.tiled.records import ArrayWrite, Container, Metadata, TableRows
from synthetic.txm import TxmScene, default_energies

N = 8


class RecordingSpool:
    """The records the pipelines hand to the spool, in order (no Tiled behind it)."""

    def __init__(self) -> None:
        self.records: list[object] = []

    def put(self, record: object) -> None:
        self.records.append(record)


def _series_documents(tmp_path):
    scene = TxmScene.random(5, shape=(128, 128), n_particles=3, n_scans=2, n_frames=N)
    txm = SimTXM(scene, tmp_path / "detector", frame_source="event", seed=3)
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    uids = RE(operando_xanes_plan(txm, default_energies(N), 2, n_flats=2))
    assert len(uids) == 2
    per_run: dict[str, list[tuple[str, dict]]] = {uid: [] for uid in uids}
    descriptors: dict[str, str] = {}
    for name, doc in docs:
        if name == "start":
            uid = doc["uid"]
        elif name == "descriptor":
            uid = descriptors.setdefault(doc["uid"], doc["run_start"])
        elif name in ("event", "event_page"):
            uid = descriptors[doc["descriptor"]]
        else:
            uid = doc.get("run_start") or doc.get("run")
        per_run[uid].append((name, doc))
    return uids, per_run


class AnalysisConsumer:
    """The analysis side of a consumer as ``Consumer`` builds it from a data dir."""

    def __init__(self, data_dir, series: bool = True) -> None:
        self.spool = RecordingSpool()
        metrics = Metrics("analysis")
        registry = self.registry = default_registry(
            data_dir / "figures", None, series_dir=data_dir / "series" if series else None
        )

        def factory(start) -> RunRouter | None:
            entries = registry.select(start)
            return AnalysisRunRouter(start, entries, self.spool, metrics) if entries else None

        self.dispatcher = RunDispatcher([factory], metrics)

    def feed(self, documents) -> None:
        for name, doc in documents:
            self.dispatcher(name, doc)

    def xanes(self, uid: str) -> dict:
        """The arrays, tables and metadata written under analysis/<uid>/xanes."""
        arrays, md, tables = {}, {}, {}
        for r in self.spool.records:
            if tuple(getattr(r, "path", ())) == ("analysis", uid, "xanes"):
                if isinstance(r, ArrayWrite):
                    arrays[r.key] = r.array
                elif isinstance(r, TableRows):
                    table = tables.setdefault(r.key, {})
                    for column, values in r.rows.items():
                        table.setdefault(column, []).extend(values)
                elif isinstance(r, Container | Metadata):
                    md.update(r.metadata or {})
        return {"arrays": arrays, "metadata": md, "tables": tables}


def test_series_deformation_after_a_consumer_restart_equals_the_uninterrupted_one(
    tmp_path, monkeypatch
):
    (first, second), docs = _series_documents(tmp_path)

    uninterrupted = AnalysisConsumer(tmp_path / "a")
    uninterrupted.feed(docs[first])
    uninterrupted.feed(docs[second])
    expected = uninterrupted.xanes(second)
    assert expected["metadata"]["series_scans"] == [0, 1]
    assert expected["metadata"]["status"] == "complete"

    before = AnalysisConsumer(tmp_path / "b")
    before.feed(docs[first])
    assert before.xanes(first)["metadata"]["series_scans"] == [0]
    after = AnalysisConsumer(tmp_path / "b")  # restarted: a new registry from the same data dir
    after.feed(docs[second])
    resumed = after.xanes(second)
    assert resumed["metadata"]["status"] == "complete"
    assert resumed["metadata"]["series_scans"] == [0, 1]
    for key in ("deformation_displacement", "deformation_nonrigid"):
        assert expected["arrays"][key].shape[1] == 2
        np.testing.assert_array_equal(resumed["arrays"][key], expected["arrays"][key])
    # the state-of-charge trajectory goes on too: the first scan's maps and time stamp came
    # back from the data dir (edge energy per particle per scan, both scans)
    trajectory = expected["tables"]["soc_trajectory"]
    assert sorted(set(trajectory["scan"])) == [0, 1]
    assert np.isfinite(trajectory["edge_energy_eV_mean"]).all()
    assert len(set(trajectory["scan_time"])) == 2
    np.testing.assert_equal(resumed["tables"]["soc_trajectory"], trajectory)
    # the second scan really moved: a deformation of zeros would prove nothing
    displacement = expected["arrays"]["deformation_displacement"]
    assert np.isfinite(displacement[:, 1]).any()
    assert np.nanmax(np.abs(displacement[:, 1])) > 0.1

    # the same scan analysed again after the restart replaces its summary, never adds a scan
    again = AnalysisConsumer(tmp_path / "b")
    again.feed(docs[second])
    assert again.xanes(second)["metadata"]["series_scans"] == [0, 1]
    np.testing.assert_array_equal(
        again.xanes(second)["arrays"]["deformation_displacement"], displacement
    )

    # without a data dir the series state goes to a temporary directory (the same result, the
    # scans' arrays on disk, not in memory), removed when the registry is closed (consumer stop)
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    spilling = AnalysisConsumer(tmp_path / "d", series=False)
    spilling.feed(docs[first])
    spilling.feed(docs[second])
    assert spilling.xanes(second)["metadata"]["series_scans"] == [0, 1]
    np.testing.assert_array_equal(
        spilling.xanes(second)["arrays"]["deformation_displacement"], displacement
    )
    (spill,) = temp.glob("beamwatch-series-*")
    assert len(list(spill.rglob("*.npz"))) == 2
    spilling.registry.close()
    assert not spill.exists()

    # without the state on disk a restart forgets the first scan (what issue 14 reported)
    forgetful = AnalysisConsumer(tmp_path / "c", series=False)
    forgetful.feed(docs[second])
    assert forgetful.xanes(second)["metadata"]["series_scans"] == [1]
    forgetful.registry.close()


def test_a_scan_keeps_the_series_it_was_added_to(tmp_path):
    """Two scans' after-scan stages can run at once (the consumer's worker pool): what
    ``add`` returned to one scan must not change when the other adds itself, or its
    deformation arrays and its ``series_scans`` would describe different scans (seen in
    test_xanes_live: series_scans [0, 1] next to a one-scan deformation array)."""
    from services.analysis.xanes_live import SeriesStore, _ScanSummary

    store = SeriesStore(directory=tmp_path / "series")

    def summary(index: int) -> _ScanSummary:
        labels = np.zeros((8, 8), dtype=np.int32)
        labels[2:5, 2:5] = 1
        return _ScanSummary(
            index, labels, labels.astype(np.float32), np.array([[3.0, 3.0]]), run_uid=f"r{index}"
        )

    second = store.add("s", summary(1))
    first = store.add("s", summary(0))
    assert [s.scan_index for s in second] == [1]
    assert [s.scan_index for s in first] == [0, 1]
    assert np.isnan(first[0].time) and first[0].maps == {}
    # and what a restarted consumer reads back holds both, in scan order
    assert [
        s.scan_index for s in SeriesStore(directory=tmp_path / "series").add("s", summary(2))
    ] == [0, 1, 2]


def test_a_later_scan_whose_stage_ends_first_waits_for_the_earlier_one(tmp_path):
    """Scan 1's after-scan stage can reach the series before scan 0's (two pool workers):
    it waits for scan 0, queued before it, and so compares itself with scan 0 whatever the
    timing; a stage that fails releases the scans behind it."""
    import threading

    from services.analysis.xanes_live import SeriesStore, _ScanSummary

    store = SeriesStore(directory=tmp_path / "series")

    def summary(index: int) -> _ScanSummary:
        labels = np.zeros((8, 8), dtype=np.int32)
        labels[2:5, 2:5] = 1
        return _ScanSummary(
            index, labels, labels.astype(np.float32), np.array([[3.0, 3.0]]), run_uid=f"r{index}"
        )

    # the stops of scans 0 and 1 arrive in order; scan 1's stage is first at the series
    store.expect("s", "r0", 0)
    store.expect("s", "r1", 1)
    got: dict[int, list[int]] = {}
    later = threading.Thread(
        target=lambda: got.setdefault(1, [s.scan_index for s in store.add("s", summary(1))])
    )
    later.start()
    later.join(0.5)
    assert later.is_alive(), "scan 1 joined before scan 0, whose stage was queued first"
    got[0] = [s.scan_index for s in store.add("s", summary(0))]
    later.join(10)
    assert not later.is_alive()
    assert got == {0: [0], 1: [0, 1]}

    # scan 2's stage fails before it joins: scan 3 does not wait for it
    store.expect("s", "r2", 2)
    store.expect("s", "r3", 3)
    store.release("s", "r2")
    assert [s.scan_index for s in store.add("s", summary(3))] == [0, 1, 3]


def test_the_series_store_holds_numbers_not_maps_and_a_restart_continues(tmp_path):
    """The store keeps each scan's arrays on disk only, in the directory it is given or,
    without one, in a temporary directory it removes at close: adding scans 3 to 12 of a
    series (about 1 MB of arrays each) leaves the memory the store holds as it was (the numbers
    of a scan are a few hundred bytes); keeping the same summaries in a list, as the store did
    without a directory before, grows by about 10 scans, which is what the measure must see.
    The arrays read back are the ones added, and a store opened on the same directory (a
    restarted consumer) continues the series."""
    import gc
    import tracemalloc

    from services.analysis.xanes_live import SeriesStore, _ScanSummary

    shape = (256, 256)
    scan_bytes = 4 * shape[0] * shape[1] * 4  # labels, reference and two maps, 4 bytes each

    def summary(index: int) -> _ScanSummary:
        rng = np.random.default_rng(index)
        labels = np.zeros(shape, dtype=np.int32)
        labels[40:90, 40 + index : 90 + index] = 1
        return _ScanSummary(
            index,
            labels,
            rng.random(shape, dtype=np.float32),
            np.array([[65.0, 65.0 + index]]),
            run_uid=f"run-{index}",
            time=1000.0 + 60 * index,
            maps={
                "edge_energy_eV": rng.random(shape, dtype=np.float32) + 8340,
                "fraction_charged": rng.random(shape, dtype=np.float32),
            },
        )

    def held_after_adding(store: SeriesStore, indices: range) -> list[int]:
        held = []
        for index in indices:
            scans = store.add("s", summary(index))
            assert [s.scan_index for s in scans] == list(range(index + 1))
            del scans
            gc.collect()
            held.append(tracemalloc.get_traced_memory()[0])
        return held

    def held_in_a_list(indices: range) -> tuple[list[int], list[_ScanSummary]]:
        kept: list[_ScanSummary] = []
        held = []
        for index in indices:
            kept.append(summary(index))
            gc.collect()
            held.append(tracemalloc.get_traced_memory()[0])
        return held, kept

    spilling = SeriesStore()  # no directory: a temporary one
    tracemalloc.start()
    try:
        on_disk = held_after_adding(SeriesStore(directory=tmp_path / "series"), range(12))
        spilled = held_after_adding(spilling, range(12))
        in_memory, kept = held_in_a_list(range(12))
    finally:
        tracemalloc.stop()
    # from the 3rd scan on, 10 more scans: the disk-backed stores grew by less than a tenth of
    # one scan's arrays; the list by about 10 scans (the measure sees the arrays)
    assert on_disk[-1] - on_disk[2] < scan_bytes / 10, (on_disk, scan_bytes)
    assert spilled[-1] - spilled[2] < scan_bytes / 10, (spilled, scan_bytes)
    assert in_memory[-1] - in_memory[2] > 9 * scan_bytes, (in_memory, scan_bytes)
    del kept
    # the spilled arrays are files in the store's temporary directory, read back as added,
    # and the directory is gone once the store is closed
    spill = spilling.spill_directory
    assert spill is not None and not spill.is_relative_to(tmp_path)
    assert len(list(spill.rglob("*.npz"))) == 12
    again = spilling.add("s", summary(12))
    np.testing.assert_array_equal(again[5].labels, summary(5).labels)
    np.testing.assert_array_equal(
        again[5].maps["fraction_charged"], summary(5).maps["fraction_charged"]
    )
    del again
    spilling.close()
    assert not spill.exists() and spilling.spill_directory is None
    spilling.close()  # twice is fine

    # what a restarted consumer sees: every scan, in order, arrays as they were added
    restarted = SeriesStore(directory=tmp_path / "series")
    scans = restarted.add("s", summary(12))
    assert [s.scan_index for s in scans] == list(range(13))
    for s in (scans[0], scans[7], scans[12]):
        want = summary(s.scan_index)
        assert s.run_uid == want.run_uid and s.time == want.time
        np.testing.assert_array_equal(s.labels, want.labels)
        np.testing.assert_array_equal(s.reference, want.reference)
        np.testing.assert_array_equal(s.mean_com, want.mean_com)
        assert s.maps.keys() == want.maps.keys()
        for key, value in want.maps.items():
            np.testing.assert_array_equal(s.maps[key], value)
