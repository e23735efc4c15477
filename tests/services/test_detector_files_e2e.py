"""Detector files outside the data dir: readable from Tiled when their directory is a readable
root, refused at ingestion (metadata + metric, the rest of the run kept) when it is not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.core.settings import load_settings
from services.runs.ingest import refusal
from services.runtime.consumer import Consumer
from tests.conftest import TiledProcess, free_port, wait_until
from tests.services.test_ingest_e2e import live_publisher, metric
from tests.sim import N_ENERGIES, energies, small_txm

IMAGE = "txm_cam_image"


@pytest.fixture(scope="module")
def beamline(tmp_path_factory):
    base = tmp_path_factory.mktemp("detfiles")
    allowed, other = base / "beamline-allowed", base / "beamline-other"
    allowed.mkdir()
    other.mkdir()
    server = TiledProcess(base / "tiled", readable_roots=[allowed])
    server.start()
    client = server.client()
    yield SimpleNamespace(server=server, client=client, allowed=allowed, other=other)
    client.context.close()
    server.stop()


@pytest.fixture
def raw(beamline, tmp_path, proxy):
    settings = load_settings(
        data_dir=str(tmp_path / "consumer"),
        tiled={
            "url": beamline.server.url,
            "api_key": beamline.server.api_key,
            "readable_roots": [str(beamline.allowed)],
        },
        bus={
            "mode": "zmq",
            "in_address": proxy.in_address,
            "out_address": proxy.out_address,
            "feedback_address": f"tcp://127.0.0.1:{free_port()}",
        },
        retry_max_backoff=0.5,
    )
    consumer = Consumer("raw", settings)
    consumer.start()
    pub = live_publisher(settings, (consumer,))
    yield SimpleNamespace(consumer=consumer, pub=pub)
    pub.close()
    consumer.stop()


def run_scan(raw, directory, source, seed):
    txm = small_txm(directory, source, seed=seed)
    RE = RunEngine({})
    RE.subscribe(raw.pub)
    (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=1))
    return uid, txm


def finished(client, uid):
    return (
        "raw" in client
        and uid in client["raw"]
        and ("beamwatch_status" in client["raw"][uid].metadata)
    )


def test_detector_file_in_a_listed_root_is_readable(beamline, raw):
    uid, _ = run_scan(raw, beamline.allowed, "stream", seed=3)
    wait_until(lambda: finished(beamline.client, uid), timeout=90)
    run = beamline.client["raw"][uid]
    wait_until(lambda: run["primary"][IMAGE].shape[0] == N_ENERGIES, timeout=60)
    images = run["primary"][IMAGE].read()
    assert images.shape == (N_ENERGIES, 96, 96)
    assert images.std() > 0
    assert "beamwatch_refused_resources" not in run.metadata
    assert metric(raw.consumer, "beamwatch_resources_refused_total", kind="stream_resource") == 0


@pytest.mark.parametrize("source", ["stream", "resource"])
def test_detector_file_outside_every_root_is_refused_and_the_run_lands(beamline, raw, source):
    uid, txm = run_scan(raw, beamline.other, source, seed=4)
    wait_until(lambda: finished(beamline.client, uid), timeout=90)
    run = beamline.client["raw"][uid]
    md = run.metadata
    assert md["stop"]["exit_status"] == "success"
    refused = md["beamwatch_refused_resources"]
    assert refused, md
    kind = "stream_resource" if source == "stream" else "resource"
    for entry in refused:
        assert entry["document"] == kind
        assert entry["path"].startswith(str(beamline.other))
        assert "outside every readable root" in entry["rule"]
    assert metric(raw.consumer, "beamwatch_resources_refused_total", kind=kind) == len(refused)
    # the scalar columns land; the refused image key is absent (not a broken node)
    table = run["primary"].base["internal"].read()
    assert sorted(table["energy"].round(6).tolist()) == sorted(energies().round(6).tolist())
    assert IMAGE not in run["primary"].base
    # nothing in the run answers HTTP 500 (or anything else) when read
    for stream in run:
        node = run[stream].base
        for key in node:
            node[key].read()


def test_dotdot_and_symlinks_escaping_a_root_are_refused(tmp_path):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    (allowed / "escape").symlink_to(other)
    roots = [allowed.resolve()]
    ok = {"uri": f"file://localhost{allowed}/scan/frames.h5"}
    assert refusal(ok, roots) is None
    dotdot = {"uri": f"file://localhost{allowed}/../other/frames.h5"}
    reason = refusal(dotdot, roots)
    assert reason is not None and str(other.resolve() / "frames.h5") in reason
    resource = {"root": str(allowed), "resource_path": "../other/frames.npy"}
    assert refusal(resource, roots) is not None
    assert refusal({"uri": f"file://localhost{allowed}/escape/frames.h5"}, roots) is not None
    assert refusal({"root": "", "resource_path": "relative/frames.h5"}, roots) is not None
    assert refusal({"uri": "s3://bucket/frames.h5"}, roots) is not None
    assert refusal({"spec": "AD_HDF5"}, roots) is not None


@pytest.mark.parametrize("listed", [True, False])
def test_ophyd_sim_img_npy_files(beamline, raw, listed):
    """``ophyd.sim``'s ``img`` (one NPY file per frame, Resource + Datum) in a chosen directory."""
    from bluesky.plans import count
    from ophyd.sim import hw

    directory = beamline.allowed if listed else beamline.other
    devices = hw(save_path=str(directory / "ophyd-img"))
    (directory / "ophyd-img").mkdir(exist_ok=True)
    RE = RunEngine({})
    RE.subscribe(raw.pub)
    (uid,) = RE(count([devices.img, devices.det], num=3))
    wait_until(lambda: finished(beamline.client, uid), timeout=90)
    run = beamline.client["raw"][uid]
    assert len(run["primary"].base["internal"].read()) == 3
    if listed:
        images = run["primary"]["img"].read()
        assert images.shape == (3, 10, 10)
        assert "beamwatch_refused_resources" not in run.metadata
    else:
        assert "img" not in run["primary"].base
        assert run.metadata["beamwatch_refused_resources"][0]["document"] == "resource"
