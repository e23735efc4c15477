"""After-scan stages run off the dispatch thread; latency counts from arrival on the bus."""

from __future__ import annotations

import threading

from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.analysis.router import FrameStatsPipeline, PipelineRegistry
from services.core.metrics import Metrics
from services.runs.routing import RunDispatcher, RunRouter
from services.runtime.consumer import Consumer
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import FLAT_FRAMES, N_FLATS, live_publisher
from tests.sim import N_ENERGIES, energies, small_txm


class LongAfterScanStage:
    """Stands in for a tomogram's reconstruction: its after-scan stage holds until released."""

    name = "slow"
    version = "1"

    def __init__(self, start, started, release):
        self.parameters = {}
        self._started, self._release = started, release

    def on_frame(self, frame, out):
        pass

    def on_stop(self, stop, out):
        self._started.set()
        assert self._release.wait(120), "never released"
        out.metadata({"stage_done": True})


def test_a_scan_runs_live_while_the_previous_runs_after_scan_stage_is_busy(
    consumer_settings, tiled_client
):
    settings, detector = consumer_settings
    started, release = threading.Event(), threading.Event()
    registry = PipelineRegistry()
    registry.register("frames", lambda start: True, FrameStatsPipeline)
    registry.register(
        "slow",
        lambda start: start.get("slow", False),
        lambda start: LongAfterScanStage(start, started, release),
    )
    ana = Consumer("analysis", settings, registry=registry)
    ana.start()
    pub = live_publisher(settings, (ana,))
    try:
        RE = RunEngine({})
        RE.subscribe(pub)
        (first,) = RE(
            xanes_scan_plan(small_txm(detector, "stream", seed=9), energies(), n_flats=N_FLATS),
            slow=True,
        )
        assert started.wait(60)
        (second,) = RE(
            xanes_scan_plan(small_txm(detector, "stream", seed=10), energies(), n_flats=N_FLATS)
        )

        def status(uid, pipeline="frames"):
            return tiled_client["analysis"][uid][pipeline].metadata["status"]

        # The second run is processed to the end while the first run's stage still holds.
        wait_until(lambda: status(second) == "complete", timeout=90)
        assert not release.is_set() and status(first, "slow") == "running"
        stats = tiled_client["analysis"][second]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        assert ana.after_scan_depth() == 1
        release.set()
        wait_until(lambda: status(first, "slow") == "complete", timeout=60)
        assert tiled_client["analysis"][first]["slow"].metadata["stage_done"] is True
    finally:
        release.set()
        pub.close()
        ana.stop()


def test_frames_are_timed_from_their_arrival_on_the_bus():
    import numpy as np

    from services.analysis.router import AnalysisRunRouter, RegistryEntry
    from services.runs.frames import Frame

    received: list[Frame] = []

    class Probe:
        name, version, parameters = "probe", "1", {}

        def on_frame(self, frame, out):
            received.append(frame)

        def on_stop(self, stop, out):
            pass

    class NullSpool:
        def put(self, record):
            pass

    metrics = Metrics("t")
    entry = RegistryEntry("probe", lambda s: True, lambda s: Probe())

    def factory(start) -> RunRouter:
        return AnalysisRunRouter(start, [entry], NullSpool(), metrics)

    dispatcher = RunDispatcher([factory], metrics)
    dispatcher("start", {"uid": "r1", "time": 0}, received=1.0)
    keys = {"img": {"shape": [2, 2], "dtype": "array", "source": "s"}}
    dispatcher("descriptor", {"uid": "d1", "run_start": "r1", "data_keys": keys}, received=2.0)
    event = {
        "descriptor": "d1",
        "seq_num": 1,
        "time": 0,
        "data": {"img": np.ones((2, 2))},
        "timestamps": {"img": 0},
    }
    dispatcher("event", event, received=123.5)
    assert [f.received for f in received] == [123.5]
