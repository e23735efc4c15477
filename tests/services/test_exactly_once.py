"""Every raw row and frame exactly once when Tiled answers 500 to writes it has committed.

A real Tiled server; the fault is injected in the client's HTTP layer *after* the server has
answered: the request was applied, the client sees HTTP 500 and the spool retries it. This is
what Tiled + DuckDB do under concurrent appends ("No active transaction" after the commit).
"""

from __future__ import annotations

import threading

import httpx
import numpy as np
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.core.metrics import Metrics
from services.runs.ingest import RawRunRouter
from services.runs.routing import RunDispatcher
from services.tiled.applier import TiledApplier, is_transient
from services.tiled.spool import Spool
from tests.conftest import both_backends
from tests.sim import N_ENERGIES, energies, small_txm


class CommittedButFailed:
    """Turns the answers to chosen, already applied requests into HTTP 500."""

    def __init__(self, matches, times):
        self.matches = matches
        self.left = times
        self.injected: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        with self._lock:
            if response.is_success and self.left > 0 and self.matches(request):
                self.left -= 1
                self.injected.append(f"{request.method} {request.url.path}")
                response.status_code = 500


def _appends(request: httpx.Request) -> bool:
    path = request.url.path
    return request.method == "PATCH" and "/table/partition/" in path and "/primary/" in path


def _data_sources(request: httpx.Request) -> bool:
    path = request.url.path
    return request.method == "PUT" and "/data_source/" in path and "/primary/" in path


def _raw_run_through_faults(tiled_server, tmp_path, matches, times, source="stream"):
    client = tiled_server.client()
    fault = CommittedButFailed(matches, times)
    client.context.http_client.event_hooks["response"].append(fault)
    metrics = Metrics("raw")
    spool = Spool(
        tmp_path / "spool",
        TiledApplier(client),
        metrics,
        max_backoff=0.2,
        is_transient=is_transient,
    )
    spool.start()
    dispatcher = RunDispatcher([lambda start: RawRunRouter(spool)], metrics)
    txm = small_txm(tiled_server.settings.detector_dir, source, seed=7)
    RE = RunEngine({})
    RE.subscribe(dispatcher)
    (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=1))
    assert spool.wait_empty(120)
    spool.stop()
    retries = metrics.registry.get_sample_value(
        "beamwatch_tiled_write_retries_total", {"service": "raw"}
    )
    client.context.close()
    return uid, txm, fault, retries


def _check_run_exactly_once(tiled_client, uid, txm):
    run = tiled_client["raw"][uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    table = run["primary"].base["internal"].read()
    assert sorted(table["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
    np.testing.assert_allclose(np.sort(table["energy"].to_numpy()), energies())
    flats = run["flat"].base["internal"].read()["seq_num"].tolist()
    assert sorted(flats) == list(range(1, len(flats) + 1))
    images = run["primary"]["txm_cam_image"]
    assert images.shape[0] == N_ENERGIES
    with __import__("h5py").File(txm.camera.path, "r", swmr=True) as fh:
        np.testing.assert_array_equal(images.read(), fh["/entry/data/data"][()])


@both_backends
def test_appends_answered_500_after_commit_are_not_doubled(tiled_server, tiled_client, tmp_path):
    uid, txm, fault, retries = _raw_run_through_faults(tiled_server, tmp_path, _appends, 3)
    assert len(fault.injected) == 3 and retries >= 3
    _check_run_exactly_once(tiled_client, uid, txm)


def test_stream_datums_answered_500_after_commit_keep_the_array_shape(
    tiled_server, tiled_client, tmp_path
):
    uid, txm, fault, retries = _raw_run_through_faults(tiled_server, tmp_path, _data_sources, 3)
    assert len(fault.injected) == 3 and retries >= 3
    _check_run_exactly_once(tiled_client, uid, txm)
