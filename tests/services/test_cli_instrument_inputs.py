"""The offline verbs on instrument files (one file, several, a folder) and the length units they
write: real Data Exchange and Xradia files, and files written here in the NXtomo, FXI and TIFF
layouts, checked against the same data in the beamwatch HDF5 layout."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.cli import particles as cli_particles
from services.cli import tomo as cli_tomo
from services.cli import xanes as cli_xanes
from tests.conftest import SHARED_DATA
from tests.sim import scanned_cathode

TOOTH = SHARED_DATA / "tomo_tooth_dxchange" / "tooth.h5"
CHIP = SHARED_DATA / "xradia_chip"
SSRL = SHARED_DATA / "txm_ssrl_nca"
#: The tooth's rotation axis: about 296.5 px (tomopy's entropy search, tolerance 0.5 px). The
#: 0/179-degree pair alone lands at 295.58; with the seam refinement (scan ends one step short of
#: 180, bias-corrected) at 295.90. Independent estimate on this file: the centre-of-mass
#: sinusoid of all 181 projections gives 296.0-296.3 (with / without an edge baseline); the
#: refinement's error on tooth-like phantoms is -0.02 to -0.14 px.
TOOTH_CENTER_PX = 296.5


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data {path} not found (see ../shared/data/README.md)")
    return path


@pytest.fixture()
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beamwatch")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (cli_tomo, cli_particles, cli_xanes):
        module.register(sub)
    return parser


def run(parser: argparse.ArgumentParser, *argv: str | Path) -> int:
    args = parser.parse_args([str(a) for a in argv])
    return int(args.func(args))


# ---------------------------------------------------------------------------------- tomo
def test_tooth_data_exchange_end_to_end(parser, tmp_path: Path) -> None:
    out = tmp_path / "tooth_volume.h5"
    assert run(parser, "tomo", "reconstruct", need(TOOTH), "-o", out) == 0
    with h5py.File(out, "r") as h5:
        data = h5["/entry/data/data"]
        volume = data[()]
        attrs = dict(data.attrs)
    assert volume.shape == (2, 640, 640) and np.isfinite(volume).all()
    assert attrs["rotation_center"] == pytest.approx(TOOTH_CENTER_PX, abs=0.65)
    assert attrs["rotation_center"] > 295.8  # the pair-only estimate (295.58) fails here
    assert attrs["rotation_center_units"] == "px"
    # the file states no pixel size: px, and no number that claims um
    assert attrs["length_unit"] == "px" and np.isnan(attrs["voxel_size_um"])
    # the tooth (dense, bright) is inside the field, air around it is near zero
    centre = volume[0, 220:420, 220:420]
    corner = volume[0, 40:90, 40:90]
    assert float(np.median(centre)) > 5 * abs(float(np.median(corner)))


@pytest.fixture(scope="module")
def projections() -> dict[str, np.ndarray]:
    from pipelines.tomo.project import forward_project
    from synthetic.cathode import make_cathode_volume, simulate_detector

    vol = make_cathode_volume((3, 48, 48), seed=21)
    angles = np.linspace(0, 180, 73)
    frames = simulate_detector(forward_project(vol.attenuation, angles), seed=3)
    return {
        "data": frames.projections,
        "rotation_angle": angles,
        "flat": frames.flat[None] if frames.flat.ndim == 2 else frames.flat,
        "dark": frames.dark[None] if frames.dark.ndim == 2 else frames.dark,
    }


def reconstruct_layout(parser, projections, tmp_path: Path) -> np.ndarray:
    src = tmp_path / "layout.h5"
    with h5py.File(src, "w") as h5:
        for name, value in projections.items():
            h5[f"/entry/data/{name}"] = value
    out = tmp_path / "layout_volume.h5"
    assert run(parser, "tomo", "reconstruct", src, "-o", out, "--center", "24") == 0
    with h5py.File(out, "r") as h5:
        return h5["/entry/data/data"][()]


def test_nxtomo_radians_give_the_same_volume_as_the_degree_layout(
    parser, projections, tmp_path: Path
) -> None:
    reference = reconstruct_layout(parser, projections, tmp_path)
    flat, dark, data = projections["flat"], projections["dark"], projections["data"]
    keys = np.r_[np.full(len(dark), 2), np.full(len(flat), 1), np.zeros(len(data))].astype(int)
    path = tmp_path / "scan.nx"
    with h5py.File(path, "w") as h5:
        entry = h5.create_group("entry")
        entry["definition"] = "NXtomo"
        entry["instrument/detector/data"] = np.concatenate([dark, flat, data]).astype(np.float32)
        entry["instrument/detector/image_key"] = keys
        angles = np.r_[np.zeros(len(dark) + len(flat)), np.deg2rad(projections["rotation_angle"])]
        entry["sample/rotation_angle"] = angles
        entry["sample/rotation_angle"].attrs["units"] = "rad"
        entry["sample/x_pixel_size"] = 0.5
        entry["sample/x_pixel_size"].attrs["units"] = "um"
    out = tmp_path / "nx_volume.h5"
    assert run(parser, "tomo", "reconstruct", path, "-o", out, "--center", "24") == 0
    with h5py.File(out, "r") as h5:
        volume = h5["/entry/data/data"][()]
        assert h5["/entry/data/data"].attrs["voxel_size_um"] == pytest.approx(0.5)
        assert h5["/entry/data/data"].attrs["length_unit"] == "um"
    np.testing.assert_allclose(volume, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    # the voxel size travels on with the volume: cracks map reads it from the attribute
    cracks = tmp_path / "cracks.h5"
    assert run(parser, "cracks", "map", out, "-o", cracks, "--window", "8") == 0
    with h5py.File(cracks, "r") as h5:
        assert h5["cracks"].attrs["voxel_size_um"] == pytest.approx(0.5)
        assert h5["cracks"].attrs["window_um"] == pytest.approx(4.0)


def test_tiff_folder_needs_angles_then_matches_the_layout(
    parser, projections, tmp_path: Path, caplog
) -> None:
    import tifffile

    reference = reconstruct_layout(parser, projections, tmp_path)
    folder = tmp_path / "tiffs"
    folder.mkdir()
    for i, frame in enumerate(projections["data"]):
        tifffile.imwrite(folder / f"proj_{i:04d}.tif", frame.astype(np.float32))
    tifffile.imwrite(folder / "flat.tif", projections["flat"].astype(np.float32))
    tifffile.imwrite(folder / "dark.tif", projections["dark"].astype(np.float32))
    out = tmp_path / "tiff_volume.h5"
    with caplog.at_level(logging.ERROR, logger="services.cli.tomo"):
        assert run(parser, "tomo", "reconstruct", folder, "-o", out) == 2
    assert "give --angles START STOP" in caplog.text and not out.exists()
    argv = ["tomo", "reconstruct", folder, "-o", out, "--center", "24", "--angles", "0", "180"]
    assert run(parser, *argv) == 0
    with h5py.File(out, "r") as h5:
        volume = h5["/entry/data/data"][()]
    np.testing.assert_allclose(volume, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_angles_option_only_for_files_without_angles(
    parser, projections, tmp_path: Path, caplog
) -> None:
    src = tmp_path / "layout.h5"
    with h5py.File(src, "w") as h5:
        for name, value in projections.items():
            h5[f"/entry/data/{name}"] = value
    with caplog.at_level(logging.ERROR, logger="services.cli.tomo"):
        argv = ["tomo", "reconstruct", src, "-o", tmp_path / "o.h5", "--angles", "0", "180"]
        assert run(parser, *argv) == 2
        argv[2] = need(TOOTH)
        assert run(parser, *argv) == 2
    assert caplog.text.count("--angles is for files that") == 2


def test_xradia_txrm_pixel_size_from_the_file_or_the_option(parser, tmp_path: Path) -> None:
    src = need(CHIP / "txrm_test_chip_tomo.txrm")
    out = tmp_path / "chip.h5"
    # 7 angles over 90 degrees: no 0/180 pair, so the axis is given
    assert run(parser, "tomo", "reconstruct", src, "-o", out, "--center", "128") == 0
    with h5py.File(out, "r") as h5:
        attrs = dict(h5["/entry/data/data"].attrs)
        assert h5["/entry/data/data"].shape == (256, 256, 256)
    assert attrs["voxel_size_um"] == pytest.approx(0.1558, abs=1e-4)
    assert attrs["length_unit"] == "um"
    argv = ["tomo", "reconstruct", src, "-o", out, "--center", "128", "--pixel-size-um", "0.2"]
    assert run(parser, *argv) == 0
    with h5py.File(out, "r") as h5:
        assert h5["/entry/data/data"].attrs["voxel_size_um"] == pytest.approx(0.2)


def test_projections_are_not_a_volume(parser, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        assert run(parser, "cracks", "map", need(TOOTH), "-o", tmp_path / "c.h5") == 2
        code = run(parser, "particles", "analyze", TOOTH, "-o", tmp_path / "p.h5")
    assert code == 2
    assert caplog.text.count("reconstruct them first with `beamwatch tomo reconstruct`") == 2


# ---------------------------------------------------------------------------------- volumes
@pytest.fixture(scope="module")
def tiff_volume(tmp_path_factory) -> dict[str, Path]:
    """A synthetic reconstructed cathode as a TIFF stack with and without a pixel size."""
    import tifffile

    _, volume = scanned_cathode((32, 64, 64))
    volume = volume.astype(np.float32)
    folder = tmp_path_factory.mktemp("tiff_volume")
    sized = folder / "volume_sized.tif"
    tifffile.imwrite(
        sized, volume, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um"}
    )
    plain = folder / "volume_plain.tif"
    tifffile.imwrite(plain, volume, photometric="minisblack")
    return {"sized": sized, "plain": plain}


def test_cracks_map_tiff_volume_units(parser, tiff_volume, tmp_path: Path) -> None:
    out = tmp_path / "cracks.h5"
    argv = ["cracks", "map", tiff_volume["sized"], "-o", out, "--window", "16"]
    assert run(parser, *argv) == 0
    with h5py.File(out, "r") as h5:
        g = h5["cracks"]
        assert g["mask"].shape == (32, 64, 64)
        assert g.attrs["voxel_size_um"] == pytest.approx(0.5) and g.attrs["length_unit"] == "um"
        assert g.attrs["window"] == 16 and g.attrs["window_um"] == pytest.approx(8.0)
        np.testing.assert_allclose(g["depth_um"][()], (np.arange(32) + 0.5) * 0.5)
    assert run(parser, "cracks", "map", tiff_volume["plain"], "-o", out, "--window", "16") == 0
    with h5py.File(out, "r") as h5:
        g = h5["cracks"]
        assert g.attrs["length_unit"] == "px" and np.isnan(g.attrs["voxel_size_um"])
        assert np.isnan(g.attrs["window_um"]) and "depth_um" not in g


def test_particles_analyze_size_split_in_um_only_when_the_size_is_known(
    parser, tiff_volume, tmp_path: Path
) -> None:
    out = tmp_path / "particles.h5"
    assert run(parser, "particles", "analyze", tiff_volume["plain"], "-o", out) == 0
    with h5py.File(out, "r") as h5:
        attrs = dict(h5["particles"].attrs)
        table = h5["particles/table"][()]
    stats = json.loads(attrs["statistics"])
    assert attrs["length_unit"] == "px" and np.isnan(attrs["voxel_size_um"])
    assert stats["length_unit"] == "px" and stats["small"] is None and stats["large"] is None
    assert "size_edges_px" in stats and not any("_um" in k for k in stats if k != "voxel_size_um")
    assert stats["overall"]["mean_diameter_px"] > 0
    # the same volume with 0.5 um voxels: diameters in um, the 11 um split applied
    assert run(parser, "particles", "analyze", tiff_volume["sized"], "-o", out) == 0
    with h5py.File(out, "r") as h5:
        stats = json.loads(h5["particles"].attrs["statistics"])
        assert h5["particles"].attrs["voxel_size_um"] == pytest.approx(0.5)
    assert stats["length_unit"] == "um" and stats["size_threshold_um"] == 11.0
    inside = ~table["touches_border"]
    diameters_um = table["equivalent_diameter_px"][inside] * 0.5
    assert stats["small"]["count"] == int((diameters_um < 11.0).sum())
    assert stats["large"]["count"] == int((diameters_um >= 11.0).sum())
    assert stats["overall"]["mean_diameter_um"] == pytest.approx(diameters_um.mean())


def test_separator_at_the_last_slice(parser, tiff_volume, tmp_path: Path) -> None:
    from pipelines.particles.stats import StatsParams, particle_statistics

    out = tmp_path / "cracks.h5"
    argv = ["cracks", "map", tiff_volume["sized"], "-o", out, "--window", "16"]
    assert run(parser, *argv, "--separator", "last") == 0
    with h5py.File(out, "r") as h5:
        g = h5["cracks"]
        assert g.attrs["separator_slice"] == 31 and "last slice" in g.attrs["z_convention"]
        np.testing.assert_allclose(g["depth_um"][()], (31 - np.arange(32) + 0.5) * 0.5)
    out = tmp_path / "particles.h5"
    argv = ["particles", "analyze", tiff_volume["sized"], "-o", out, "--separator", "last"]
    assert run(parser, *argv) == 0
    with h5py.File(out, "r") as h5:
        stats = json.loads(h5["particles"].attrs["statistics"])
        table = h5["particles/table"][()]
        assert h5["particles"].attrs["separator_slice"] == 31
    flipped = table.copy()
    flipped["centroid_z"] = 31 - table["centroid_z"]  # the table keeps the file's z
    expected = particle_statistics(
        flipped, depth=32, params=StatsParams(voxel_size_um=0.5, size_threshold_um=11.0)
    )
    unflipped = particle_statistics(
        table, depth=32, params=StatsParams(voxel_size_um=0.5, size_threshold_um=11.0)
    )

    def diameters(groups: list) -> list:  # noqa: ANN001
        return [None if np.isnan(g.mean_diameter_um) else g.mean_diameter_um for g in groups]

    got = [g["mean_diameter_um"] for g in stats["by_depth"]]
    assert got == pytest.approx(diameters(expected.by_depth), nan_ok=True)
    assert diameters(expected.by_depth) != diameters(unflipped.by_depth)  # the check can fail


# ---------------------------------------------------------------------------------- XANES
def test_xanes_align_ssrl_folder(parser, tmp_path: Path) -> None:
    out = tmp_path / "ssrl.h5"
    assert run(parser, "xanes", "align", need(SSRL), "-o", out, "--no-progress") == 0
    with h5py.File(out, "r") as h5:
        g = h5["xanes"]
        np.testing.assert_array_equal(g["energy"][()], [8324.0] * 3 + [8354.0] * 3)
        assert g["labels"][()].max() >= 3  # the three large particles at least
        assert g.attrs["pixel_size_um"] == pytest.approx(0.0312, abs=1e-4)
        assert g.attrs["length_unit"] == "um"
        np.testing.assert_allclose(g["global_shift_um"][()], g["global_shift"][()] * 0.0312, 1e-4)
        assert "xradia: 6 file(s)" in g.attrs["source"]


def write_fxi(path: Path, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic FXI XANES file as FXI's exporter writes it: normalised float32 frames,
    energies in keV."""
    from synthetic.txm import TxmScene, default_energies

    scene = TxmScene.random(5, shape=(128, 128), n_particles=4, n_frames=n_frames)
    energies = default_energies(n_frames)
    dark = scene.dark().astype(np.float32)
    frames, flats = [], []
    for i, e in enumerate(energies):
        flat = scene.flat(e).astype(np.float32)
        frames.append((scene.frame(e, scan=0, index=i) - dark) / (flat - dark))
        flats.append(flat)
    with h5py.File(path, "w") as h5:
        h5["img_xanes"] = np.stack(frames).astype(np.float32)
        h5["img_bkg"] = np.stack(flats)
        h5["img_dark"] = np.repeat(dark[None], n_frames, axis=0)
        h5["X_eng"] = energies / 1000.0
        h5["Pixel Size"] = "30.0nm"
    return energies, np.stack(frames)


