"""``xanes align --reference/--clusters`` and ``xanes trajectory`` end to end through the CLI:
on the real SSRL folder with its two real spectra, and on stacks written here whose per-pixel
phase fractions are known (mixtures of the same two real spectra)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pipelines.xanes.params import SpectraParams
from pipelines.xanes.spectra import analyse_spectra
from services.cli import export as cli_export
from services.cli import xanes as cli_xanes
from services.cli.xanes_chemistry import ChemistryInputError, read_reference
from tests.conftest import SHARED_DATA

SSRL = SHARED_DATA / "txm_ssrl_nca"
PRISTINE = SSRL / "NCA_xanes.csv"
CHARGED = SSRL / "NCA-cell2-soc1-fov1-xanesspectrum.tsv"
SHAPE = (96, 96)
#: particle centres (row, col) and radius in px
PARTICLES = [(24, 26, 11), (30, 70, 10), (70, 44, 12)]
ENERGIES = np.concatenate(
    [np.arange(8250.0, 8320.0, 10.0), np.arange(8320.0, 8380.0, 2.5), np.arange(8380, 8501, 15)]
)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data {path} not found (see ../shared/data/README.md)")
    return path


@pytest.fixture()
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beamwatch")
    cli_xanes.register(parser.add_subparsers(dest="command", required=True))
    return parser


def run(parser: argparse.ArgumentParser, *argv: str | Path) -> int:
    args = parser.parse_args([str(a) for a in argv])
    return int(args.func(args))


def references() -> list[str]:
    return ["--reference", f"pristine={need(PRISTINE)}", "--reference", f"charged={CHARGED}"]


def normalised_reference(path: Path) -> np.ndarray:
    energies, mu = read_reference(path)
    analysis = analyse_spectra(energies, mu, params=SpectraParams())
    return np.interp(ENERGIES, analysis.energies, analysis.normalised)


def fraction_truth(offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (k + 1) and the pristine fraction per pixel: a ramp across each particle."""
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    labels = np.zeros(SHAPE, dtype=np.int32)
    fraction = np.full(SHAPE, np.nan)
    for k, (r0, c0, radius) in enumerate(PARTICLES):
        inside = (rows - r0) ** 2 + (cols - c0) ** 2 <= radius**2
        labels[inside] = k + 1
        ramp = 0.15 + 0.5 * (cols - (c0 - radius)) / (2 * radius) + 0.1 * k + offset
        fraction[inside] = np.clip(ramp, 0.0, 1.0)[inside]
    return labels, fraction


