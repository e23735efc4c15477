"""Runs published by a real RunEngine through a real proxy reach a real Tiled server."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher

from bluesky_plans.plans import xanes_scan_plan
from services.bus.subscriber import wait_until_delivered
from services.core import serialization
from services.runtime.consumer import Consumer
from tests.conftest import TiledProcess, free_port, wait_until
from tests.sim import N_ENERGIES, energies, small_txm

N_FLATS = 2
FLAT_FRAMES = 2 * N_FLATS  # flats at the first and last energy


def metric(consumer: Consumer, name: str, **labels) -> float:
    return (
        consumer.metrics.registry.get_sample_value(name, {"service": consumer.role, **labels})
        or 0.0
    )


def start_consumers(settings):
    raw, ana = Consumer("raw", settings), Consumer("analysis", settings)
    raw.start()
    ana.start()
    return raw, ana


def live_publisher(settings, consumers):
    pub = Publisher(settings.bus.in_address, serializer=serialization.dumps)
    wait_until_delivered(
        lambda: pub("beamwatch_ping", {}),
        lambda: [
            metric(c, "beamwatch_messages_received_total", document="beamwatch_ping")
            for c in consumers
        ],
    )
    return pub


@pytest.fixture
def stack(consumer_settings):
    settings, detector = consumer_settings
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    yield SimpleNamespace(raw=raw, ana=ana, settings=settings, detector=detector, pub=pub)
    pub.close()
    raw.stop()
    ana.stop()


def frames_status(client, uid):
    node = client["analysis"][uid]["frames"]
    return node.metadata.get("status")


def raw_images(client, uid, stream="primary", key="txm_cam_image"):
    return client["raw"][uid][stream][key].read()


def raw_frame_count(client, uid, stream="primary", key="txm_cam_image"):
    """Number of frames registered so far (structure only; reading a growing array retries)."""
    return client["raw"][uid][stream][key].shape[0]


@pytest.mark.parametrize(
    ("source", "tiled_server"),
    # every frame source on the embedded Tiled; on the production one (deploy/tiled/config.yml:
    # PostgreSQL, Redis) the detector-file stream, which writes raw rows, registered frames and
    # analysis tables alike, to keep the added run time small
    [("stream", "embedded"), ("resource", "embedded"), ("event", "embedded")]
    + [("stream", "production")],
    indirect=["tiled_server"],
)
def test_run_appears_in_tiled_with_every_frame(stack, tiled_client, source):
    txm = small_txm(stack.detector, source)
    RE = RunEngine({})
    RE.subscribe(stack.pub)
    written = []
    RE.subscribe(lambda name, doc: written.append((name, doc)))
    (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))

    wait_until(lambda: frames_status(tiled_client, uid) == "complete", timeout=90)
    wait_until(lambda: raw_frame_count(tiled_client, uid) == N_ENERGIES, timeout=60)
    images = raw_images(tiled_client, uid)
    assert images.shape == (N_ENERGIES, 96, 96)
    run = tiled_client["raw"][uid]
    assert run.metadata["start"]["uid"] == uid and run.metadata["stop"]["exit_status"] == "success"
    table = run["primary"].base["internal"].read()
    np.testing.assert_allclose(np.sort(table["energy"].to_numpy()), energies())
    stats = tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
    assert len(stats) == N_ENERGIES + FLAT_FRAMES
    primary_means = stats["mean"].to_numpy()[-N_ENERGIES:]
    np.testing.assert_allclose(
        primary_means, images.reshape(N_ENERGIES, -1).mean(axis=1), rtol=1e-9
    )
    assert metric(stack.raw, "beamwatch_messages_lost_total", kind="event") == 0
    # nothing was lost: the run never entered recovery (no wait for raw/, recovery_timeout)
    assert metric(stack.ana, "beamwatch_recoveries_total") == 0
    assert tiled_client["analysis"][uid]["frames"].metadata["recovery_entered"] is False


def test_pickled_and_garbage_payloads_only_bump_the_malformed_counter(stack, tiled_client):
    import pickle

    import zmq

    before = set(tiled_client["raw"]) if "raw" in tiled_client else set()
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.connect(stack.settings.bus.in_address)
    try:

        def send_bad():
            sock.send(b" start " + pickle.dumps({"uid": "evil", "time": 0}))
            sock.send(b"garbage-without-spaces")

        wait_until(
            lambda: (
                send_bad()
                or metric(stack.raw, "beamwatch_messages_malformed_total", reason="pickle") > 0
            ),
            timeout=20,
        )
    finally:
        sock.close(0)
    # both consumers got the same messages; the analysis one may count them a moment later
    wait_until(lambda: metric(stack.ana, "beamwatch_messages_malformed_total", reason="pickle") > 0)
    wait_until(
        lambda: metric(stack.raw, "beamwatch_messages_malformed_total", reason="framing") > 0
    )
    assert metric(stack.raw, "beamwatch_messages_received_total", document="start") == 0
    after = set(tiled_client["raw"]) if "raw" in tiled_client else set()
    assert after == before
    assert stack.raw._threads[0].is_alive() and stack.raw._threads[1].is_alive()


class DroppingPublisher:
    """Publishes like bluesky's Publisher but loses chosen documents on purpose."""

    def __init__(self, pub, drop):
        self.pub = pub
        self.drop = drop
        self.dropped = []
        self._primary = set()

    def __call__(self, name, doc):
        if name == "descriptor" and doc.get("name") == "primary":
            self._primary.add(doc["uid"])
        if self.drop(name, doc, self._primary):
            self.dropped.append(name)
            return
        self.pub(name, doc)