def test_xanes_align_fxi_file(parser, tmp_path: Path) -> None:
    src = tmp_path / "xanes_scan2_id_12.h5"
    energies, _ = write_fxi(src, 20)
    out = tmp_path / "fxi.h5"
    assert run(parser, "xanes", "align", src, "-o", out, "--no-progress") == 0
    with h5py.File(out, "r") as h5:
        g = h5["xanes"]
        np.testing.assert_allclose(g["energy"][()], energies, rtol=1e-9)
        assert g["labels"][()].max() >= 3
        assert g.attrs["pixel_size_um"] == pytest.approx(0.03)
        edge = g["edge_energy"][()]
        finite = edge[np.isfinite(edge)]
        assert finite.size > 100 and energies.min() < np.median(finite) < energies.max()


def test_xanes_align_input_errors(parser, tmp_path: Path, caplog) -> None:
    import tifffile

    folder = tmp_path / "no_energies"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"frame_{i}.tif", np.full((16, 16), 100 + i, np.uint16))
    with caplog.at_level(logging.ERROR, logger="services.cli.xanes"):
        assert run(parser, "xanes", "align", folder, "-o", tmp_path / "o.h5") == 2
        assert run(parser, "xanes", "align", tmp_path / "missing", "-o", tmp_path / "o.h5") == 2
    assert "no energies" in caplog.text and "does not exist" in caplog.text
    assert not (tmp_path / "o.h5").exists()


def test_xanes_layout_file_without_pixel_size_says_px(parser, tmp_path: Path) -> None:
    from tests.services.test_cli_xanes import write_scan

    src, _, _ = write_scan(tmp_path / "scan.h5", 12)
    out = tmp_path / "o.h5"
    assert run(parser, "xanes", "align", src, "-o", out, "--no-progress") == 0
    with h5py.File(out, "r") as h5:
        assert h5["xanes"].attrs["length_unit"] == "px"
        assert np.isnan(h5["xanes"].attrs["pixel_size_um"]) and "global_shift_um" not in h5["xanes"]
    with h5py.File(src, "a") as h5:
        h5["/entry/data/data"].attrs["pixel_size_um"] = 0.04
    assert run(parser, "xanes", "align", src, "-o", out, "--no-progress") == 0
    with h5py.File(out, "r") as h5:
        assert h5["xanes"].attrs["pixel_size_um"] == pytest.approx(0.04)
