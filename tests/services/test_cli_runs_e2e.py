"""``beamwatch import`` and ``beamwatch reprocess`` against a real Tiled server: real instrument
files become raw/<uid> runs, are analysed by the live pipelines, and analysed again with new
parameters into new containers while the earlier results stay."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.cli import export as cli_export
from services.cli import runs as cli_runs
from tests.conftest import SHARED_DATA, TiledProcess

TOOTH = SHARED_DATA / "tomo_tooth_dxchange" / "tooth.h5"
SSRL = SHARED_DATA / "txm_ssrl_nca"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data {path} not found (see ../shared/data/README.md)")
    return path


@pytest.fixture()
def settings(tiled_server: TiledProcess, tmp_path: Path):  # noqa: ANN201
    from services.core.settings import load_settings

    return load_settings(
        data_dir=str(tmp_path),
        tiled={"url": tiled_server.url, "api_key": tiled_server.api_key},
        retry_max_backoff=0.5,
    )


def stream_table(run, name: str):  # noqa: ANN001, ANN201
    node = run[name]
    return (node.base if hasattr(node, "base") else node)["internal"].read()


def test_import_tooth_then_reprocess_with_a_new_centre(settings, tiled_client) -> None:
    uid = cli_runs.import_scan([need(TOOTH)], settings)
    run = tiled_client["raw"][uid]
    start = run.metadata["start"]
    assert start["plan_name"] == "beamwatch_import"
    assert start["beamwatch_technique"] == "tomography"
    source = start["beamwatch_source"]
    assert source["format"] == "dxchange" and source["files"] == ["tooth.h5"]
    assert "pixel_size_um" not in start  # the file does not state it
    assert run.metadata["stop"]["exit_status"] == "success"
    with h5py.File(TOOTH, "r") as h5:
        data, theta = h5["exchange/data"][()], h5["exchange/theta"][()]
        white = h5["exchange/data_white"][()]
    np.testing.assert_array_equal(run["primary"]["image"].read(), data)  # raw, not altered
    np.testing.assert_array_equal(run["flat"]["image"].read(), white)
    assert run["dark"]["image"].shape == (10, 2, 640)
    table = stream_table(run, "primary")
    np.testing.assert_allclose(table.sort_values("seq_num")["rotation"].to_numpy(), theta)

    # first analysis of the imported run: where the live service writes
    assert cli_runs.reprocess_run(uid, settings) == {"cracks": "cracks"}
    first = tiled_client["analysis"][uid]["cracks"]
    assert first.metadata["status"] == "complete"
    volume = first["reconstruction"].read()
    assert volume.shape == (2, 640, 640) and np.isfinite(volume).all()

    # again with a fixed axis: a new container, the first one untouched
    overrides = {"beamwatch_recon_params": {"center": 300.0}}
    assert cli_runs.reprocess_run(uid, settings, overrides=overrides) == {"cracks": "cracks-r1"}
    analysis = tiled_client["analysis"][uid]
    again = analysis["cracks-r1"]
    assert again.metadata["status"] == "complete" and again.metadata["reprocess_of"] == "cracks"
    assert again.metadata["parameters"]["reconstruction"]["center"] == 300.0
    assert again.metadata["overrides"] == overrides
    assert "particles-r1" in analysis and "particles" in analysis
    np.testing.assert_array_equal(analysis["cracks"]["reconstruction"].read(), volume)
    assert not np.allclose(again["reconstruction"].read(), volume)
    # a comparison report uses the newest complete analysis of each run
    from services.web.report import latest_result, run_numbers

    assert latest_result(analysis, "cracks").item["id"] == "cracks-r1"
    numbers = run_numbers(tiled_client, uid)
    np.testing.assert_array_equal(numbers.depth_profile, again["depth_profile"].read())
    assert numbers.depth_unit == "px"  # the file states no pixel size
    # two slices: every particle touches the volume border, so there is no whole-particle
    # distribution to overlay (the report says so instead of drawing empty axes)
    assert latest_result(analysis, "particles").metadata["n_excluded_border"] > 0
    assert numbers.size_probability is None and numbers.detachment_probability is None
    assert numbers.label == f"tooth.h5 [{uid[:8]}]"


@pytest.fixture()
def cli(settings, tmp_path: Path, monkeypatch):  # noqa: ANN201
    """``beamwatch import`` / ``reprocess`` as the command line runs them, on the test Tiled."""
    parser = argparse.ArgumentParser(prog="beamwatch")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    subparsers = parser.add_subparsers(dest="verb", required=True)
    cli_runs.register(subparsers)
    cli_export.register(subparsers)
    monkeypatch.setenv("BEAMWATCH_TILED__URL", settings.tiled_url)
    monkeypatch.setenv("BEAMWATCH_TILED__API_KEY", settings.resolved_api_key())

    def run(*argv: str | Path) -> int:
        args = parser.parse_args(["--data-dir", str(tmp_path), *[str(a) for a in argv]])
        return int(args.func(args))

    return run


def test_import_ssrl_folder_then_xanes_analysis(cli, tiled_client, capsys, tmp_path) -> None:
    assert cli("import", need(SSRL), "--sample", "NCA pristine") == 0
    uid = capsys.readouterr().out.strip()
    run = tiled_client["raw"][uid]
    start = run.metadata["start"]
    assert start["beamwatch_technique"] == "xanes" and start["sample_name"] == "NCA pristine"
    assert start["pixel_size_um"] == pytest.approx(0.0312, abs=1e-4)
    assert start["beamwatch_source"]["format"] == "xradia"
    used = {u["file"]: u["value"] for u in start["beamwatch_source"]["references_used"]}
    assert used["rep01_20161456_ssrl-test-data_08354.0_eV_002of003.xrm"] == [
        "rep01_000351_ref_20161456_ssrl-test-data_08354.0_eV_001of010.xrm",
        "rep01_000352_ref_20161456_ssrl-test-data_08354.0_eV_002of010.xrm",
    ]
    energies = stream_table(run, "primary").sort_values("seq_num")["energy"].to_numpy()
    np.testing.assert_array_equal(energies, [8324.0] * 3 + [8354.0] * 3)
    flat = stream_table(run, "flat").sort_values("seq_num")
    np.testing.assert_array_equal(flat["energy"].to_numpy(), [8324.0] * 2 + [8354.0] * 2)
    np.testing.assert_allclose(flat["exposure_time"].to_numpy(), 0.3, rtol=1e-6)
    assert run["primary"]["image"].shape == (6, 1024, 1024)

    assert cli("reprocess", uid) == 0
    assert capsys.readouterr().out.strip() == f"analysis/{uid}/xanes"
    xanes = tiled_client["analysis"][uid]["xanes"]
    assert xanes.metadata["status"] == "complete"
    assert xanes["labels"].read().max() >= 3
    np.testing.assert_array_equal(xanes["energy"].read(), energies)
    from services.web.report import build_report

    report = build_report(tiled_client, uid)
    assert "beamwatch_import" in report and "<h2>xanes" in report

    # the results exported from Tiled: maps as TIFF in um, tables as CSV, spectra as text
    import pandas as pd
    import tifffile

    out = tmp_path / "export"
    assert cli("export", "--run", uid, "-o", out) == 0
    with tifffile.TiffFile(out / f"{uid}_xanes_edge_energy_eV.tif") as tif:
        np.testing.assert_array_equal(tif.asarray(), xanes["edge_energy"].read())
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.0312, abs=1e-4)
    frames = pd.read_csv(out / f"{uid}_xanes_frames.csv")
    np.testing.assert_array_equal(np.sort(frames["energy"].to_numpy()), energies)
    spectra = xanes["spectra"].read()
    assert len(list(out.glob(f"{uid}_xanes_particle_*.txt"))) == spectra.shape[0]
    # two energies only: nothing can be normalised (mu_norm NaN, counted in a comment), but
    # the raw mean optical density is there for Athena / Larch to read
    path = out / f"{uid}_xanes_particle_001.txt"
    lines = path.read_text().splitlines()
    normalised = np.isfinite(spectra[0])
    assert not normalised.any()
    assert lines[1].startswith(f"# {normalised.size} of {normalised.size} frames without mu_norm")
    raw = xanes["spectra_raw"].read()
    keep = np.isfinite(raw[0])
    assert keep.any()
    values = np.loadtxt(path, ndmin=2)
    assert values.shape == (int(keep.sum()), 3)
    np.testing.assert_allclose(values[:, 0], energies[keep])
    assert np.isnan(values[:, 1]).all()
    np.testing.assert_allclose(values[:, 2], raw[0][keep], rtol=1e-7)


def test_cli_errors(cli, tmp_path: Path, caplog) -> None:
    import tifffile

    folder = tmp_path / "frames"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((4, 4), np.uint16))
    bad_params = tmp_path / "p.json"
    bad_params.write_text(json.dumps({"beamwatch_unknown_params": {}}))
    with caplog.at_level(logging.ERROR, logger="services.cli.runs"):
        assert cli("import", folder) == 2
        assert cli("reprocess", "no-such-uid") == 2
        assert cli("reprocess", "x", "--params", bad_params) == 2
    assert "give --technique" in caplog.text
    assert "run no-such-uid is not in Tiled" in caplog.text
    assert "unknown keys ['beamwatch_unknown_params']" in caplog.text
