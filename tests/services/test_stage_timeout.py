"""A hung after-scan stage child is killed: its stages fail saying why, a metric counts it, and
the consumer goes on with the next runs (``after_scan_timeout``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bluesky import RunEngine

from bluesky_plans.plans import tomo_scan_plan
from services.analysis.child_stage import ChildStages
from services.core.metrics import Metrics
from services.core.settings import AfterScanTimeout
from services.runtime.consumer import Consumer
from synthetic.cathode import make_cathode_volume
from tests.conftest import wait_until
from tests.services.held_stage import held_station
from tests.services.live_tomo import finished_result, scanned_station
from tests.services.test_ingest_e2e import live_publisher


def _timeouts(metrics: Metrics, limit: str) -> float | None:
    return metrics.registry.get_sample_value(
        "beamwatch_after_scan_timeouts_total", {"service": "analysis", "limit": limit}
    )


def test_a_real_tomogram_stage_past_its_time_limit_fails_and_the_next_completes(
    consumer_settings, tiled_client
):
    """A tomogram's real after-scan stage (reconstruction, crack map, particles in the child)
    with a time limit of 1 s: the child is killed, ``cracks`` ends ``failed`` naming the run,
    the time and the limit, the metric counts it; the next tomogram, with the default limit,
    is analysed to the end by the same consumer."""
    settings, detector = consumer_settings
    metrics = Metrics("analysis")
    child = ChildStages(
        settings.spool_dir / "analysis" / "stages",
        threads=1,
        timeout=AfterScanTimeout(base_s=1.0, per_mvoxel_s=0.0),
        metrics=metrics,
    )
    ana = Consumer("analysis", settings, metrics=metrics, child_stages=child)
    ana.start()
    pub = live_publisher(settings, (ana,))
    shape = (6, 64, 64)
    angles = np.linspace(0.0, 180.0, 48, endpoint=False)
    try:
        RE = RunEngine({})
        RE.subscribe(pub)

        def tomogram(seed: int) -> str:
            volume = make_cathode_volume(shape, seed=seed)
            station = scanned_station(volume.attenuation, angles, seed=seed, detector=detector)
            (uid,) = RE(tomo_scan_plan(station, angles, n_darks=2, n_flats=2))
            return uid

        first = tomogram(11)
        cracks = finished_result(tiled_client, first, "cracks", timeout=240)
        error = cracks.metadata["error"]
        assert cracks.metadata["status"] == "failed", cracks.metadata
        assert error.startswith(
            f"StageTimeout: the after-scan stage 'cracks' of run {first} ran "
        ), error
        assert "past its time limit of 1.0 s" in error, error
        # the limit's terms: a (6, 64, 64) volume
        assert "1 s + 0 s per million voxels x 0.02 Mvoxels" in error, error
        assert "was killed" in error, error
        assert _timeouts(metrics, "total") == 1.0
        assert child.running() == 0 and ana.dead_workers() == []

        child.timeout = AfterScanTimeout()  # the default: 1800 s + 40 s per million voxels
        second = tomogram(12)
        for pipeline in ("cracks", "particles"):
            node = finished_result(tiled_client, second, pipeline, timeout=300)
            assert node.metadata["status"] == "complete", node.metadata
        assert _timeouts(metrics, "total") == 1.0
        assert list((settings.spool_dir / "analysis" / "stages").iterdir()) == []
    finally:
        pub.close()
        ana.stop()


def test_a_stage_child_that_writes_nothing_for_idle_s_is_killed(
    consumer_settings, tiled_client, tmp_path
):
    """A child that hangs after its first writes (``held_stage`` is never released): with
    ``idle_s`` it is killed after that long without a write, although its time limit is far;
    its stages fail naming the idle limit, and the next scan completes."""
    timeout = AfterScanTimeout(idle_s=3.0)
    with held_station(consumer_settings, tmp_path / "files", timeout=timeout) as station:
        metrics, child = station.consumer.metrics, station.child
        first = station.scan(9, held=True)
        wait_until(lambda: (station.files / "started").exists(), timeout=120)
        pid = station.started_pid()

        def metadata(uid, pipeline):
            return tiled_client["analysis"][uid][pipeline].metadata

        wait_until(lambda: metadata(first, "held")["status"] == "failed", timeout=60)
        error = metadata(first, "held")["error"]
        assert error.startswith(
            f"StageTimeout: the after-scan stage 'held' of run {first} sent no write for 3 s "
            "(after_scan_timeout.idle_s)"
        ), error
        assert f"(pid {pid}) was killed" in error, error
        assert metadata(first, "second")["status"] == "failed"
        assert metadata(first, "second")["error"].startswith("StageTimeout: "), metadata(
            first, "second"
        )
        assert not Path(f"/proc/{pid}").exists()  # killed and reaped
        assert _timeouts(metrics, "idle") == 1.0 and _timeouts(metrics, "total") is None
        second = station.scan(10)
        wait_until(lambda: metadata(second, "frames")["status"] == "complete", timeout=90)
        assert child.running() == 0 and station.consumer.dead_workers() == []
