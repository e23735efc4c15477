"""``beamwatch export`` on the files the offline commands write: TIFF stacks that read back equal
(with the voxel size when known), CSV tables with every row, spectra as column text
(energy_eV mu_norm mu_raw)."""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.cli import export as cli_export
from services.cli import particles as cli_particles
from services.cli import tomo as cli_tomo
from services.cli import xanes as cli_xanes
from services.core.instrument_files import read_instrument_files
from tests.sim import scanned_cathode


@pytest.fixture()
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beamwatch")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (cli_export, cli_particles, cli_tomo, cli_xanes):
        module.register(sub)
    return parser


def run(parser: argparse.ArgumentParser, *argv: str | Path) -> int:
    args = parser.parse_args([str(a) for a in argv])
    return int(args.func(args))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_export_xanes_align_result(parser, tmp_path: Path) -> None:
    from tests.services.test_cli_instrument_inputs import write_fxi

    src = tmp_path / "xanes_scan2_id_3.h5"
    write_fxi(src, 20)  # 20 energies across the edge, pixel size 30 nm
    result = tmp_path / "fxi.h5"
    assert run(parser, "xanes", "align", src, "-o", result, "--no-progress") == 0
    out = tmp_path / "export"
    assert run(parser, "export", result, "-o", out) == 0
    with h5py.File(result, "r") as h5:
        labels = h5["/xanes/labels"][()]
        spectra = h5["/xanes/spectra"][()]
        raw = h5["/xanes/spectra_raw"][()]
        energy = h5["/xanes/energy"][()]
        shift = h5["/xanes/global_shift"][()]
    back = read_instrument_files([out / "fxi_xanes_labels.tif"])
    np.testing.assert_array_equal(back.frames[0], labels)
    assert back.pixel_size_um == pytest.approx(0.03, abs=1e-6)
    texts = sorted(out.glob("fxi_particle_*.txt"))
    assert len(texts) == len(spectra) >= 3
    with_data = 0
    for k, path in enumerate(texts):
        normalised = np.isfinite(spectra[k])
        keep = normalised | np.isfinite(raw[k])
        text = path.read_text()
        assert f"# {int((~normalised).sum())} of {keep.size} frames without mu_norm" in text
        assert text.splitlines()[4] == "# energy_eV mu_norm mu_raw"  # the column names
        if not keep.any():
            continue
        with_data += 1
        columns = np.loadtxt(path, ndmin=2)  # as Athena / Larch read it: '#' comments
        assert columns.shape == (int(keep.sum()), 3)
        np.testing.assert_allclose(columns[:, 0], energy[keep])
        np.testing.assert_allclose(columns[:, 1], spectra[k][keep], rtol=1e-7)
        np.testing.assert_allclose(columns[:, 2], raw[k][keep], rtol=1e-7)
    assert with_data >= 3
    frames = read_csv(out / "fxi_xanes_frames.csv")
    assert [float(r["energy_eV"]) for r in frames] == energy.tolist()
    np.testing.assert_allclose([float(r["dy_px"]) for r in frames], shift[:, 0])
    assert "dy_um" in frames[0]
    particles = read_csv(out / "fxi_xanes_particles.csv")
    assert len(particles) == len(spectra) * len(energy)


def test_spectrum_comment_tells_not_found_from_not_normalisable(tmp_path: Path) -> None:
    from services.cli.export_formats import found_frames, write_spectra

    energy = np.array([8324.0, 8334.0, 8344.0, 8354.0])
    spectra = np.array([[np.nan, 0.2, np.nan, 1.0], [np.nan, np.nan, np.nan, np.nan]])
    com = np.zeros((2, 4, 2))
    com[0, 0] = np.nan  # particle 1 not found in frame 0; its frame 2 has no normalised value
    # particle 2 found everywhere, never normalisable (two energies, as the real SSRL folder)
    (path1, path2) = write_spectra(
        spectra, energy, tmp_path / "s", source="test", found=found_frames(com)
    )
    lines1 = path1.read_text().splitlines()
    assert lines1[1] == (
        "# 2 of 4 frames without mu_norm: particle not found in 1; found but without a "
        "normalised absorbance in 1 (NaN: e.g. no frame in the pre-edge or post-edge window)"
    )
    assert lines1[2] == "# 2 of 4 frames left out (no value at all)"  # no raw spectra given
    assert "mu_raw: not in this result (NaN)" in lines1[3]
    np.testing.assert_allclose(
        np.loadtxt(path1, ndmin=2), [[8334.0, 0.2, np.nan], [8354.0, 1.0, np.nan]]
    )
    assert "particle not found in 0; found but without a normalised absorbance in 4" in (
        path2.read_text()
    )
    (unknown,) = write_spectra(spectra[:1], energy, tmp_path / "u", source="test")
    assert "particle not found or spectrum not normalisable" in unknown.read_text()


