"""After-scan stages run off the dispatch thread; latency counts from arrival on the bus."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.analysis.router import FrameStatsPipeline, PipelineRegistry
from services.core.metrics import Metrics
from services.runs.routing import RunDispatcher, RunRouter
from services.runtime.consumer import Consumer
from tests.conftest import wait_until
from tests.services.held_stage import held_consumer, held_station
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


class RecordedAfterScanStage:
    """Records when its after-scan stage starts and ends in ``order``; the run started with
    ``hold=True`` holds there until ``release`` is set."""

    name = "recorded"
    version = "1"

    def __init__(self, start, order, release):
        self.parameters = {}
        self._hold, self._order, self._release = start.get("hold", False), order, release

    def on_frame(self, frame, out):
        pass

    def on_stop(self, stop, out):
        self._order.append(("start", out.run_uid))
        if self._hold:
            assert self._release.wait(120), "never released"
        self._order.append(("end", out.run_uid))


@pytest.mark.parametrize("after_scan_workers", [1, 2])
def test_a_consumer_runs_at_most_after_scan_workers_stages_at_once(
    consumer_settings, tiled_client, after_scan_workers
):
    """``after_scan_workers`` bounds the after-scan stages a consumer runs at once (a node's
    CPU budget, ``benchmarks.worker_scaling --cpus-per-worker``): with 1, the next run's stage
    waits for the held one; with 2 it ends while the first still holds."""
    settings, detector = consumer_settings
    settings = settings.model_copy(update={"after_scan_workers": after_scan_workers})
    order: list[tuple[str, str]] = []
    release = threading.Event()
    registry = PipelineRegistry()
    registry.register("frames", lambda start: True, FrameStatsPipeline)
    registry.register(
        "recorded", lambda start: True, lambda start: RecordedAfterScanStage(start, order, release)
    )
    ana = Consumer("analysis", settings, registry=registry)
    ana.start()
    pub = live_publisher(settings, (ana,))
    try:
        RE = RunEngine({})
        RE.subscribe(pub)

        def scan(seed, **md):
            txm = small_txm(detector, "stream", seed=seed)
            plan = xanes_scan_plan(txm, energies(), n_flats=N_FLATS)
            (uid,) = RE(plan, **md)
            return uid

        def status(uid, pipeline="recorded"):
            return tiled_client["analysis"][uid][pipeline].metadata["status"]

        def frame_stats(uid):
            return tiled_client["analysis"][uid]["frames"]["frame_stats"].read()

        first = scan(9, hold=True)
        wait_until(lambda: ("start", first) in order, timeout=60)
        second = scan(10)
        if after_scan_workers == 1:
            # the second run's stage is queued behind the held one, not started
            wait_until(lambda: ana.after_scan_depth() == 2, timeout=90)
            assert order == [("start", first)]
            # its live frames are in, but its end (statuses, the stages) waits
            wait_until(lambda: len(frame_stats(second)) == N_ENERGIES + FLAT_FRAMES, timeout=60)
            assert status(second, "frames") == "running" and order == [("start", first)]
            release.set()
            wait_until(lambda: status(second) == "complete", timeout=60)
            assert order == [("start", first), ("end", first), ("start", second), ("end", second)]
        else:
            wait_until(lambda: status(second) == "complete", timeout=90)
            assert order == [("start", first), ("start", second), ("end", second)]
            release.set()
        wait_until(lambda: status(first) == "complete", timeout=60)
    finally:
        release.set()
        pub.close()
        ana.stop()


def test_a_scan_runs_live_while_a_stage_runs_in_its_child_process(
    consumer_settings, tiled_client, tmp_path
):
    """The after-scan stage in a child process (as a tomogram's): the next scan's frames are
    analysed to the end while it holds; its writes, a 12 MB array among them, reach Tiled."""
    import numpy as np

    settings, _detector = consumer_settings
    with held_station(consumer_settings, tmp_path / "files") as station:
        first = station.scan(9, held=True)
        wait_until(lambda: (station.files / "started").exists(), timeout=120)
        pid = station.started_pid()
        assert pid != os.getpid() and station.child.running() == 1
        second = station.scan(10)

        def status(uid, pipeline="frames"):
            return tiled_client["analysis"][uid][pipeline].metadata["status"]

        wait_until(lambda: status(second) == "complete", timeout=90)
        assert status(first, "held") == "running" and status(first, "second") == "queued"
        stats = tiled_client["analysis"][second]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        station.release()
        wait_until(lambda: status(first, "held") == "complete", timeout=60)
        held = tiled_client["analysis"][first]["held"]
        assert held.metadata["stage_done"] is True and held.metadata["pid"] == pid
        assert status(first, "second") == "complete"
        big = held["big"].read()
        assert np.array_equal(big, np.arange(12_000 * 256, dtype=np.float32).reshape(-1, 256))
        assert held["grown"].read().tolist() == [[1, 1, 1], [1, 1, 1]]
        assert station.consumer.wait_idle(30)
        # the stage's files went with it, the spooled array with its applied record
        assert list((settings.spool_dir / "analysis" / "stages").iterdir()) == []
        assert list((settings.spool_dir / "analysis" / "arrays").iterdir()) == []


def test_a_killed_stage_child_fails_its_stages_and_the_consumer_goes_on(
    consumer_settings, tiled_client, tmp_path
):
    """SIGKILL of a stage's child process (as the kernel's out-of-memory killer would): the
    stage and the second stage it had announced end ``failed`` naming the signal, the
    consumer analyses the next scan, and the stage's files are removed."""
    settings, _detector = consumer_settings
    with held_station(consumer_settings, tmp_path / "files") as station:
        first = station.scan(9, held=True)
        wait_until(lambda: (station.files / "started").exists(), timeout=120)
        os.kill(station.started_pid(), signal.SIGKILL)

        def metadata(uid, pipeline):
            return tiled_client["analysis"][uid][pipeline].metadata

        wait_until(lambda: metadata(first, "held")["status"] == "failed", timeout=60)
        error = metadata(first, "held")["error"]
        assert error.startswith("StageChildDied: ") and "SIGKILL" in error, error
        assert metadata(first, "second")["status"] == "failed"
        assert "SIGKILL" in metadata(first, "second")["error"]
        assert metadata(first, "frames")["status"] == "complete"  # not the child's
        second = station.scan(10)
        wait_until(lambda: metadata(second, "frames")["status"] == "complete", timeout=90)
        assert station.child.running() == 0 and station.consumer.dead_workers() == []
        assert list((settings.spool_dir / "analysis" / "stages").iterdir()) == []


