"""A consumer restarted after a crash replays its open runs' journals: the writes are made
again (idempotently), but what went out of the process the first time — drift feedback moves
and counted metrics — must not go out twice."""

from __future__ import annotations

import numpy as np
from bluesky import RunEngine
from event_model import compose_run
from prometheus_client import CollectorRegistry

from bluesky_plans.plans import xanes_scan_plan
from services.analysis import xanes_live
from services.analysis.router import PipelineRegistry
from services.core.metrics import Metrics
from services.core.settings import load_settings
from services.runtime.consumer import Consumer
from services.tiled import records
from tests.conftest import free_port
from tests.sim import N_ENERGIES, energies, small_txm


def _settings(tmp_path):
    return load_settings(
        data_dir=str(tmp_path / "data"),
        tiled={"url": f"http://127.0.0.1:{free_port()}", "api_key": "unused"},  # never reached
        bus={
            "mode": "zmq",
            "out_address": f"tcp://127.0.0.1:{free_port()}",
            "feedback_address": f"tcp://127.0.0.1:{free_port()}",
        },
    )


def _crash(consumer):
    """What a SIGKILL leaves: the journal and the spool on disk, nothing else (its after-scan
    stages are let finish first, so that nothing of it writes on afterwards)."""
    consumer._after_scan_pool.shutdown(wait=True)
    consumer.journal.close()
    consumer._bus.close()


def _replay(consumer):
    (uid,) = consumer.journal.runs()
    consumer.dispatcher.replay(uid, consumer.journal.documents(uid))
    return uid


def _counter(consumer, name, **labels):
    value = consumer.metrics.registry.get_sample_value(name, {"service": consumer.role, **labels})
    return value or 0.0


class FeedbackRecorder:
    def __init__(self):
        self.messages = []

    def publish(self, message):
        self.messages.append(message)


def _xanes_registry(tmp_path, feedback):
    registry = PipelineRegistry()
    registry.register(
        "xanes",
        xanes_live.select,
        lambda start: xanes_live.XanesLivePipeline(
            start,
            feedback=feedback,
            figures_dir=tmp_path / "figures",
            series=xanes_live.SeriesStore(),
        ),
    )
    return registry


def test_drift_feedback_is_not_sent_again_when_a_run_is_replayed(tmp_path):
    settings = _settings(tmp_path)
    first_feedback, replay_feedback = FeedbackRecorder(), FeedbackRecorder()
    first = Consumer(
        "analysis",
        settings,
        metrics=Metrics("analysis", CollectorRegistry()),
        registry=_xanes_registry(tmp_path, first_feedback),
    )
    RE = RunEngine({})
    RE.subscribe(first.dispatcher)
    txm = small_txm(tmp_path / "detector", "event", seed=31)
    (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=1))
    assert len(first_feedback.messages) == N_ENERGIES  # every frame moved the stage once
    _crash(first)

    second = Consumer(
        "analysis",
        settings,
        metrics=Metrics("analysis", CollectorRegistry()),
        registry=_xanes_registry(tmp_path, replay_feedback),
    )
    try:
        assert _replay(second) == uid
        # the run's after-scan stage (its final arrays) runs in the worker pool: let it end, so
        # that what is counted below does not depend on whether it has run yet (a fresh-clone
        # run counted 9 global_shift records: the 8 rows and, that time, the final array)
        second._after_scan_pool.shutdown(wait=True)
        # the frames were processed again (their results re-written) ...
        spooled = [records.loads(p.read_bytes()) for p in second.spool.directory.glob("*.msgpack")]
        shifts = [r for r in spooled if getattr(r, "key", None) == "global_shift"]
        rows = [r for r in shifts if isinstance(r, records.ArrayRows)]
        assert len(rows) == N_ENERGIES  # one row per frame, once
        assert [type(r) for r in shifts].count(records.ArrayWrite) == 1  # the final array
        # ... but the stage was not moved again by drift measured minutes ago
        assert replay_feedback.messages == []
    finally:
        second.stop(drain_timeout=0)


def _refused_run(outside):
    """A run whose detector file lies outside every readable root, with one undeclared field."""
    bundle = compose_run()
    resource = bundle.compose_resource(
        spec="AD_HDF5_SWMR_STREAM",
        root="/",
        resource_path=str(outside / "det.h5"),
        resource_kwargs={},
    )
    keys = {
        "img": {"dtype": "array", "shape": [4, 4], "source": "det", "external": "FILESTORE:"},
        "energy": {"dtype": "number", "shape": [], "source": "mono"},
    }
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    docs.append(("resource", resource.resource_doc))
    for i in range(1, 4):
        datum = resource.compose_datum(datum_kwargs={"point_number": i - 1})
        docs.append(("datum", datum))
        data = {"img": datum["datum_id"], "energy": 8300.0 + i}
        event = desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0), seq_num=i)
        event["data"]["stray"] = 1.0  # not declared by the descriptor
        event["timestamps"]["stray"] = 0.0
        docs.append(("event", event))
    docs.append(("stop", bundle.compose_stop(exit_status="success")))
    return bundle.start_doc["uid"], docs


def test_refusals_and_dropped_fields_are_counted_once_across_a_replay(tmp_path):
    settings = _settings(tmp_path)
    first = Consumer("raw", settings, metrics=Metrics("raw", CollectorRegistry()))
    uid, docs = _refused_run(tmp_path / "elsewhere")
    for name, doc in docs:
        first.dispatcher(name, doc)
    refused = ("beamwatch_resources_refused_total", {"kind": "resource"})
    dropped = ("beamwatch_event_fields_dropped_total", {"problem": "unknown key"})
    assert _counter(first, refused[0], **refused[1]) == 1
    assert _counter(first, dropped[0], **dropped[1]) == 3
    _crash(first)

    second = Consumer("raw", settings, metrics=Metrics("raw", CollectorRegistry()))
    try:
        assert _replay(second) == uid
        # counted by the first process already: a restart must not count them again
        assert _counter(second, refused[0], **refused[1]) == 0
        assert _counter(second, dropped[0], **dropped[1]) == 0
        # while the run's metadata, written again, still names them
        spooled = [records.loads(p.read_bytes()) for p in second.spool.directory.glob("*.msgpack")]
        (status,) = [r for r in spooled if isinstance(r, records.Metadata)]
        assert len(status.metadata["beamwatch_refused_resources"]) == 1
        assert {f["seq_num"] for f in status.metadata["beamwatch_bad_fields"]} == {1, 2, 3}
        assert np.all([f["data_key"] == "stray" for f in status.metadata["beamwatch_bad_fields"]])
    finally:
        second.stop(drain_timeout=0)
