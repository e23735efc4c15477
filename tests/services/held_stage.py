"""A consumer whose runs started with ``held=True`` get an after-scan stage in a child process
(``tests.services.child_stages``) that holds until the test releases it: the set-up shared by
the tests of stages off the dispatch thread and of their time limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.analysis.child_stage import ChildStages
from services.analysis.router import FrameStatsPipeline, PipelineRegistry
from services.core.metrics import Metrics
from services.core.settings import AfterScanTimeout
from services.runtime.consumer import Consumer
from tests.services.test_ingest_e2e import N_FLATS, live_publisher
from tests.sim import energies, small_txm


class ChildHeldStage:
    """A pipeline whose after-scan stage runs in a child process (as a tomogram's does):
    ``tests.services.child_stages.<target>``, held until the test releases it."""

    name = "held"
    version = "1"

    def __init__(self, start, child: ChildStages, files: Path, target: str = "held_stage"):
        self.parameters: dict = {}
        self._child, self._files, self._target = child, files, target

    def on_frame(self, frame, out):
        pass

    def on_stop(self, stop, out):
        params = {
            "started": str(self._files / "started"),
            "release": str(self._files / "release"),
            "big_rows": 12_000,  # 12 MB of float32: handed over, and spooled, as a file
        }
        with self._child.stage_dir(out.run_uid) as work:
            target = f"tests.services.child_stages:{self._target}"
            self._child.run(target, stage_dir=work, params=params, out=out)


def held_consumer(
    settings, files: Path, target: str = "held_stage", timeout: AfterScanTimeout | None = None
) -> tuple[Consumer, ChildStages]:
    """An analysis consumer with frame statistics for every run and, for runs started with
    ``held=True``, :class:`ChildHeldStage`; its child stages work under the spool dir, with
    ``timeout`` (None: the default) and the consumer's metrics. Not started."""
    metrics = Metrics("analysis")
    child = ChildStages(
        settings.spool_dir / "analysis" / "stages", threads=1, timeout=timeout, metrics=metrics
    )
    registry = PipelineRegistry()
    registry.register("frames", lambda start: True, FrameStatsPipeline)
    registry.register(
        "held",
        lambda start: start.get("held", False),
        lambda start: ChildHeldStage(start, child, files, target),
    )
    consumer = Consumer(
        "analysis", settings, metrics=metrics, registry=registry, child_stages=child
    )
    return consumer, child


def xanes_run(RE: RunEngine, detector, seed: int, **md) -> str:
    """A small XANES scan of the simulated TXM (``md`` goes into its start document)."""
    (uid,) = RE(
        xanes_scan_plan(small_txm(detector, "stream", seed=seed), energies(), n_flats=N_FLATS),
        **md,
    )
    return uid


@dataclass
class HeldStation:
    consumer: Consumer
    child: ChildStages
    RE: RunEngine
    files: Path
    detector: object

    def scan(self, seed: int, **md) -> str:
        return xanes_run(self.RE, self.detector, seed, **md)

    def started_pid(self) -> int:
        """The pid the held stage wrote once started (call after waiting for the file)."""
        return int((self.files / "started").read_text())

    def release(self) -> None:
        (self.files / "release").touch()


@contextmanager
def held_station(
    consumer_settings,
    files: Path,
    target: str = "held_stage",
    timeout: AfterScanTimeout | None = None,
) -> Iterator[HeldStation]:
    """A started :func:`held_consumer` fed by a RunEngine on the live bus; on exit the held
    publisher is closed, the consumer stopped (its stage child killed with it), then the held
    stage released (so that no child outlives a failed test)."""
    settings, detector = consumer_settings
    files.mkdir(exist_ok=True)
    consumer, child = held_consumer(settings, files, target=target, timeout=timeout)
    consumer.start()
    pub = live_publisher(settings, (consumer,))
    try:
        RE = RunEngine({})
        RE.subscribe(pub)
        yield HeldStation(consumer, child, RE, files, detector)
    finally:
        pub.close()
        consumer.stop()
        (files / "release").touch()
