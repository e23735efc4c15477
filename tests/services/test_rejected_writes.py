"""A write Tiled will never accept is diagnosed and kept; the rest of the run goes on, and the
pipeline it was for ends ``incomplete`` (``complete`` means every result is in)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.analysis.router import FrameStatsPipeline, PipelineRegistry
from services.core.layout import FINAL_STATUSES
from services.runtime.consumer import Consumer
from tests.conftest import both_backends, wait_until
from tests.services.test_ingest_e2e import FLAT_FRAMES, N_FLATS, live_publisher, metric
from tests.sim import N_ENERGIES, energies, small_txm


class EmptyFieldOfView:
    """Writes, for frame 2, a table whose only column is all null (nothing found in view):
    Tiled answers "Unsupported PyArrow type: null" to it, every time."""

    name = "fov"
    version = "1"

    def __init__(self, start):
        self.parameters = {}

    def on_frame(self, frame, out):
        if frame.stream == "primary" and frame.seq_num == 2:
            out.table_rows("particles", {"particle": [None]})
        out.table_rows("seen", {"seq_num": [frame.seq_num]})

    def on_stop(self, stop, out):
        out.metadata({"done": True})


@contextmanager
def scanned(
    consumer_settings, pipelines: dict, prepare: Callable[[Consumer], None] | None = None
) -> Iterator[tuple[str, Consumer, object]]:
    """A small XANES scan through a real RunEngine, proxy and analysis consumer that runs only
    ``pipelines`` (name -> class), retrying quickly; ``prepare`` sees the consumer before it
    starts. Yields the run's uid, the consumer and the settings."""
    settings, detector = consumer_settings
    settings.retry_max_backoff = 0.05
    registry = PipelineRegistry()
    for name, pipeline in pipelines.items():
        registry.register(name, lambda start: True, pipeline)
    ana = Consumer("analysis", settings, registry=registry)
    if prepare is not None:
        prepare(ana)
    ana.start()
    pub = live_publisher(settings, (ana,))
    try:
        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(
            xanes_scan_plan(small_txm(detector, "stream", seed=8), energies(), n_flats=N_FLATS)
        )
        yield uid, ana, settings
    finally:
        pub.close()
        ana.stop()


@both_backends
def test_a_rejected_write_is_kept_shown_and_counted_and_the_run_goes_on_incomplete(
    consumer_settings, tiled_client
):
    pipelines = {"frames": FrameStatsPipeline, "fov": EmptyFieldOfView}
    with scanned(consumer_settings, pipelines) as (uid, ana, settings):

        def fov():
            return tiled_client["analysis"][uid]["fov"]

        wait_until(lambda: fov().metadata.get("done") and fov().metadata.get("write_errors"), 120)
        wait_until(lambda: fov().metadata.get("status") in FINAL_STATUSES, 120)
        md = fov().metadata
        assert md["status"] == "incomplete"
        (rejected,) = md["rejected_writes"]
        assert rejected["key"] == "particles" and "null" in rejected["error"].lower()
        assert rejected["rows"] == [0, 1]  # the table's first row, of frame 2
        assert "particles" not in fov()
        seen = fov()["seen"].read()["seq_num"].tolist()
        assert len(seen) == N_ENERGIES + 2 * N_FLATS  # every later write went on
        stats = tiled_client["analysis"][uid]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        # the other pipeline of the run had nothing rejected
        assert tiled_client["analysis"][uid]["frames"].metadata["status"] == "complete"
        assert metric(ana, "beamwatch_writes_rejected_total", op="table_rows") == 1
        (error_file,) = (settings.spool_dir / "analysis" / "rejected").glob("*.error.json")
        assert "null" in json.loads(error_file.read_text())["error"].lower()


def test_a_consumer_whose_worker_died_exits_to_be_restarted(consumer_settings):
    settings, _ = consumer_settings
    consumer = Consumer("raw", settings)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(consumer.run_forever()))
    runner.start()
    wait_until(lambda: consumer.spool.is_alive(), timeout=10)
    consumer.spool.stop(drain_timeout=0)  # the spool worker ends: the consumer must not linger
    runner.join(timeout=30)
    assert result == [1]


class WithSecondStage:
    """Ends a second stage in a container of its own, as the tomogram's particle stage does:
    that stage's final status is only in its own last metadata write."""

    name = "first"
    version = "1"

    def __init__(self, start):
        self.parameters = {}

    def on_frame(self, frame, out):
        pass

    def on_stop(self, stop, out):
        second = out.sibling("second")
        second.container({"status": "running"})
        second.metadata({**out.final(), "result": 1})


def test_a_rejected_final_status_write_ends_the_stage_incomplete_not_running(
    consumer_settings, tiled_client
):
    """The write that ends a stage (its final status) is answered 404 by the server every
    time, so the spool rejects it in the end: the stage said ``running`` for good (the
    rejection notice only turns ``complete`` into ``incomplete``). Now the notice ends it,
    ``incomplete``, naming the write."""
    refused = []

    def refuse_the_final_status(request):
        # the second stage's status write goes to a node that is not there: a real 404
        if (
            request.method == "PATCH"
            and request.url.path.endswith("/second")
            and b"complete" in request.content
            and b"rejected_writes" not in request.content
        ):
            refused.append(request.url.path)
            request.url = request.url.copy_with(path=request.url.path + "-not-there")

    def hook(ana):
        hooks = ana._client.get().context.http_client.event_hooks  # noqa: SLF001 - its own client
        hooks["request"] = [*hooks["request"], refuse_the_final_status]

    with scanned(consumer_settings, {"first": WithSecondStage}, hook) as (uid, ana, _):

        def second():
            return tiled_client["analysis"][uid]["second"].metadata

        wait_until(lambda: second().get("write_errors"), 120)
        md = second()
        assert md["status"] == "incomplete", md
        (rejected,) = md["rejected_writes"]
        assert rejected["op"] == "metadata" and rejected["path"] == f"analysis/{uid}/second"
        assert len(refused) >= 2  # retried before it was given up
        assert tiled_client["analysis"][uid]["first"].metadata["status"] == "complete"
