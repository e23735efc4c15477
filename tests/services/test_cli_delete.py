"""``beamwatch delete``: a run out of Tiled and its frame files off the disk (real Tiled)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.cli import delete as cli_delete
from services.core.metrics import Metrics
from services.runs.ingest import RawRunRouter
from services.runs.routing import RunDispatcher
from services.tiled.applier import TiledApplier, is_transient
from services.tiled.records import Container
from services.tiled.spool import Spool
from tests.sim import N_ENERGIES, energies, small_txm


def _runs_with_frame_files(tiled_server, tmp_path, frames_dir, n=2):
    """``n`` raw runs whose in-Event frames go to ``frames_dir``, each with an analysis
    container; their uids."""
    client = tiled_server.client()
    metrics = Metrics("raw")
    spool = Spool(tmp_path / "spool-w", TiledApplier(client), metrics, is_transient=is_transient)
    spool.start()
    dispatcher = RunDispatcher([lambda start: RawRunRouter(spool, frames_dir=frames_dir)], metrics)
    RE = RunEngine({})
    RE.subscribe(dispatcher)
    uids = []
    for seed in range(n):
        txm = small_txm(tiled_server.settings.detector_dir, "event", seed=40 + seed)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=1))
        uids.append(uid)
        spool.put(Container(("analysis", uid, "frames"), {"status": "complete"}))
    dispatcher.flush()
    assert spool.wait_empty(120)
    spool.stop()
    client.context.close()
    return uids


@pytest.fixture()
def data_dir(tiled_server, tmp_path) -> Path:
    # DIR/raw_frames must be where the test server reads files: inside its detector dir
    directory = tiled_server.settings.detector_dir / f"delete-{tmp_path.name}"
    directory.mkdir()
    return directory


@pytest.fixture()
def cli(tiled_server, data_dir, monkeypatch):  # noqa: ANN201
    parser = argparse.ArgumentParser(prog="beamwatch")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    subparsers = parser.add_subparsers(dest="verb", required=True)
    cli_delete.register(subparsers)
    monkeypatch.setenv("BEAMWATCH_TILED__URL", tiled_server.url)
    monkeypatch.setenv("BEAMWATCH_TILED__API_KEY", tiled_server.api_key)

    def run(*argv: str) -> int:
        args = parser.parse_args(["--data-dir", str(data_dir), *argv])
        return int(args.func(args))

    return run


def test_delete_removes_the_run_from_tiled_and_its_frame_files_and_nothing_else(
    tiled_server, tiled_client, tmp_path, data_dir, cli, capsys
):
    frames_dir = data_dir / "raw_frames"
    gone, kept = _runs_with_frame_files(tiled_server, tmp_path, frames_dir)
    assert (frames_dir / gone).is_dir() and (frames_dir / kept).is_dir()
    kept_images = tiled_client["raw"][kept]["primary"]["txm_cam_image"].read()

    assert cli("delete", gone) == 0
    assert capsys.readouterr().out.split() == [gone]
    assert gone not in tiled_client["raw"] and gone not in tiled_client["analysis"]
    assert not (frames_dir / gone).exists()
    # the other run is whole: its rows, frames and files
    run = tiled_client["raw"][kept]
    assert len(run["primary"].base["internal"].read()) == N_ENERGIES
    np.testing.assert_array_equal(run["primary"]["txm_cam_image"].read(), kept_images)
    assert kept in tiled_client["analysis"] and (frames_dir / kept).is_dir()
    assert cli("delete", gone) == 0  # again: nothing left to delete, not an error


def test_a_run_a_consumer_still_writes_is_not_deleted_without_force(
    tiled_server, tiled_client, tmp_path, data_dir, cli
):
    frames_dir = data_dir / "raw_frames"
    (uid,) = _runs_with_frame_files(tiled_server, tmp_path, frames_dir, n=1)
    journal = data_dir / "spool" / "raw" / "runs" / f"{uid}.msgpack"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"")  # the raw consumer has the run open
    assert cli("delete", uid) == 1
    assert uid in tiled_client["raw"] and (frames_dir / uid).is_dir()
    assert cli("delete", uid, "--force") == 0
    assert uid not in tiled_client["raw"] and not (frames_dir / uid).exists()


def test_a_uid_that_is_not_a_run_uid_touches_nothing(tmp_path):
    frames_dir = tmp_path / "raw_frames"
    (frames_dir / "x").mkdir(parents=True)
    for bad in ("..", "../raw_frames", "/tmp", ""):
        with pytest.raises(ValueError):
            cli_delete.delete_run(
                None, bad, frames_dir=frames_dir, spool_dir=tmp_path / "spool", force=True
            )
    assert (frames_dir / "x").is_dir()
