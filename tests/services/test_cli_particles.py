"""Contracts of the offline CLIs ``particles analyze`` and ``particles export-coco``."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.cli import particles as cli_particles
from tests.sim import scanned_cathode

TABLE_FIELDS = (
    "label",
    "volume_voxels",
    "equivalent_diameter_px",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "sphericity",
    "crack_fraction",
    "flawed_slices",
    "flawed",
    "detachment",
    "touches_border",
    "slice_scores",
)


@pytest.fixture()
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beamwatch")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_particles.register(sub)
    return parser


def run(parser: argparse.ArgumentParser, *argv: str | Path) -> int:
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic cathode scanned and reconstructed by pipelines.tomo, with its truth."""

    truth, volume = scanned_cathode((16, 64, 64))
    folder = tmp_path_factory.mktemp("particles")
    paths = {
        "volume": folder / "volume.h5",
        "cracks": folder / "cracks.h5",
        "phase": folder / "phase.h5",
    }
    with h5py.File(paths["volume"], "w") as h5:
        h5["/entry/data/data"] = volume
    with h5py.File(paths["cracks"], "w") as h5:
        h5["/cracks/mask"] = truth.crack_mask.astype(np.uint8)
    with h5py.File(paths["phase"], "w") as h5:
        h5["/entry/data/data"] = np.where(truth.phase == 3, 2, truth.phase).astype(np.uint8)
    return paths


@pytest.mark.parametrize(
    "argv",
    [
        ["particles", "--help"],
        ["particles", "analyze", "--help"],
        ["particles", "export-coco", "-h"],
    ],
)
def test_help(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 0


@pytest.fixture(scope="module")
def analyzed(scan: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    parser = argparse.ArgumentParser(prog="beamwatch")
    cli_particles.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path_factory.mktemp("out") / "particles.h5"
    argv = ["particles", "analyze", scan["volume"], "-o", out, "--cracks", scan["cracks"]]
    argv += ["--phase", scan["phase"], "--voxel-size-um", "0.5"]
    assert run(parser, *argv) == 0
    return out


def test_analyze_contract(analyzed: Path, scan: dict[str, Path]) -> None:
    with h5py.File(scan["volume"], "r") as h5:
        shape = h5["/entry/data/data"].shape
    with h5py.File(analyzed, "r") as h5:
        labels = h5["/particles/labels"][...]
        table = h5["/particles/table"][...]
        attrs = dict(h5["/particles"].attrs)
    assert labels.dtype == np.int32 and labels.shape == shape
    assert set(TABLE_FIELDS) <= set(table.dtype.names)
    assert len(table) == labels.max() == attrs["n_particles"] > 5
    assert np.array_equal(table["label"], np.arange(1, len(table) + 1))
    assert np.array_equal(table["volume_voxels"], np.bincount(labels.ravel())[1:])
    assert table["slice_scores"].shape == (len(table), 10)
    assert np.array_equal(table["flawed"], table["flawed_slices"] >= 4)
    assert np.all((table["crack_fraction"] >= 0) & (table["crack_fraction"] <= 1))
    assert table["crack_fraction"].max() > 0
    finite = table["detachment"][np.isfinite(table["detachment"])]
    assert finite.size and np.all((finite >= 0) & (finite <= 1))
    stats = json.loads(attrs["statistics"])
    assert stats["overall"]["count"] == int((~table["touches_border"]).sum())
    stages = json.loads(attrs["stage_seconds"])
    assert set(stages) == {"instances", "measure", "flaw", "phase", "detachment"}
    assert all(v >= 0 for v in stages.values()) and stages["instances"] > 0


def test_analyze_without_cracks_or_phase(parser, scan: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "plain.h5"
    assert run(parser, "particles", "analyze", scan["volume"], "-o", out) == 0
    with h5py.File(out, "r") as h5:
        table = h5["/particles/table"][...]
        assert h5["/particles"].attrs["crack_source"] == "none"
        assert "learned classifier" in h5["/particles"].attrs["phase_source"]
    assert np.isnan(table["crack_fraction"]).all()


def write(path: Path, name: str, data: np.ndarray) -> Path:
    with h5py.File(path, "w") as h5:
        h5[name] = data
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "not found"),
        ("not_hdf5", "not a readable HDF5 file"),
        ("no_dataset", "missing dataset /entry/data/data"),
        ("two_d", "must be 3-D"),
        ("cracks_shape", "/cracks/mask shape"),
        ("weights", "weights file not found"),
        ("codes", "must differ"),
        ("output_dir", "output directory does not exist"),
    ],
)
def test_analyze_input_errors(
    parser, scan: dict[str, Path], tmp_path: Path, caplog, case: str, message: str
) -> None:
    volume = scan["volume"]
    extra: list[str | Path] = []
    if case == "missing":
        volume = tmp_path / "nope.h5"
    elif case == "not_hdf5":
        volume = tmp_path / "text.h5"
        volume.write_text("not hdf5")
    elif case == "no_dataset":
        volume = write(tmp_path / "v.h5", "/other", np.zeros((2, 8, 8)))
    elif case == "two_d":
        volume = write(tmp_path / "v.h5", "/entry/data/data", np.zeros((8, 8)))
    elif case == "cracks_shape":
        extra = ["--cracks", write(tmp_path / "c.h5", "/cracks/mask", np.zeros((1, 8, 8), "u1"))]
    elif case == "weights":
        extra = ["--weights", tmp_path / "missing.pt"]
    elif case == "codes":
        extra = ["--pore-value", "1", "--binder-value", "1"]
    output = tmp_path / "missing_dir" / "o.h5" if case == "output_dir" else tmp_path / "o.h5"
    with caplog.at_level(logging.ERROR, logger="services.cli.particles"):
        code = run(parser, "particles", "analyze", volume, "-o", output, *extra)
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "o.h5").exists()