def write_stack(
    path: Path, *, offset: float = 0.0, shift: tuple[int, int] = (0, 0), start: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A XANES stack in the beamwatch layout: per pixel OD = 0.25 + 0.8 * (f * pristine +
    (1 - f) * charged) inside particles, 0 outside, 1e4 flat counts, 0.3 % noise."""
    pristine, charged = normalised_reference(PRISTINE), normalised_reference(CHARGED)
    labels, fraction = fraction_truth(offset)
    f = np.nan_to_num(fraction)[None]
    od = (labels > 0)[None] * (
        0.25 + 0.8 * (f * pristine[:, None, None] + (1 - f) * charged[:, None, None])
    )
    rng = np.random.default_rng(7)
    counts = 1e4 * np.exp(-od) * (1 + 0.003 * rng.standard_normal(od.shape))
    counts = np.roll(counts, shift, axis=(1, 2))
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = counts.astype(np.float32)
        h5["/entry/instrument/monochromator/energy"] = ENERGIES
        h5["/entry/data/flat"] = np.full(SHAPE, 1e4, dtype=np.float32)
        if start is not None:
            h5["/entry"].attrs["start_time"] = start
    return np.roll(labels, shift, axis=(0, 1)), np.roll(fraction, shift, axis=(0, 1))


def test_lcf_and_clusters_recover_known_pixel_fractions(parser, tmp_path: Path) -> None:
    src, out = tmp_path / "stack.h5", tmp_path / "out.h5"
    labels, fraction = write_stack(src)
    argv = ["xanes", "align", src, "-o", out, "--no-progress", *references(), "--clusters", "2"]
    assert run(parser, *argv) == 0
    with h5py.File(out, "r") as h5:
        lcf, clusters = h5["xanes/lcf"], h5["xanes/clusters"]
        assert [n.decode() for n in lcf["reference_names"][()]] == ["pristine", "charged"]
        fmap = lcf["fraction_map"][()]
        rmap = lcf["r_factor_map"][()]
        weights = lcf["particle_weights"][()]
        pfrac = lcf["particle_fractions"][()]
        cl_labels = clusters["labels"][()]
        cl_spectra = clusters["spectra"][()]
        found_labels = h5["xanes/labels"][()]
        assert lcf.attrs["status"].startswith("fitted")
    # the fitted pixels are the particles' pixels; the background stays NaN, never 0
    particles = found_labels > 0
    assert np.isnan(fmap[:, ~particles]).all() and np.isnan(rmap[~particles]).all()
    core = particles & (labels > 0)
    assert core.sum() > 0.9 * (labels > 0).sum()
    # inside (>= 2 px from the rim; the rim pixels mix with the background in the aligned
    # stack: median error 0.014 there) the fraction is recovered to about 0.01
    inner = core & (ndimage.distance_transform_edt(labels > 0) >= 2)
    err = np.abs(fmap[0][inner] - fraction[inner])
    assert np.isfinite(err).all()
    assert np.median(err) < 0.015 and np.percentile(err, 95) < 0.03
    np.testing.assert_allclose(fmap[0][core] + fmap[1][core], 1.0, atol=1e-5)
    assert np.nanmedian(rmap[core]) < 1e-3
    # particles: the label of frame 0 is found again; mean fraction and total weight 0.8 / 0.8
    for k in range(len(PARTICLES)):
        mine = found_labels == k + 1
        truth_k = labels[mine & (labels > 0)]
        assert np.bincount(truth_k).argmax() > 0
        expected = np.nanmean(fraction[mine])
        assert pfrac[k, 0] == pytest.approx(expected, abs=0.03)
        assert weights[k].sum() == pytest.approx(1.0, abs=0.05)  # normalised spectra
    # two clusters: low- and high-pristine pixels, cluster spectra between the references
    # (the fractions are a continuous ramp 0.15-0.95: k-means cuts it in two)
    inner_cl = inner & (cl_labels >= 0)
    means = [float(np.mean(fraction[inner_cl & (cl_labels == c)])) for c in (0, 1)]
    assert abs(means[1] - means[0]) > 0.2
    above = fraction[inner_cl] > 0.5 * sum(means)
    agree = np.mean(above == (cl_labels[inner_cl] == int(np.argmax(means))))
    assert agree > 0.9
    assert (cl_labels[~particles] == -1).all() and cl_spectra.shape == (2, ENERGIES.size)
    # beamwatch export writes the maps as TIFF stacks that read back equal
    export_parser = argparse.ArgumentParser(prog="beamwatch")
    cli_export.register(export_parser.add_subparsers(dest="command", required=True))
    assert run(export_parser, "export", out, "-o", tmp_path / "tiff") == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "tiff/out_lcf_fractions.tif"), fmap)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "tiff/out_xanes_clusters.tif"), cl_labels
    )


def test_ssrl_folder_with_its_two_real_spectra(parser, tmp_path: Path, caplog) -> None:
    out = tmp_path / "ssrl.h5"
    argv = ["xanes", "align", need(SSRL), "-o", out, "--no-progress", *references()]
    with caplog.at_level(logging.WARNING):
        assert run(parser, *argv, "--clusters", "2") == 0
    with h5py.File(out, "r") as h5:
        lcf, clusters = h5["xanes/lcf"], h5["xanes/clusters"]
        energies = h5["xanes/energy"][()]
        refs = lcf["references"][()]
        n_particles = int(h5["xanes/labels"][()].max())
        assert lcf["particle_fractions"].shape == (n_particles, 2)
        assert lcf["fraction_map"].shape == (2, 1024, 1024)
        # two energies (8324, 8354 eV): no pre-edge window, nothing can be normalised, so
        # every result says unknown (NaN, -1) and the status says why
        assert np.isnan(lcf["fraction_map"][()]).all()
        assert np.isnan(lcf["particle_weights"][()]).all()
        assert "no pixel fitted" in lcf.attrs["status"]
        assert (clusters["labels"][()] == -1).all()
        assert clusters.attrs["status"].startswith("not computed")
        assert h5["xanes/lcf/reference_names"].attrs["files"][1].endswith(".tsv")
        # the scan's time stamp, from the earliest sample frame's ImageInfo/Date
        assert h5["xanes"].attrs["start_time"] == "2016-05-29T15:02:37"
    # the real references, normalised (pre-edge 8249-8320, post-edge 8380-8500 eV): below the
    # edge near 0, at 8354 eV on the white line above 1; the charged one's edge is higher in
    # energy (8343.4 vs 8342.3 eV), so it absorbs less at... both at 8354 are above 1
    below = energies == 8324.0
    above = energies == 8354.0
    assert np.all(np.abs(refs[:, below]) < 0.15) and np.all(refs[:, above] > 1.0)
    assert "no pixel fitted" in caplog.text


def test_reference_files_are_checked(parser, tmp_path: Path) -> None:
    src = tmp_path / "stack.h5"
    write_stack(src)
    bad = tmp_path / "bad.txt"
    bad.write_text("# energy mu\n8300 0.1\n8310 x\n")
    out = tmp_path / "out.h5"
    assert run(parser, "xanes", "align", src, "-o", out, "--reference", f"a={bad}") == 2
    assert run(parser, "xanes", "align", src, "-o", out, "--reference", "no-equals") == 2
    kev = tmp_path / "kev.txt"
    kev.write_text("\n".join(f"{e / 1000} 1.0" for e in ENERGIES))
    assert run(parser, "xanes", "align", src, "-o", out, "--reference", f"a={kev}") == 2
    short = tmp_path / "short.csv"  # no post-edge: cannot be normalised
    short.write_text("energy,mu\n" + "\n".join(f"{e},{e / 1e4}" for e in range(8250, 8340, 5)))
    assert run(parser, "xanes", "align", src, "-o", out, "--reference", f"a={short}") == 2
    assert run(parser, "xanes", "align", src, "-o", out, "--clusters", "1") == 2
    with pytest.raises(ChemistryInputError, match="line 3"):
        read_reference(bad)
    # a header line and a comma-separated Athena-like export read fine
    energies, mu = read_reference(short)
    assert energies[0] == 8250 and mu[0] == pytest.approx(0.825)


def test_help_documents_the_datasets(parser, capsys) -> None:
    with pytest.raises(SystemExit):
        parser.parse_args(["xanes", "align", "--help"])
    text = capsys.readouterr().out
    for name in ("/xanes/lcf/fraction_map", "/xanes/lcf/r_factor_map", "/xanes/clusters/labels"):
        assert name in text
    assert "NORMALISED AUTOMATICALLY" in text
