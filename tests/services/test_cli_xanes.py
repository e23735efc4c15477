"""Contract of ``beamwatch xanes align`` on a small synthetic HDF5 scan."""

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

from services.cli import xanes as cli_xanes
from synthetic.txm import TxmScene, default_energies

REPO = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beamwatch")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_xanes.register(sub)
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return int(args.func(args))


def write_scan(path: Path, n_frames: int) -> tuple[Path, TxmScene, np.ndarray]:
    """A synthetic 128 x 128 XANES scan (4 particles) in the CLI's input layout."""
    scene = TxmScene.random(5, shape=(128, 128), n_particles=4, n_frames=n_frames)
    energies = default_energies(n_frames)
    frames = np.stack([scene.frame(e, scan=0, index=i) for i, e in enumerate(energies)])
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = np.round(frames).astype(np.uint16)
        h5["/entry/instrument/monochromator/energy"] = energies
        h5["/entry/data/flat"] = np.stack([scene.flat(e) for e in energies[::10]]).astype(np.uint16)
        h5["/entry/data/dark"] = scene.dark()[None].astype(np.uint16)
    return path, scene, energies


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory) -> tuple[Path, TxmScene, np.ndarray]:
    return write_scan(tmp_path_factory.mktemp("xanes") / "scan.h5", 30)


def test_align_contract(scan_file, tmp_path):
    path, scene, energies = scan_file
    out = tmp_path / "out.h5"
    assert _run("xanes", "align", str(path), "-o", str(out), "--no-progress") == 0
    n = energies.size
    with h5py.File(out, "r") as h5:
        labels = h5["/xanes/labels"][()]
        p = int(labels.max())
        assert labels.dtype == np.int32 and labels.shape == (128, 128)
        assert p == scene.n_particles
        com = h5["/xanes/particle_com"][()]
        shift = h5["/xanes/particle_shift"][()]
        assert com.dtype == np.float64 and com.shape == (p, n, 2)
        assert shift.dtype == np.float64 and shift.shape == (p, n, 2)
        np.testing.assert_allclose(shift, com - com[:, :1], atol=1e-9)
        np.testing.assert_array_equal(shift[:, 0], 0.0)
        for k in range(p):  # frame-0 centre lies on its label
            r, c = np.round(com[k, 0]).astype(int)
            assert labels[r, c] == k + 1
        glob = h5["/xanes/global_shift"][()]
        assert glob.dtype == np.float64 and glob.shape == (n, 2)
        for name in ("/xanes/edge_energy", "/xanes/whiteline_energy"):
            data = h5[name][()]
            assert data.dtype == np.float32 and data.shape == (128, 128)
            assert np.all(np.isnan(data[labels == 0]))
            assert np.isfinite(data[labels > 0]).mean() > 0.5
            assert h5[name].attrs["units"] == "eV"
        spectra = h5["/xanes/spectra"][()]
        assert spectra.dtype == np.float64 and spectra.shape == (p, n)
        np.testing.assert_array_equal(h5["/xanes/energy"][()], energies)
        # this scene's background moves with the sample: no post-edge pass, nothing backfilled
        assert not h5["/xanes"].attrs["post_edge_applied"]
        backfilled = h5["/xanes/backfilled"][()]
        assert backfilled.dtype == bool and backfilled.shape == (p, n) and not backfilled.any()
        # its particles move on their own (not rigidly): no deviation smoothed
        smoothed = h5["/xanes/smoothed"][()]
        assert smoothed.dtype == bool and smoothed.shape == (p, n) and not smoothed.any()
    truth_labels = scene.truth_labels()
    which = [np.bincount(truth_labels[labels == k + 1]).argmax() - 1 for k in range(p)]
    assert sorted(which) == list(range(p))
    truth = np.stack([scene.truth_shift(0, i) for i in range(n)], axis=1)[which]
    rms = np.sqrt(np.nanmean(np.sum((shift - truth) ** 2, axis=-1)))
    assert rms < 0.3


