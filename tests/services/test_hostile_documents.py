"""Untrusted documents stay untrusted: hostile identifiers never become paths or Tiled keys."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from bluesky import RunEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bluesky_plans.plans import xanes_scan_plan
from services.core import serialization
from services.core.identifiers import InvalidIdentifier, confined_path
from services.core.metrics import Metrics
from services.runs.routing import RunDispatcher, RunRouter
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import (
    FLAT_FRAMES,
    N_FLATS,
    frames_status,
    live_publisher,
    metric,
    raw_frame_count,
    start_consumers,
)
from tests.sim import N_ENERGIES, energies, small_txm


def test_confined_path_refuses_escapes(tmp_path):
    assert confined_path(tmp_path, "run-1") == tmp_path.resolve() / "run-1"
    for part in ("../x", "/etc", "a/../../b", ".."):
        with pytest.raises(InvalidIdentifier, match="leaves"):
            confined_path(tmp_path, part)


hostile_text = st.one_of(
    st.sampled_from(["../../etc", "/tmp/x", "..", ".", "a/b", "", " ", "x" * 5000, "\x00"]),
    st.text(max_size=50),
)
hostile_value = st.one_of(
    hostile_text, st.integers(), st.none(), st.lists(st.integers(), max_size=3), st.floats()
)
document_names = st.sampled_from(sorted(serialization.DOCUMENT_NAMES))
hostile_doc = st.dictionaries(
    st.sampled_from(
        [
            "uid",
            "run_start",
            "descriptor",
            "seq_num",
            "name",
            "data",
            "data_keys",
            "resource",
            "stream_resource",
            "datum_id",
            "indices",
            "timestamps",
            "time",
            "data_key",
        ]
    ),
    st.one_of(hostile_value, st.dictionaries(hostile_text, hostile_value, max_size=3)),
    max_size=8,
)


class Recorder(RunRouter):
    def __init__(self, seen):
        self.seen = seen

    def start(self, doc):
        self.seen.append(("start", doc["uid"]))

    def event(self, doc):
        self.seen.append(("event", doc["seq_num"]))

    def stop(self, doc):
        self.seen.append(("stop", doc["run_start"] if doc else None))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(document_names, hostile_doc), max_size=30))
def test_hostile_documents_never_reach_a_router_with_a_bad_uid_and_a_valid_run_follows(docs):
    seen: list = []
    dispatcher = RunDispatcher([lambda start: Recorder(seen)], Metrics("fuzz"))
    for name, doc in docs:
        dispatcher(name, doc)  # never raises
    for kind, uid in seen:
        if kind == "start":
            confined_path(__import__("pathlib").Path("/srv/data"), uid)  # a safe path part
    seen.clear()
    dispatcher("start", {"uid": "valid-run-1", "time": 0})
    keys = {"e": {"shape": [], "dtype": "number", "source": "sim"}}
    dispatcher("descriptor", {"uid": "valid-d", "run_start": "valid-run-1", "data_keys": keys})
    for seq in (1, 2, 3):
        dispatcher(
            "event",
            {
                "descriptor": "valid-d",
                "seq_num": seq,
                "time": 0,
                "data": {"e": 1.0},
                "timestamps": {"e": 0},
            },
        )
    dispatcher("stop", {"run_start": "valid-run-1", "uid": "s", "time": 1})
    assert seen == [
        ("start", "valid-run-1"),
        ("event", 1),
        ("event", 2),
        ("event", 3),
        ("stop", "valid-run-1"),
    ]


def _hostile_messages(outside):
    """Path-like uids and keys, huge strings, wrong types, events before descriptors, dupes."""
    xanes = {
        "plan_name": "xanes_scan_plan",
        "time": 0.0,
        "beamwatch_pipelines": ["xanes", "frames"],
    }
    escape = f"../../../../../../{outside}/escape"
    docs = [
        ("start", {"uid": escape, **xanes}),
        ("start", {"uid": str(outside / "absolute"), **xanes}),
        ("start", {"uid": "u" * 200_000, **xanes}),
        ("start", {"uid": 12345, **xanes}),
        ("start", {**xanes}),
        ("descriptor", {"uid": "d-evil", "run_start": escape, "name": "primary", "data_keys": {}}),
        (
            "descriptor",
            {"uid": "d-evil2", "run_start": "phantom-1", "name": "../../x", "data_keys": {}},
        ),
        (
            "descriptor",
            {
                "uid": "d-evil3",
                "run_start": "phantom-1",
                "name": "primary",
                "data_keys": {"../evil": {"shape": [], "dtype": "number"}},
            },
        ),
        ("descriptor", {"uid": "d-evil4", "run_start": "phantom-1", "data_keys": "x"}),
        (
            "event",
            {
                "descriptor": "never-described",
                "seq_num": 1,
                "time": 0,
                "data": {},
                "timestamps": {},
            },
        ),
        ("event", {"descriptor": "d-evil", "seq_num": "1", "time": 0, "data": {}}),
        (
            "event_page",
            {
                "descriptor": "d-evil",
                "seq_num": [1, 2],
                "time": [0],
                "data": {"e": [1]},
                "timestamps": {"e": [0]},
                "uid": ["a"],
            },
        ),
        (
            "stream_resource",
            {
                "uid": "sr",
                "run_start": escape,
                "data_key": "img",
                "uri": "file:///etc/passwd",
                "mimetype": "application/x-hdf5",
            },
        ),
        ("datum", {"datum_id": "../../x", "resource": "r"}),
        ("stop", {"run_start": "never-started", "uid": "s1", "time": 0}),
        ("stop", {"run_start": escape, "uid": "s2", "time": 0}),
    ]
    return [serialization.format_bus_message(n, d) for n, d in docs]


def test_hostile_documents_then_a_valid_run_completes(
    consumer_settings, tiled_client, tmp_path_factory
):
    settings, detector = consumer_settings
    outside = tmp_path_factory.mktemp("outside")
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.connect(settings.bus.in_address)
    try:
        messages = _hostile_messages(outside)

        def hostile_seen():
            return all(
                metric(c, "beamwatch_messages_malformed_total", reason="identifier") >= 6
                for c in (raw, ana)
            )

        # PUB/SUB may drop the first messages of a new socket: send until both counted some.
        wait_until(lambda: [sock.send(m) for m in messages] and hostile_seen(), timeout=30)
        txm = small_txm(detector, "stream", seed=5)
        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))
        wait_until(lambda: frames_status(tiled_client, uid) == "complete", timeout=120)
        wait_until(lambda: raw_frame_count(tiled_client, uid) == N_ENERGIES, timeout=60)
        rows = tiled_client["raw"][uid]["primary"].base["internal"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        stats = tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES

        def xanes_status():
            return tiled_client["analysis"][uid]["xanes"].metadata["status"]

        wait_until(lambda: xanes_status() in ("complete", "failed"), timeout=180)
        assert xanes_status() == "complete"
        assert not list(outside.rglob("*")), "a hostile document wrote outside the data dir"
        figures = settings.data_dir / "figures"
        assert {p.name for p in figures.iterdir()} <= {uid}
        for consumer in (raw, ana):
            assert all(t.is_alive() for t in consumer._threads), consumer.role
        assert not any(k.startswith("u" * 100) for k in tiled_client["raw"])
        np.testing.assert_allclose(np.sort(rows["energy"].to_numpy()), energies())
    finally:
        sock.close(0)
        pub.close()
        raw.stop()
        ana.stop()