def test_a_stage_error_in_the_child_fails_the_stage_with_it(
    consumer_settings, tiled_client, tmp_path
):
    with held_station(consumer_settings, tmp_path / "files", target="failing_stage") as station:
        uid = station.scan(9, held=True)

        def metadata():
            return tiled_client["analysis"][uid]["held"].metadata

        wait_until(lambda: metadata()["status"] == "failed", timeout=120)
        assert metadata()["started"] is True
        assert metadata()["error"] == (
            "StageChildError: ValueError: no particles in this volume"
        ), metadata()


def test_a_consumer_stopping_kills_its_stage_child_and_the_next_one_resumes_the_run(
    consumer_settings, tiled_client, tmp_path
):
    """Stopping the consumer mid-stage: its child is gone when ``stop`` returns (no orphan),
    the run is left open (not failed), and the next consumer replays it to the end."""
    settings, _detector = consumer_settings
    files = tmp_path / "files"
    with held_station(consumer_settings, files) as station:
        uid = station.scan(9, held=True)
        wait_until(lambda: (files / "started").exists(), timeout=120)
        pid = station.started_pid()
    # the station stopped its consumer, and with it the child, before releasing the stage
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert tiled_client["analysis"][uid]["held"].metadata["status"] == "running"
    (files / "started").unlink()
    again, _child = held_consumer(settings, files)
    again.start()  # replays the run from its journal, the stage included
    try:
        wait_until(
            lambda: tiled_client["analysis"][uid]["held"].metadata["status"] == "complete",
            timeout=120,
        )
        assert tiled_client["analysis"][uid]["held"].metadata["pid"] != pid
    finally:
        again.stop()


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