def test_lost_documents_are_counted_and_frames_recovered(consumer_settings, tiled_client):
    settings, detector = consumer_settings
    settings.run_idle_timeout = 3.0
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    try:

        def drop(name, doc, primary):
            if name in ("start", "stop"):
                return True
            if name == "event" and doc["descriptor"] in primary and doc["seq_num"] == 3:
                return True
            return (
                name == "stream_datum"
                and doc["descriptor"] in primary
                and doc["indices"]["start"] == 5
            )

        dropping = DroppingPublisher(pub, drop)
        txm = small_txm(detector, "stream", seed=1)
        RE = RunEngine({})
        RE.subscribe(dropping)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))
        assert sorted(dropping.dropped) == ["event", "start", "stop", "stream_datum"]

        # the start is lost on both consumers: raw/ holds a stand-in, so which pipelines the
        # run wanted is unknown and it never says complete, though every frame is in
        wait_until(lambda: frames_status(tiled_client, uid) == "incomplete", timeout=90)
        wait_until(lambda: raw_frame_count(tiled_client, uid) == N_ENERGIES, timeout=60)
        frames_md = tiled_client["analysis"][uid]["frames"].metadata
        assert frames_md["start_lost"] is True and frames_md["missing_seq_nums"] == {}
        for consumer in (raw, ana):
            for kind in ("start", "event", "stream_datum", "stop"):
                assert metric(consumer, "beamwatch_messages_lost_total", kind=kind) >= 1, (
                    consumer.role,
                    kind,
                )
        assert metric(raw, "beamwatch_messages_recovered_total", kind="stream_datum") == 1
        assert metric(ana, "beamwatch_messages_recovered_total", kind="event") == 1
        assert metric(ana, "beamwatch_recoveries_total") == 1

        stats = tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES  # no frame silently skipped
        assert stats["recovered"].sum() == 1
        md = tiled_client["analysis"][uid]["frames"].metadata
        assert md["stop_lost"] is True
        assert tiled_client["raw"][uid].metadata["stop"]["exit_status"] == "fail"
        # the image recovered through the rebuilt StreamDatum equals the file's frame
        with __import__("h5py").File(txm.camera.path, "r", swmr=True) as fh:
            np.testing.assert_array_equal(raw_images(tiled_client, uid), fh["/entry/data/data"][()])
    finally:
        pub.close()
        raw.stop()
        ana.stop()


def test_tiled_restart_mid_run_loses_nothing(tmp_path, proxy):
    from services.core.settings import load_settings

    server = TiledProcess(tmp_path / "tiled-restart")
    server.start()
    settings = load_settings(
        data_dir=str(tmp_path / "consumers"),
        tiled={
            "url": server.url,
            "api_key": server.api_key,
            "readable_roots": [str(server.settings.detector_dir)],
        },
        bus={
            "mode": "zmq",
            "in_address": proxy.in_address,
            "out_address": proxy.out_address,
            "feedback_address": f"tcp://127.0.0.1:{free_port()}",
        },
        retry_max_backoff=0.5,
    )
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    try:
        import bluesky.plan_stubs as bps

        def outage(i, energy):
            if i == 2:
                server.stop()
            if i == 5:
                wait_until(lambda: raw.spool.depth() > 0 and ana.spool.depth() > 0, timeout=30)
                server.start()
            yield from bps.null()

        txm = small_txm(server.settings.detector_dir, "stream", seed=2)
        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS, before_point=outage))
        client = server.client()
        wait_until(lambda: frames_status(client, uid) == "complete", timeout=180)
        wait_until(lambda: raw_frame_count(client, uid) == N_ENERGIES, timeout=60)
        stats = client["analysis"][uid]["frames"]["frame_stats"].read()
        assert sorted(stats["seq_num"].tolist()[-N_ENERGIES:]) == list(range(1, N_ENERGIES + 1))
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        assert len(client["raw"][uid]["primary"].base["internal"].read()) == N_ENERGIES
        # writes were held in the on-disk spool during the outage (checked in the hook) and
        # every one of them has been replayed since
        wait_until(lambda: raw.spool.depth() == 0 and ana.spool.depth() == 0, timeout=60)
        assert not list(settings.spool_dir.glob("*/*.msgpack"))
        # the runs' journals go once they are finished and written
        wait_until(lambda: not list(settings.spool_dir.glob("*/runs/*.msgpack")), timeout=30)
        client.context.close()
    finally:
        pub.close()
        raw.stop()
        ana.stop()
        server.stop()
