"""SIGKILL of a consumer mid-run under ``beamwatch up``: the restarted child resumes the run
from its journal and the run ends with every row and frame exactly once.

On the 0MQ bus the journal is all there is; on JetStream (``bus.mode: nats``) the restarted
consumer takes its run's claim back after ``nats.ack_wait``, replays its journal and reads the
stream from its last acknowledged document on (it never receives the whole run again)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import bluesky.plan_stubs as bps
import h5py
import httpx
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from tiled.client import from_uri

from bluesky_plans.plans import xanes_scan_plan
from services.core import serialization
from tests.conftest import UpProcess, wait_until
from tests.services.test_ingest_e2e import FLAT_FRAMES, N_FLATS
from tests.services.test_up_e2e import children_of, scrape, value
from tests.sim import N_ENERGIES, energies, small_txm

KILL_AT = 4  # before the 5th energy point: 4 frames of 8 are in


def _child(up, role):
    for pid in children_of(up.proc.pid):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"consume" in cmd and role.encode() in cmd:
            return pid
    return None


def _pinged(up, pub, role):
    pub("beamwatch_ping", {})
    samples = scrape(up.metrics[role])
    return value(samples, "beamwatch_messages_received_total", document="beamwatch_ping") > 0


# The analysis role on JetStream is killed mid-run in test_jetstream_workers.py (a worker
# process; another one finishes the run); the production Tiled (deploy/, PostgreSQL + Redis)
# is exercised by the JetStream case, which keeps this slow test to three cases.
@pytest.mark.parametrize(
    ("role", "mode", "up_tiled"),
    [("raw", "zmq", "embedded"), ("analysis", "zmq", "embedded"), ("raw", "nats", "production")],
    indirect=["up_tiled"],
)
def test_a_consumer_killed_mid_run_resumes_it_with_every_frame(tmp_path, role, mode, up_tiled):
    up = UpProcess(tmp_path, up_tiled, BEAMWATCH_BUS__MODE=mode, BEAMWATCH_NATS__ACK_WAIT="3")
    pub = Publisher(up.in_address, serializer=serialization.dumps)
    client = from_uri(up.tiled, api_key=up.api_key())
    try:
        for r in ("raw", "analysis"):
            wait_until(lambda r=r: _pinged(up, pub, r), timeout=60, interval=0.05)
        run = {}

        def primary_rows_in_tiled():
            uid = run["uid"]
            if role == "raw":
                return len(client["raw"][uid]["primary"].base["internal"].read())
            stats = client["analysis"][uid]["frames"]["frame_stats"].read()
            return len(stats) - N_FLATS  # flats of the first energy come first

        def kill_mid_run(i, energy):
            if i == KILL_AT:
                # everything published so far is through the consumer, then it dies
                wait_until(lambda: primary_rows_in_tiled() >= KILL_AT, timeout=60)
                old = _child(up, role)
                os.kill(old, signal.SIGKILL)
                wait_until(lambda: _child(up, role) not in (None, old), timeout=60)
                wait_until(lambda: _pinged(up, pub, role), timeout=60, interval=0.05)
            yield from bps.null()

        RE = RunEngine({})
        RE.subscribe(pub)
        RE.subscribe(lambda name, doc: run.setdefault("uid", doc["uid"]), "start")
        txm = small_txm(up.detector_dir, "stream", seed=11)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS, before_point=kill_mid_run))

        def frames_status():
            return client["analysis"][uid]["frames"].metadata["status"]

        wait_until(lambda: frames_status() == "complete", timeout=180)
        wait_until(
            lambda: client["raw"][uid]["primary"]["txm_cam_image"].shape[0] == N_ENERGIES, 120
        )
        raw = client["raw"][uid]
        wait_until(lambda: "stop" in client["raw"][uid].metadata, timeout=60)
        assert client["raw"][uid].metadata["stop"]["exit_status"] == "success"
        rows = raw["primary"].base["internal"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        np.testing.assert_allclose(np.sort(rows["energy"].to_numpy()), energies())
        with h5py.File(txm.camera.path, "r", swmr=True) as fh:
            np.testing.assert_array_equal(
                raw["primary"]["txm_cam_image"].read(), fh["/entry/data/data"][()]
            )
        stats = client["analysis"][uid]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        primary = stats[-N_ENERGIES:]
        assert sorted(primary["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        restarts = value(
            scrape(f"http://127.0.0.1:{up.ports['supervisor']}/metrics"),
            "beamwatch_child_restarts_total",
        )
        assert restarts >= 1
        if mode == "nats":
            # the new process got only what the killed one had not acknowledged
            received = value(
                scrape(up.metrics[role]), "beamwatch_messages_received_total", document="event"
            )
            assert 0 < received <= N_ENERGIES + FLAT_FRAMES - KILL_AT
    finally:
        client.context.close()
        pub.close()
        up.stop()


def _bridge(up, instance):
    for pid in children_of(up.proc.pid):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"bridge" in cmd and (b"--instance" in cmd) == (instance > 1):
            return pid
    return None


def _bridge_pinged(up, pub, instance):
    pub("beamwatch_ping", {})
    try:
        samples = scrape(f"http://127.0.0.1:{up.ports['bridge'] + instance - 1}/metrics")
    except httpx.HTTPError:
        return False
    return value(samples, "beamwatch_messages_received_total", document="beamwatch_ping") > 0


def test_a_bridge_killed_mid_run_loses_nothing_while_the_other_bridge_runs(tmp_path):
    """``up`` on the JetStream bus runs two bridges on the proxy. The first is SIGKILLed mid-run
    and the scan goes on at once: what the proxy sends while it is dead (and what its socket
    held) is lost to it, not to the run; the second bridge's copy is in the stream, and the
    run ends complete with every row and frame exactly once. With one bridge the rest of the
    scan would be lost (0MQ keeps nothing for a subscriber that is down)."""
    up = UpProcess(tmp_path, None, BEAMWATCH_BUS__MODE="nats", BEAMWATCH_NATS__ACK_WAIT="3")
    pub = Publisher(up.in_address, serializer=serialization.dumps)
    client = from_uri(up.tiled, api_key=up.api_key())
    try:
        for r in ("raw", "analysis"):
            wait_until(lambda r=r: _pinged(up, pub, r), timeout=60, interval=0.05)
        for instance in (1, 2):
            wait_until(lambda i=instance: _bridge_pinged(up, pub, i), timeout=60, interval=0.05)
        run = {}
        killed = []

        def kill_mid_run(i, energy):
            if i == KILL_AT:
                uid = run["uid"]
                wait_until(
                    lambda: len(client["raw"][uid]["primary"].base["internal"].read()) >= KILL_AT,
                    timeout=60,
                )
                killed.append(_bridge(up, 1))
                os.kill(killed[0], signal.SIGKILL)  # and the scan goes on at once
            yield from bps.null()

        RE = RunEngine({})
        RE.subscribe(pub)
        RE.subscribe(lambda name, doc: run.setdefault("uid", doc["uid"]), "start")
        txm = small_txm(up.detector_dir, "stream", seed=13)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS, before_point=kill_mid_run))
        assert killed and killed[0] is not None

        wait_until(lambda: client["analysis"][uid]["frames"].metadata["status"] == "complete", 180)
        wait_until(lambda: client["raw"][uid].metadata.get("beamwatch_status") == "complete", 120)
        raw = client["raw"][uid]
        rows = raw["primary"].base["internal"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        with h5py.File(txm.camera.path, "r", swmr=True) as fh:
            np.testing.assert_array_equal(
                raw["primary"]["txm_cam_image"].read(), fh["/entry/data/data"][()]
            )
        stats = client["analysis"][uid]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        assert sorted(stats[-N_ENERGIES:]["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        wait_until(lambda: _bridge(up, 1) not in (None, killed[0]), timeout=60)  # restarted
    finally:
        client.context.close()
        pub.close()
        up.stop()