def test_spectrum_not_normalisable_keeps_its_raw_optical_density(tmp_path: Path) -> None:
    """A particle whose normalisation failed (two energies, as the real SSRL folder) still has
    a spectrum to read: the raw mean optical density, with mu_norm NaN."""
    from services.cli.export_formats import found_frames, write_spectra

    energy = np.array([8324.0, 8354.0])
    spectra = np.full((2, 2), np.nan)
    raw = np.array([[0.31, 1.27], [np.nan, 0.9]])
    com = np.zeros((2, 2, 2))
    com[1, 0] = np.nan  # particle 2 not found in frame 0
    paths = write_spectra(
        spectra, energy, tmp_path / "s", source="test", found=found_frames(com), raw=raw
    )
    first = np.loadtxt(paths[0], ndmin=2)  # as Athena / Larch read it
    assert first.shape == (2, 3)
    np.testing.assert_allclose(first[:, 0], energy)
    assert np.isnan(first[:, 1]).all()
    np.testing.assert_allclose(first[:, 2], [0.31, 1.27])
    second = np.loadtxt(paths[1], ndmin=2)
    np.testing.assert_allclose(second, [[8354.0, np.nan, 0.9]])
    lines = paths[1].read_text().splitlines()
    assert lines[2] == "# 1 of 2 frames left out (no value at all)"
    assert lines[-2] == "# energy_eV mu_norm mu_raw"
    assert "mu_norm: normalised absorbance (NaN when not normalisable)" in lines[3]
    assert "mu_raw: mean optical density before normalisation" in lines[3]


@pytest.fixture(scope="module")
def volume_tiff(tmp_path_factory) -> Path:
    import tifffile

    _, volume = scanned_cathode((32, 64, 64))
    volume = volume.astype(np.float32)
    path = tmp_path_factory.mktemp("volume") / "cathode.tif"
    tifffile.imwrite(
        path, volume, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um"}
    )
    return path


def test_export_cracks_and_particles(parser, volume_tiff: Path, tmp_path: Path) -> None:
    cracks = tmp_path / "cracks.h5"
    particles = tmp_path / "particles.h5"
    assert run(parser, "cracks", "map", volume_tiff, "-o", cracks, "--window", "16") == 0
    argv = ["particles", "analyze", volume_tiff, "-o", particles, "--cracks", cracks]
    assert run(parser, *argv) == 0
    out = tmp_path / "export"
    assert run(parser, "export", cracks, particles, "-o", out) == 0
    with h5py.File(cracks, "r") as h5:
        mask = h5["/cracks/mask"][()]
        profile = h5["/cracks/depth_profile"][()]
    with h5py.File(particles, "r") as h5:
        labels = h5["/particles/labels"][()]
        table = h5["/particles/table"][()]
    back = read_instrument_files([out / "cracks_crack_mask.tif"])
    np.testing.assert_array_equal(back.frames, mask)
    assert back.pixel_size_um == pytest.approx(0.5)
    back = read_instrument_files([out / "particles_particle_labels.tif"])
    np.testing.assert_array_equal(back.frames, labels)
    rows = read_csv(out / "cracks_cracks_by_slice.csv")
    assert len(rows) == len(profile) == 32
    np.testing.assert_allclose([float(r["depth_um"]) for r in rows], (np.arange(32) + 0.5) * 0.5)
    np.testing.assert_array_equal([float(r["depth_profile"]) for r in rows], profile)
    rows = read_csv(out / "particles_particles.csv")
    assert len(rows) == len(table) > 5
    assert [int(r["label"]) for r in rows] == table["label"].tolist()
    assert {f"slice_scores_{k}" for k in range(10)} <= set(rows[0])
    np.testing.assert_allclose(
        [float(r["equivalent_diameter_px"]) for r in rows], table["equivalent_diameter_px"]
    )


def test_export_errors(parser, tmp_path: Path, caplog) -> None:
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as h5:
        h5["other"] = np.zeros(3)
    with caplog.at_level(logging.ERROR, logger="services.cli.export"):
        assert run(parser, "export", empty, "-o", tmp_path / "out") == 2
        assert run(parser, "export", tmp_path / "missing.h5", "-o", tmp_path / "out") == 2
    assert "none of /entry/data/data, /cracks, /particles or /xanes" in caplog.text
    assert "input file not found" in caplog.text
