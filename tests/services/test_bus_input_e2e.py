"""What Bluesky users send reaches Tiled: msgpack_numpy payloads, and Events with a bad field.

Real RunEngine, real bluesky 0MQ proxy, real consumers, real Tiled server.
"""

from __future__ import annotations

import copy

import msgpack
import msgpack_numpy
import numpy as np
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher

from bluesky_plans.plans import xanes_scan_plan
from services.bus.subscriber import wait_until_delivered
from services.core import serialization
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import (
    FLAT_FRAMES,
    N_FLATS,
    frames_status,
    metric,
    raw_frame_count,
    start_consumers,
)
from tests.sim import N_ENERGIES, energies, small_txm

IMAGE_KEY = "txm_cam_image"


def _publisher(settings, consumers, serializer):
    pub = Publisher(settings.bus.in_address, serializer=serializer)
    wait_until_delivered(
        lambda: pub("beamwatch_ping", {}),
        lambda: [
            metric(c, "beamwatch_messages_received_total", document="beamwatch_ping")
            for c in consumers
        ],
    )
    return pub


def _raw_rows(client, uid):
    return client["raw"][uid]["primary"].base["internal"].read()


def _published_images(docs):
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    return {
        d["seq_num"]: np.asarray(d["data"][IMAGE_KEY])
        for n, d in docs
        if n == "event" and d["descriptor"] in primary
    }


def test_msgpack_numpy_publisher_run_arrives_whole(consumer_settings, tiled_client):
    settings, detector = consumer_settings
    raw, ana = start_consumers(settings)
    pub = _publisher(
        settings, (raw, ana), lambda doc: msgpack.packb(doc, default=msgpack_numpy.encode)
    )
    try:
        RE = RunEngine({})
        RE.subscribe(pub)
        docs = []
        RE.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
        txm = small_txm(detector, "event", seed=3)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))

        wait_until(lambda: frames_status(tiled_client, uid) == "complete", timeout=90)
        wait_until(lambda: raw_frame_count(tiled_client, uid) == N_ENERGIES, timeout=60)
        rows = _raw_rows(tiled_client, uid)
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        np.testing.assert_allclose(np.sort(rows["energy"].to_numpy()), energies())
        published = _published_images(docs)
        images = tiled_client["raw"][uid]["primary"][IMAGE_KEY].read()
        np.testing.assert_array_equal(images, np.stack([published[s] for s in sorted(published)]))
        stats = tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        assert metric(raw, "beamwatch_messages_malformed_total", reason="payload") == 0
    finally:
        pub.close()
        raw.stop()
        ana.stop()


BAD_IMAGES = {
    2: np.zeros((1, 1, 96, 96), dtype=np.uint16),  # 4-D
    3: np.zeros((0, 96), dtype=np.uint16),  # zero-sized
    4: np.uint16(7),  # a scalar
    5: "not an image",  # a string
}


class CorruptingPublisher:
    """Publishes like bluesky's Publisher, with the image of chosen primary Events replaced."""

    def __init__(self, pub):
        self.pub = pub
        self.primary: set[str] = set()

    def __call__(self, name, doc):
        if name == "descriptor" and doc["name"] == "primary":
            self.primary.add(doc["uid"])
        if name == "event" and doc["descriptor"] in self.primary and doc["seq_num"] in BAD_IMAGES:
            doc = dict(doc, data=dict(doc["data"], **{IMAGE_KEY: BAD_IMAGES[doc["seq_num"]]}))
        self.pub(name, doc)


def test_an_event_with_a_bad_image_keeps_its_other_fields_and_the_run_goes_on(
    consumer_settings, tiled_client
):
    settings, detector = consumer_settings
    raw, ana = start_consumers(settings)
    pub = _publisher(settings, (raw, ana), serialization.dumps)
    try:
        RE = RunEngine({})
        RE.subscribe(CorruptingPublisher(pub))
        docs = []
        RE.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
        txm = small_txm(detector, "event", seed=4)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))

        wait_until(lambda: frames_status(tiled_client, uid) == "complete", timeout=90)
        wait_until(lambda: "beamwatch_bad_fields" in tiled_client["raw"][uid].metadata, timeout=60)
        run = tiled_client["raw"][uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        rows = _raw_rows(tiled_client, uid)
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        np.testing.assert_allclose(np.sort(rows["energy"].to_numpy()), energies())
        images = run["primary"][IMAGE_KEY].read()
        assert images.shape == (N_ENERGIES, 96, 96)
        published = _published_images(docs)
        for seq in range(1, N_ENERGIES + 1):
            if seq in BAD_IMAGES:  # a flagged stand-in, never a silently wrong frame
                assert not images[seq - 1].any()
            else:
                np.testing.assert_array_equal(images[seq - 1], published[seq])
        named = run.metadata["beamwatch_bad_fields"]
        assert sorted((b["seq_num"], b["data_key"]) for b in named) == [
            (s, IMAGE_KEY) for s in sorted(BAD_IMAGES)
        ]
        frames = tiled_client["analysis"][uid]["frames"]
        assert sorted(b["seq_num"] for b in frames.metadata["bad_fields"]) == sorted(BAD_IMAGES)
        stats = frames["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES - len(BAD_IMAGES)
        assert set(stats["seq_num"][-(N_ENERGIES - len(BAD_IMAGES)) :]) == (
            set(range(1, N_ENERGIES + 1)) - set(BAD_IMAGES)
        )
        for consumer in (raw, ana):
            dropped = sum(
                metric(consumer, "beamwatch_event_fields_dropped_total", problem=p)
                for p in ("shape", "type", "dtype", "undecodable")
            )
            assert dropped == len(BAD_IMAGES), consumer.role
    finally:
        pub.close()
        raw.stop()
        ana.stop()
