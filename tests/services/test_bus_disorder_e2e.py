"""Late, reordered, duplicated and missing events over the real bus: ordered, counted, and the
run says exactly what is missing; a stop before the last events does not end the run early."""

from __future__ import annotations

import numpy as np
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.analysis.router import FrameStatsPipeline, PipelineRegistry
from services.runtime.consumer import Consumer
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import N_FLATS, live_publisher, metric
from tests.sim import N_ENERGIES, energies, small_txm

SWAPPED, DUPLICATED, DROPPED = (3, 4), 5, 6


class DisorderlyBus:
    """Publishes a run as a flaky bus would deliver it: events 3 and 4 swapped, 5 twice, 6
    never, the descriptor after the first primary event, the stop before the last events."""

    def __init__(self, pub):
        self.pub = pub
        self.primary: set[str] = set()
        self.held: dict[int, dict] = {}
        self.descriptor = None
        self.early_event = None
        self.late: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        if name == "descriptor" and doc["name"] == "primary":
            self.primary.add(doc["uid"])
            self.descriptor = doc
            return
        if name == "event" and doc["descriptor"] in self.primary:
            seq = doc["seq_num"]
            if seq == 1:
                self.pub(name, doc)  # before its descriptor
                self.pub("descriptor", self.descriptor)
                return
            if seq == SWAPPED[0]:
                self.held[seq] = doc
                return
            if seq == DROPPED:
                return
            if seq >= N_ENERGIES - 1:
                self.late.append((name, doc))  # after the stop
                return
            self.pub(name, doc)
            if seq == SWAPPED[1]:
                self.pub(name, self.held.pop(SWAPPED[0]))
            if seq == DUPLICATED:
                self.pub(name, doc)
            return
        if name == "stop":
            self.pub(name, doc)
            for late in self.late:
                self.pub(*late)
            return
        self.pub(name, doc)


def test_disorderly_bus_run_is_ordered_counted_and_says_what_is_missing(
    consumer_settings, tiled_client
):
    settings, detector = consumer_settings
    registry = PipelineRegistry()
    registry.register("frames", lambda start: True, FrameStatsPipeline)
    raw, ana = Consumer("raw", settings), Consumer("analysis", settings, registry=registry)
    raw.start()
    ana.start()
    pub = live_publisher(settings, (raw, ana))
    try:
        RE = RunEngine({})
        RE.subscribe(DisorderlyBus(pub))
        (uid,) = RE(
            xanes_scan_plan(small_txm(detector, "stream", seed=12), energies(), n_flats=N_FLATS)
        )

        def frames_md():
            return tiled_client["analysis"][uid]["frames"].metadata

        wait_until(lambda: frames_md()["status"] != "running", timeout=120)
        # the frame of the lost Event is rebuilt from the detector file: every frame is in
        assert frames_md()["status"] == "complete", frames_md()
        stats = tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
        primary = stats[-N_ENERGIES:]
        # in order, but for the lost one: it is rebuilt once the run has ended
        assert primary["seq_num"].tolist() == [
            s for s in range(1, N_ENERGIES + 1) if s != DROPPED
        ] + [DROPPED]
        assert primary["recovered"].tolist() == [False] * (N_ENERGIES - 1) + [True]
        # the raw path cannot rebuild the lost Event's readings: it says so
        wait_until(lambda: "beamwatch_status" in tiled_client["raw"][uid].metadata, timeout=60)
        md = tiled_client["raw"][uid].metadata
        assert md["beamwatch_status"] == "incomplete"
        assert md["beamwatch_missing_seq_nums"] == {"primary": [DROPPED]}
        rows = tiled_client["raw"][uid]["primary"].base["internal"].read()
        assert rows["seq_num"].tolist() == [s for s in range(1, N_ENERGIES + 1) if s != DROPPED]
        np.testing.assert_allclose(rows["energy"].to_numpy(), np.delete(energies(), DROPPED - 1))
        for consumer in (raw, ana):
            assert metric(consumer, "beamwatch_messages_duplicated_total", kind="event") == 1
            assert metric(consumer, "beamwatch_messages_lost_total", kind="event") == 1
    finally:
        pub.close()
        raw.stop()
        ana.stop()