def test_a_scan_runs_live_while_the_start_of_a_lone_stop_is_looked_up_in_a_hanging_tiled(
    consumer_settings, tiled_server, tiled_client
):
    """A stop arrives of a run none of whose documents came (lost while the consumer was
    down): its start is looked up in Tiled, and Tiled hangs on that lookup (a proxy in front
    of the real server that gives no answer about that run; the client's timeout is far off).
    The next scan is analysed to the end meanwhile: the lookup is not on the dispatch thread.
    """
    import time
    import uuid

    from services.tiled.applier import ensure_container
    from tests.services.test_exactly_once import HangingProxy

    settings, detector = consumer_settings
    lone = str(uuid.uuid4())
    ensure_container(tiled_client, ["raw"])  # where the raw path keeps runs (looked up)
    with HangingProxy(tiled_server.url) as proxy:
        proxy.uid = lone
        tiled = settings.tiled.model_copy(update={"url": proxy.url, "request_timeout": 300.0})
        settings = settings.model_copy(update={"tiled": tiled})
        registry = PipelineRegistry()
        registry.register("frames", lambda start: True, FrameStatsPipeline)
        ana = Consumer("analysis", settings, registry=registry)
        ana.start()
        pub = live_publisher(settings, (ana,))
        try:
            stop = {
                "uid": str(uuid.uuid4()),
                "run_start": lone,
                "time": time.time(),
                "exit_status": "success",
                "num_events": {"primary": 3},
            }
            pub("stop", stop)
            assert proxy.first_held.wait(60)  # the lookup of its start hangs
            RE = RunEngine({})
            RE.subscribe(pub)
            (uid,) = RE(
                xanes_scan_plan(small_txm(detector, "stream", seed=11), energies(), n_flats=N_FLATS)
            )
            wait_until(
                lambda: tiled_client["analysis"][uid]["frames"].metadata["status"] == "complete",
                timeout=90,
            )
            stats = tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
            assert len(stats) == N_ENERGIES + FLAT_FRAMES
            assert proxy.held == 1  # the lookup is still waiting for its answer
        finally:
            proxy.release()
            pub.close()
            ana.stop()
    assert lone not in tiled_client["analysis"]  # no phantom run for a stop alone


def test_a_lone_stops_start_is_looked_up_off_the_dispatch_thread():
    """The dispatcher hands the lookup to ``defer`` and goes on with other runs' documents;
    the stop is routed when the start comes back."""
    from tests.services.test_routing import Recorder, docs

    metrics = Metrics("t")
    routers = []
    pending = []

    def factory(start):
        routers.append(Recorder(start))
        return routers[-1]

    dispatcher = RunDispatcher(
        [factory],
        metrics,
        recover_start=lambda uid: {"uid": uid, "time": 0.0},
        defer=lambda lookup, then: pending.append((lookup, then)),
    )
    _start, _desc, _events, lone_stop = docs("lone")
    dispatcher("stop", lone_stop)
    dispatcher("stop", lone_stop)  # the same stop again: one lookup
    assert len(pending) == 1 and routers == []
    start, desc, events, stop = docs("other")
    for name, doc in [("start", start), ("descriptor", desc)] + [("event", e) for e in events]:
        dispatcher(name, doc)
    dispatcher("stop", stop)
    assert [r.calls[0] for r in routers] == [("start", "other")]
    assert routers[0].calls[-1] == ("stop", False)
    lookup, then = pending.pop()
    then(lookup())  # on the dispatch thread, as the consumer does through its queue
    assert [r.calls for r in routers[1:]] == [[("start", "lone"), ("stop", False)]]


def test_the_stop_of_an_idle_run_is_looked_up_off_the_dispatch_thread():
    """An idle run's stop is looked for in ``raw/`` through ``defer``: meanwhile other runs
    are routed; the run is finished with the stop found (its lost Events then known)."""
    from tests.services.test_routing import Recorder, docs

    now = [0.0]
    routers = []
    pending = []
    metrics = Metrics("t")

    def factory(start):
        routers.append(Recorder(start))
        return routers[-1]

    idle_start, idle_desc, _events, idle_stop = docs("idle")
    dispatcher = RunDispatcher(
        [factory],
        metrics,
        recover_stop=lambda uid: {**idle_stop, "num_events": {"primary": 0}},
        defer=lambda lookup, then: pending.append((lookup, then)),
        idle_timeout=10.0,
        clock=lambda: now[0],
    )
    dispatcher("start", idle_start)
    dispatcher("descriptor", idle_desc)
    now[0] = 20.0
    dispatcher.sweep()
    dispatcher.sweep()  # looked up once
    assert len(pending) == 1 and dispatcher.open_runs == ["idle"]
    start, desc, events, stop = docs("other")
    for name, doc in [("start", start), ("descriptor", desc)] + [("event", e) for e in events]:
        dispatcher(name, doc)
    dispatcher("stop", stop)
    assert routers[1].calls[-1] == ("stop", False)  # the other run went through meanwhile
    lookup, then = pending.pop()
    then(lookup())
    assert dispatcher.open_runs == [] and routers[0].calls[-1] == ("stop", False)