def test_export_coco_round_trip(
    parser, analyzed: Path, scan: dict[str, Path], tmp_path: Path
) -> None:
    import tifffile

    from pipelines.particles.coco import labels_from_coco

    out = tmp_path / "coco"
    assert (
        run(parser, "particles", "export-coco", analyzed, "-o", out, "--volume", scan["volume"])
        == 0
    )
    coco = json.loads((out / "annotations.json").read_text())
    with h5py.File(analyzed, "r") as h5:
        labels = h5["/particles/labels"][...]
    with h5py.File(scan["volume"], "r") as h5:
        volume = h5["/entry/data/data"][...]
    assert np.array_equal(labels_from_coco(coco), labels)
    first = tifffile.imread(out / coco["images"][0]["file_name"])
    assert first.dtype == volume.dtype and np.array_equal(first, volume[0])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("float_labels", "must have an integer dtype"),
        ("negative", "negative labels"),
        ("output_file", "not a directory"),
        ("volume_shape", "volume shape"),
    ],
)
def test_export_coco_errors(parser, tmp_path: Path, caplog, case: str, message: str) -> None:
    labels = np.zeros((2, 8, 8), dtype=np.int32)
    out: Path = tmp_path / "dir"
    extra: list[str | Path] = []
    if case == "float_labels":
        labels = labels.astype(np.float32)
    elif case == "negative":
        labels[0, 0, 0] = -1
    elif case == "output_file":
        out = tmp_path / "file"
        out.write_text("")
    elif case == "volume_shape":
        extra = ["--volume", write(tmp_path / "v.h5", "/entry/data/data", np.zeros((3, 8, 8)))]
    source = write(tmp_path / "labels.h5", "/particles/labels", labels)
    with caplog.at_level(logging.ERROR, logger="services.cli.particles"):
        assert run(parser, "particles", "export-coco", source, "-o", out, *extra) == 2
    assert message in caplog.text


def test_importing_cli_module_does_not_import_torch() -> None:
    code = "import sys, services.cli.particles; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_no_progress_hides_the_bar(parser, scan: dict[str, Path], tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        parser.parse_args(["particles", "analyze", "--help"])
    assert "--no-progress" in capsys.readouterr().out
    assert run(parser, "particles", "analyze", scan["volume"], "-o", tmp_path / "a.h5") == 0
    assert "particles: 100%" in capsys.readouterr().err  # the bar tqdm draws on stderr
    argv = ["particles", "analyze", scan["volume"], "-o", tmp_path / "b.h5", "--no-progress"]
    assert run(parser, *argv) == 0
    hidden = capsys.readouterr().err
    assert "particles:" not in hidden and "%|" not in hidden
