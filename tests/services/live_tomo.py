"""A simulated tomogram scanned live through both consumers, for the tomography e2e tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from bluesky import RunEngine

from bluesky_plans.devices import SimTomoStation
from bluesky_plans.plans import tomo_scan_plan
from synthetic.scan import simulate_scan
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import live_publisher, start_consumers


def scanned_station(
    attenuation: np.ndarray, angles: np.ndarray, *, seed: int, detector: Any
) -> SimTomoStation:
    """A simulated station serving the frames of ``attenuation`` scanned at ``angles``
    (:func:`synthetic.scan.simulate_scan`); it writes its detector file under ``detector``."""
    frames = simulate_scan(attenuation, angles, seed=seed)
    return SimTomoStation.from_frames(
        angles, frames.projections, frames.flat, frames.dark, detector
    )


@contextmanager
def live_tomo_run(
    settings: Any,
    detector: Any,
    attenuation: np.ndarray,
    angles: np.ndarray,
    *,
    seed: int,
    md: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Scan ``attenuation`` (``synthetic.scan.simulate_scan``, 2 darks and 2 flats) with a
    RunEngine publishing to the raw and analysis consumers of ``settings``; yields the run's
    uid while the consumers run and stops them on leaving."""
    station = scanned_station(attenuation, angles, seed=seed, detector=detector)
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    try:
        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(tomo_scan_plan(station, angles, n_darks=2, n_flats=2, md=md))
        yield uid
    finally:
        pub.close()
        raw.stop()
        ana.stop()


def finished_result(tiled_client: Any, uid: str, pipeline: str, timeout: float) -> Any:
    """The run's ``analysis/<uid>/<pipeline>`` node once its status is complete or failed."""

    def status() -> str | None:
        node = tiled_client["analysis"][uid]
        return node[pipeline].metadata.get("status") if pipeline in node else None

    wait_until(lambda: status() in ("complete", "failed"), timeout=timeout)
    return tiled_client["analysis"][uid][pipeline]
