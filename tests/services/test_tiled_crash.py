"""SIGKILL of the embedded Tiled server mid-run under ``beamwatch up``: the supervisor restarts
it, the consumers hold their writes on disk until it answers again, and the run ends with every
raw row and analysis frame exactly once and a raw image array whose advertised shape is its
data (issue 14: a Tiled restart used to leave the array advertising 51 or 57 of 50 frames)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import bluesky.plan_stubs as bps
import h5py
import httpx
import numpy as np
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from tiled.client import from_uri

from bluesky_plans.plans import xanes_scan_plan
from services.core import serialization
from tests.conftest import UpProcess, wait_until
from tests.services.test_consumer_crash import _pinged
from tests.services.test_ingest_e2e import FLAT_FRAMES, N_FLATS
from tests.services.test_up_e2e import children_of, scrape, value
from tests.sim import N_ENERGIES, energies, small_txm

KILL_AT = N_ENERGIES - 1  # the plan waits for the kill before its last energy point


def _tiled_child(up: UpProcess) -> int | None:
    for pid in children_of(up.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"serve" in cmd and any(part.endswith(b"tiled") for part in cmd):
            return pid
    return None


def _tiled_answers(up: UpProcess) -> bool:
    return httpx.get(up.tiled + "/api/v1/", timeout=2).status_code == 200


def _tiled_down(up: UpProcess) -> bool:
    try:
        return not _tiled_answers(up)
    except httpx.TransportError:
        return True


def test_tiled_killed_mid_run_leaves_every_row_and_frame_once_and_readable(tmp_path):
    up = UpProcess(tmp_path)
    pub = Publisher(up.in_address, serializer=serialization.dumps)
    client = from_uri(up.tiled, api_key=up.api_key())
    killed: list[int] = []
    try:
        for r in ("raw", "analysis"):
            wait_until(lambda r=r: _pinged(up, pub, r), timeout=60, interval=0.05)
        run: dict[str, str] = {}

        def kill_once_rows_are_in() -> None:
            # runs beside the plan: as soon as the first rows are in Tiled it is killed, while
            # the consumers are still writing the frames published since
            try:
                wait_until(
                    lambda: len(client["raw"][run["uid"]]["primary"].base["internal"].read()) >= 2,
                    timeout=90,
                    interval=0.05,
                )
                old = _tiled_child(up)
                assert old is not None
                os.kill(old, signal.SIGKILL)
                killed.append(old)
            finally:
                kill_done.set()

        kill_done = threading.Event()
        killer = threading.Thread(target=kill_once_rows_are_in, daemon=True)

        def kill_tiled_mid_run(i, energy):
            if i == 1:
                killer.start()
            if i == KILL_AT:
                # the points since the first rows were published while the kill came; the last
                # one and the stop are published while Tiled is down or starting up again
                assert kill_done.wait(120)
                assert killed, "Tiled was not killed"
                wait_until(lambda: _tiled_down(up), timeout=30, interval=0.05)
            yield from bps.null()

        RE = RunEngine({})
        RE.subscribe(pub)
        RE.subscribe(lambda name, doc: run.setdefault("uid", doc["uid"]), "start")
        txm = small_txm(up.settings().detector_dir, "stream", seed=13)
        (uid,) = RE(
            xanes_scan_plan(txm, energies(), n_flats=N_FLATS, before_point=kill_tiled_mid_run)
        )
        assert killed, "the plan never reached the kill point"

        # the supervisor brings Tiled back (a new process) and the consumers catch up
        wait_until(lambda: _tiled_child(up) not in (None, killed[0]), timeout=60)
        wait_until(lambda: _tiled_answers(up), timeout=120)

        def frames_status():
            return client["analysis"][uid]["frames"].metadata["status"]

        wait_until(lambda: frames_status() == "complete", timeout=180)
        wait_until(lambda: "stop" in client["raw"][uid].metadata, timeout=120)
        wait_until(
            lambda: client["raw"][uid]["primary"]["txm_cam_image"].shape[0] == N_ENERGIES, 120
        )
        raw = client["raw"][uid]
        assert raw.metadata["stop"]["exit_status"] == "success"
        rows = raw["primary"].base["internal"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        np.testing.assert_allclose(np.sort(rows["energy"].to_numpy()), energies())
        flats = raw["flat"].base["internal"].read()["seq_num"].tolist()
        assert sorted(flats) == list(range(1, len(flats) + 1))

        # the advertised shape is the data: every frame reads back and equals the detector file
        images = raw["primary"]["txm_cam_image"]
        assert images.shape == (N_ENERGIES, 96, 96)
        with h5py.File(txm.camera.path, "r", swmr=True) as fh:
            truth = fh["/entry/data/data"][()]
        assert truth.shape == images.shape
        np.testing.assert_array_equal(images.read(), truth)
        for k in range(N_ENERGIES):
            np.testing.assert_array_equal(images[k], truth[k])

        stats = client["analysis"][uid]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        primary = stats[-N_ENERGIES:]
        assert sorted(primary["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        np.testing.assert_allclose(
            primary.sort_values("seq_num")["mean"].to_numpy(),
            truth.reshape(N_ENERGIES, -1).mean(axis=1),
            rtol=1e-9,
        )
        restarts = value(
            scrape(f"http://127.0.0.1:{up.ports['supervisor']}/metrics"),
            "beamwatch_child_restarts_total",
            child="tiled",
        )
        assert restarts >= 1
    finally:
        client.context.close()
        pub.close()
        up.stop()
