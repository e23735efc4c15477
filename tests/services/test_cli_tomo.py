"""Contracts of the offline CLIs ``tomo reconstruct`` and ``cracks map``."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.cli import tomo as cli_tomo


@pytest.fixture()
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beamwatch")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_tomo.register(sub)
    return parser


def run(parser: argparse.ArgumentParser, *argv: str | Path) -> int:
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def scan() -> dict[str, np.ndarray]:
    from pipelines.tomo.project import forward_project
    from synthetic.cathode import make_cathode_volume, simulate_detector

    vol = make_cathode_volume((3, 48, 48), seed=21)
    angles = np.linspace(0, 180, 73)
    frames = simulate_detector(forward_project(vol.attenuation, angles), seed=3)
    return {
        "data": frames.projections,
        "rotation_angle": angles,
        "flat": frames.flat,
        "dark": frames.dark,
    }


def write_h5(path: Path, datasets: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as h5:
        for name, value in datasets.items():
            h5.create_dataset(f"/entry/data/{name}", data=value)
    return path


@pytest.mark.parametrize(
    "argv", [["tomo", "reconstruct", "--help"], ["cracks", "map", "--help"], ["tomo", "--help"]]
)
def test_help(parser: argparse.ArgumentParser, argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_reconstruct_contract(parser, scan, tmp_path: Path) -> None:
    src = write_h5(tmp_path / "proj.h5", scan)
    out = tmp_path / "vol.h5"
    assert run(parser, "tomo", "reconstruct", src, "-o", out) == 0
    with h5py.File(out, "r") as h5:
        data = h5["/entry/data/data"]
        assert data.shape == (3, 48, 48) and data.dtype == np.float32
        assert data.attrs["rotation_center"] == pytest.approx(24, abs=1.0)
        assert np.isfinite(data[...]).all()


def test_reconstruct_without_flat_dark_and_filter(parser, scan, tmp_path: Path) -> None:
    transmission = (scan["data"] - scan["dark"].mean(0)) / (scan["flat"] - scan["dark"]).mean(0)
    src = write_h5(
        tmp_path / "proj.h5",
        {"data": transmission.astype(np.float32), "rotation_angle": scan["rotation_angle"]},
    )
    out = tmp_path / "vol.h5"
    code = run(parser, "tomo", "reconstruct", src, "-o", out, "--filter", "hann", "--center", "24")
    assert code == 0
    with h5py.File(out, "r") as h5:
        assert h5["/entry/data/data"].shape == (3, 48, 48)
        assert h5["/entry/data/data"].attrs["filter_name"] == "hann"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rotation_angle": None}, "missing dataset /entry/data/rotation_angle"),
        ({"data": None}, "missing dataset /entry/data/data"),
        ({"data": np.zeros((73, 48))}, "/entry/data/data must be 3-D"),
        ({"rotation_angle": np.arange(10.0)}, "has 10 angles"),
        ({"flat": np.ones((5, 5))}, "flat frame shape"),
    ],
)
def test_reconstruct_input_errors(parser, scan, tmp_path: Path, caplog, change, message) -> None:
    datasets = {**scan, **change}
    src = write_h5(tmp_path / "bad.h5", {k: v for k, v in datasets.items() if v is not None})
    with caplog.at_level(logging.ERROR, logger="services.cli.tomo"):
        code = run(parser, "tomo", "reconstruct", src, "-o", tmp_path / "out.h5")
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "out.h5").exists()


def test_missing_input_file(parser, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        assert (
            run(parser, "tomo", "reconstruct", tmp_path / "nope.h5", "-o", tmp_path / "o.h5") == 2
        )
        assert run(parser, "cracks", "map", tmp_path / "nope.h5", "-o", tmp_path / "o.h5") == 2
    assert "not found" in caplog.text


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory) -> Path:
    from synthetic.cathode import make_cathode_volume

    vol = make_cathode_volume((4, 64, 64), seed=8)
    rng = np.random.default_rng(0)
    noisy = vol.attenuation + rng.normal(0, 0.001, vol.attenuation.shape)
    scaled = np.clip(noisy / 0.02 * 40000, 0, 65535).astype(np.uint16)
    path = tmp_path_factory.mktemp("cracks") / "volume.h5"
    return write_h5(path, {"data": scaled})


def test_cracks_map_contract(parser, volume_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cracks.h5"
    code = run(parser, "cracks", "map", volume_file, "-o", out, "--window", "16", "--baseline")
    assert code == 0
    with h5py.File(out, "r") as h5:
        g = h5["cracks"]
        shape = (4, 64, 64)
        for name in ("mask", "particle_mask", "baseline_mask"):
            assert g[name].shape == shape and g[name].dtype == np.uint8
            assert set(np.unique(g[name][...])) <= {0, 1}
        mask, particles = g["mask"][...], g["particle_mask"][...]
        assert not (mask & (1 - particles)).any()  # cracks lie inside the particle mask
        assert g["depth_profile"].shape == (4,) and g["depth_profile"].dtype == np.float64
        np.testing.assert_allclose(
            g["depth_profile"][...], mask.sum((1, 2)) / np.maximum(particles.sum((1, 2)), 1)
        )
        for name in ("damage_density", "particle_density"):
            assert g[name].shape == shape and g[name].dtype == np.float32
        assert g["damage_histogram"].shape[0] == 4
        corr = g["correlation"]
        assert {"slope", "intercept", "pearson_r", "n_samples"} <= set(corr.attrs)
        assert corr["layer_pearson_r"].shape == (4,)
        assert g.attrs["window"] == 16


def test_cracks_map_inlet_radius(parser, volume_file: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "inlets.h5"
    assert run(parser, "cracks", "map", volume_file, "-o", out, "--inlet-radius", "6") == 0
    with h5py.File(out, "r") as h5:
        mask, particles = h5["cracks/mask"][...], h5["cracks/particle_mask"][...]
    assert particles.any() and not (mask & (1 - particles)).any()
    with caplog.at_level(logging.ERROR, logger="services.cli.tomo"):
        code = run(
            parser, "cracks", "map", volume_file, "-o", tmp_path / "x.h5", "--inlet-radius", "-1"
        )
    assert code == 2 and "--inlet-radius must be >= 0" in caplog.text


@pytest.mark.parametrize(
    ("data", "message"),
    [(None, "missing dataset /entry/data/data"), (np.zeros((8, 8)), "must be 3-D")],
)
def test_cracks_map_input_errors(parser, tmp_path: Path, caplog, data, message) -> None:
    src = write_h5(tmp_path / "bad.h5", {} if data is None else {"data": data})
    if data is None:
        with h5py.File(src, "a") as h5:
            h5.create_group("entry/data")
    with caplog.at_level(logging.ERROR, logger="services.cli.tomo"):
        assert run(parser, "cracks", "map", src, "-o", tmp_path / "out.h5") == 2
    assert message in caplog.text


def test_importing_cli_module_does_not_import_torch() -> None:
    code = "import sys, services.cli.tomo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.parametrize(
    ("command", "desc"), [("tomo reconstruct", "reconstruct"), ("cracks map", "cracks")]
)
def test_no_progress_hides_the_bar(
    parser, scan, volume_file: Path, tmp_path: Path, capsys, command: str, desc: str
) -> None:
    with pytest.raises(SystemExit):
        parser.parse_args([*command.split(), "--help"])
    assert "--no-progress" in capsys.readouterr().out
    src = write_h5(tmp_path / "proj.h5", scan) if desc == "reconstruct" else volume_file
    extra = ["--window", "16"] if desc == "cracks" else []
    assert run(parser, *command.split(), src, "-o", tmp_path / "a.h5", *extra) == 0
    shown = capsys.readouterr().err
    assert f"{desc}: 100%" in shown  # the bar tqdm draws on stderr by default
    argv = [*command.split(), src, "-o", tmp_path / "b.h5", *extra, "--no-progress"]
    assert run(parser, *argv) == 0
    hidden = capsys.readouterr().err
    assert f"{desc}:" not in hidden and "%|" not in hidden