def test_params_file(scan_file, tmp_path):
    path, _, _ = scan_file
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"track": {"post_edge_pass": "on"}}))
    out = tmp_path / "out.h5"
    assert (
        _run("xanes", "align", str(path), "-o", str(out), "--params", str(params), "--no-progress")
        == 0
    )
    with h5py.File(out, "r") as h5:  # the pass forced on is reported as applied
        assert h5["/xanes"].attrs["post_edge_applied"]
    params.write_text(json.dumps({"track": {"no_such_key": 1}}))
    assert _run("xanes", "align", str(path), "-o", str(out), "--params", str(params)) == 2


@pytest.mark.parametrize(
    ("drop", "replace", "named"),
    [
        ("/entry/instrument/monochromator/energy", None, "/entry/instrument/monochromator/energy"),
        ("/entry/data/data", None, "/entry/data/data"),
        (
            "/entry/instrument/monochromator/energy",
            np.arange(7.0),
            "/entry/instrument/monochromator/energy",
        ),
        ("/entry/data/flat", np.ones((2, 64, 64)), "/entry/data/flat"),
        ("/entry/data/data", np.ones((128, 128)), "/entry/data/data"),
    ],
)
def test_missing_or_inconsistent_dataset(scan_file, tmp_path, caplog, drop, replace, named):
    path, _, _ = scan_file
    broken = tmp_path / "broken.h5"
    broken.write_bytes(path.read_bytes())
    with h5py.File(broken, "a") as h5:
        del h5[drop]
        if replace is not None:
            h5[drop] = replace
    with caplog.at_level(logging.ERROR, logger="services.cli.xanes"):
        code = _run("xanes", "align", str(broken), "-o", str(tmp_path / "o.h5"), "--no-progress")
    assert code == 2
    assert named in caplog.text
    assert not (tmp_path / "o.h5").exists()


def test_missing_input_file(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert _run("xanes", "align", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "o.h5")) == 2
    assert "nope.h5" in caplog.text


def test_help_documents_datasets(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["xanes", "align", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ("/entry/data/data", "/xanes/particle_com", "/xanes/edge_energy"):
        assert name in text


def test_import_is_light():
    code = (
        "import sys, services.cli.xanes; "
        "heavy = [m for m in ('torch', 'h5py', 'pipelines.xanes', 'skimage') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_align_writes_nan_and_flags_for_a_frame_without_particles(tmp_path):
    """A frame with the sample out of the beam: its drift is unknown (NaN), never 0.0."""
    n = 12
    scene = TxmScene.random(8, shape=(128, 128), n_particles=4, n_frames=n)
    energies = default_energies(n)
    frames = [scene.frame(e, scan=0, index=i) for i, e in enumerate(energies)]
    frames[5] = scene.flat(energies[5])
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = np.round(np.stack(frames)).astype(np.uint16)
        h5["/entry/instrument/monochromator/energy"] = energies
        h5["/entry/data/flat"] = scene.flat(8400.0)[None].astype(np.uint16)
        h5["/entry/data/dark"] = scene.dark()[None].astype(np.uint16)
    assert _run("xanes", "align", str(path), "-o", str(out), "--no-progress") == 0
    with h5py.File(out, "r") as h5:
        glob = h5["/xanes/global_shift"][()]
        n_found = h5["/xanes/n_found"][()]
        trusted = h5["/xanes/trusted"][()]
        shift = h5["/xanes/particle_shift"][()]
        partial = h5["/xanes/partial"][()]
        assert h5["/xanes/spread"].shape == (n,)
    assert np.all(np.isnan(glob[5])) and n_found[5] == 0 and not trusted[5]
    assert np.all(np.isnan(shift[:, 5]))
    assert np.all(np.isfinite(glob[6:])) and np.all(trusted[6:]) and np.all(n_found[6:] > 0)
    assert partial.dtype == np.bool_ and partial.shape == (shift.shape[0],)
