"""Readers of instrument files: real Xradia and Data Exchange files from ../shared/data, and small
files this test writes in the FXI, NXtomo, Data Exchange and TIFF layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.core.instrument_files import (
    InstrumentFileError,
    detect_format,
    energy_from_name,
    read_instrument_files,
)
from tests.conftest import SHARED_DATA

CHIP = SHARED_DATA / "xradia_chip"
APS = SHARED_DATA / "txm_aps_nca_fov03"
SSRL = SHARED_DATA / "txm_ssrl_nca"
TOOTH = SHARED_DATA / "tomo_tooth_dxchange" / "tooth.h5"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data {path} not found (see ../shared/data/README.md)")
    return path


def read_as_frame(reference: Path, tmp_path: Path) -> np.ndarray:
    """The frame of a reference file, read as a sample (a copy without ``ref`` in its name)."""
    copy = tmp_path / f"copy_{len(list(tmp_path.iterdir()))}.xrm"
    shutil.copyfile(reference, copy)
    return read_instrument_files([copy]).frames[0]


# ---------------------------------------------------------------------------------- Xradia
def test_txrm_tomography_stack() -> None:
    scan = read_instrument_files([need(CHIP / "txrm_test_chip_tomo.txrm")])
    assert scan.format == "xradia" and scan.kind == "projections"
    assert scan.frames.shape == (7, 256, 256) and scan.frames.dtype == np.uint16
    degrees = np.rad2deg(scan.angles_rad)
    np.testing.assert_allclose(degrees, np.arange(-45, 46, 15), atol=0.05)
    np.testing.assert_allclose(scan.energies_eV, 9200.0, atol=0.1)
    assert scan.pixel_size_um == pytest.approx(0.1558, abs=1e-4)
    np.testing.assert_allclose(scan.exposure_s, 5.0)
    assert scan.flats is None and scan.darks is None
    # every frame is a different image, not one stream read seven times
    assert len({scan.frames[i].tobytes() for i in range(7)}) == 7


def test_txm_is_a_volume_the_volume_commands_take(tmp_path: Path) -> None:
    """A ``.txm`` (reconstructed slices) is the ``.txrm`` container: with no real ``.txm`` in
    ../shared/data, the real ``.txrm`` renamed stands for one (same streams, same reader)."""
    from services.cli.inputs import volume_from_scan

    source = need(CHIP / "txrm_test_chip_tomo.txrm")
    copy = tmp_path / "chip_recon.txm"
    shutil.copyfile(source, copy)
    scan = read_instrument_files([tmp_path])  # a folder holding the .txm
    assert scan.kind == "volume" and scan.frames.shape == (7, 256, 256)
    assert scan.pixel_size_um == pytest.approx(0.1558, abs=1e-4)
    np.testing.assert_array_equal(volume_from_scan(scan, "chip_recon.txm"), scan.frames)
    # the same container named .txrm holds projections, which the volume commands refuse
    with pytest.raises(InstrumentFileError, match="reconstruct them first"):
        volume_from_scan(read_instrument_files([source]), "txrm_test_chip_tomo.txrm")


def test_xrm_with_embedded_reference() -> None:
    scan = read_instrument_files([need(CHIP / "test_chip00.xrm")])
    assert scan.frames.shape == (1, 512, 512)
    assert scan.energies_eV == pytest.approx([7191.05], abs=0.05)
    assert scan.flats is not None and scan.flats.shape == (1, 512, 512)
    assert scan.flat_of_frame == ((0,),)
    assert scan.metadata["references_used"] == {"test_chip00.xrm": ["embedded ReferenceData/Image"]}
    # the reference (40 s) is scaled to the frame's exposure (39.88 s)
    ratio = float(scan.exposure_s[0] / scan.flat_exposure_s[0])
    assert ratio == pytest.approx(39.885 / 40.0, abs=1e-3)
    np.testing.assert_allclose(scan.reference(0), scan.flats[0] * ratio, rtol=1e-5)
    transmission = scan.transmission(0)
    assert transmission.dtype == np.float32 and 0.05 < float(np.median(transmission)) < 1.0


def test_aps_folder_energies_stored_and_flats_by_name_energy_and_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="services.core.instrument_files.xradia"):
        scan = read_instrument_files([need(APS)])
    # three series (ocv, soc01, soc02) of one frame each: read as one scan, and said so
    assert scan.metadata["series"] == ["fov03_xanesocv", "fov03_xanessoc01", "fov03_xanessoc02"]
    (warning,) = [r.getMessage() for r in caplog.records if "series" in r.getMessage()]
    assert "3 series" in warning and "fov03_xanessoc01: fov03_xanessoc01_8353_0eV.xrm" in warning
    assert scan.kind == "xanes" and scan.frames.shape == (3, 1024, 1024)
    np.testing.assert_allclose(scan.energies_eV, [8249.94, 8353.03, 8353.03], atol=0.01)
    assert scan.pixel_size_um == pytest.approx(0.0389, abs=1e-4)
    used = scan.metadata["references_used"]
    # the same energy, and of the two series at 8353 eV the one taken next to the frame
    assert used["fov03_xanesocv_8353_0eV.xrm"] == ["ref_xanesocv_8353_0eV.xrm"]
    assert used["fov03_xanessoc01_8353_0eV.xrm"] == ["ref_xanessoc01_8353_0eV.xrm"]
    assert used["fov03_xanessoc02_8250_0eV.xrm"] == ["ref_xanessoc01_8250_0eV.xrm"]
    # APS: sample and reference exposures are equal, OD = -ln(I / I0) as the README says
    names = [Path(f).name for f in scan.files[:3]]
    i = names.index("fov03_xanesocv_8353_0eV.xrm")
    reference = read_as_frame(APS / "ref_xanesocv_8353_0eV.xrm", tmp_path)
    np.testing.assert_array_equal(scan.reference(i), reference)
    od = -np.log(scan.transmission(i))
    assert 0.0 < float(np.median(od)) < 1.5


def test_reference_files_but_none_at_the_frame_energy() -> None:
    files = [need(APS / "fov03_xanessoc02_8250_0eV.xrm"), APS / "ref_xanesocv_8353_0eV.xrm"]
    with pytest.raises(InstrumentFileError, match=r"no reference \(flat\) file at 8249.9 eV"):
        read_instrument_files(files)
    with pytest.raises(InstrumentFileError, match="only reference"):
        read_instrument_files([APS / "ref_xanesocv_8353_0eV.xrm"])


def test_ssrl_energy_from_file_name_and_flats_scaled_by_exposure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="services.core.instrument_files.xradia"):
        scan = read_instrument_files([need(SSRL)])
    # one series: the energy and the repeat counter (001of003) are all its names differ by
    assert scan.metadata["series"] == ["rep01_20161456_ssrl_test_data"]
    assert not [r for r in caplog.records if "series" in r.getMessage()]
    np.testing.assert_array_equal(scan.energies_eV, [8324.0] * 3 + [8354.0] * 3)
    np.testing.assert_allclose(scan.exposure_s, 0.5)
    np.testing.assert_allclose(scan.flat_exposure_s, 0.3, rtol=1e-6)
    # the README's recipe: I0 = mean flat at the same energy, scaled by 0.5 s / 0.3 s
    flats = sorted(SSRL.glob("rep01_*_ref_*_08354.0_eV_*.xrm"))
    expected = np.mean([read_as_frame(f, tmp_path) for f in flats], axis=0)
    expected = expected * (0.5 / 0.3)
    np.testing.assert_allclose(scan.reference(4), expected, rtol=1e-4)
    assert scan.flat_of_frame[0] != scan.flat_of_frame[4]


@pytest.mark.parametrize(
    ("name", "energy"),
    [
        ("rep01_20161456_ssrl-test-data_08324.0_eV_001of003.xrm", 8324.0),
        ("fov03_xanessoc02_8250_0eV.xrm", 8250.0),
        ("scan_8333.5eV.tif", 8333.5),
        ("fov03_xanessoc02.xrm", None),
        ("frame_0003.tif", None),
    ],
)
def test_energy_from_name(name: str, energy: float | None) -> None:
    assert energy_from_name(name) == energy


# ---------------------------------------------------------------------------------- Data Exchange
def test_dxchange_tooth_degrees_by_specification() -> None:
    scan = read_instrument_files([need(TOOTH)])
    assert scan.format == "dxchange" and scan.kind == "projections"
    assert scan.frames.shape == (181, 2, 640)
    assert scan.flats.shape == (10, 2, 640) and scan.darks.shape == (10, 2, 640)
    with h5py.File(TOOTH, "r") as h5:
        theta = h5["exchange/theta"][()]
    np.testing.assert_allclose(scan.angles_rad, np.deg2rad(theta))
    assert scan.pixel_size_um is None  # the file does not state it


def write_dxchange(path: Path, theta: np.ndarray, units: str | None) -> Path:
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as h5:
        h5["exchange/data"] = rng.integers(100, 200, (theta.size, 4, 8)).astype(np.uint16)
        h5["exchange/data_white"] = np.full((2, 4, 8), 300, np.uint16)
        h5["exchange/theta"] = theta
        if units is not None:
            h5["exchange/theta"].attrs["units"] = units
        res = "measurement/instrument/detection_system/objective/resolution"
        h5[res] = np.array([0.65])
        h5["measurement/instrument/monochromator/energy"] = np.array([25.0])
        h5["measurement/instrument/monochromator/energy"].attrs["units"] = "keV"
    return path


def test_dxchange_units_attribute_and_metadata(tmp_path: Path) -> None:
    # small angles in radians: a value-based guess would take them for degrees
    theta = np.linspace(0, np.pi, 5)
    scan = read_instrument_files([write_dxchange(tmp_path / "rad.h5", theta, "radians")])
    np.testing.assert_allclose(scan.angles_rad, theta)
    assert scan.pixel_size_um == pytest.approx(0.65)
    np.testing.assert_allclose(scan.energies_eV, 25000.0)
    scan = read_instrument_files([write_dxchange(tmp_path / "deg.h5", theta, None)])
    np.testing.assert_allclose(scan.angles_rad, np.deg2rad(theta))
    with pytest.raises(InstrumentFileError, match="neither degrees nor radians"):
        read_instrument_files([write_dxchange(tmp_path / "bad.h5", theta, "gradians")])


# ---------------------------------------------------------------------------------- FXI
def write_fxi_xanes(path: Path, energies_kev: np.ndarray, *, units: str | None = None) -> Path:
    rng = np.random.default_rng(2)
    n = energies_kev.size
    with h5py.File(path, "w") as h5:
        h5["img_xanes"] = rng.uniform(0.2, 0.9, (n, 6, 10)).astype(np.float32)
        h5["img_bkg"] = np.full((n, 6, 10), 900.0, np.float32)
        h5["img_dark"] = np.full((n, 6, 10), 100.0, np.float32)
        h5["X_eng"] = energies_kev
        if units:
            h5["X_eng"].attrs["units"] = units
        h5["Pixel Size"] = "21.6nm"
    return path


def test_fxi_xanes_normalised_frames_energies_in_kev(tmp_path: Path) -> None:
    energies = np.linspace(8.30, 8.40, 5)
    path = write_fxi_xanes(tmp_path / "xanes_scan2_id_1.h5", energies)
    assert detect_format(path) == "fxi"
    scan = read_instrument_files([path])
    assert scan.kind == "xanes" and scan.normalized
    np.testing.assert_allclose(scan.energies_eV, energies * 1000)
    assert scan.pixel_size_um == pytest.approx(0.0216)
    np.testing.assert_array_equal(scan.transmission(3), scan.frames[3])
    # eV values without a units attribute are not silently taken as keV
    with pytest.raises(InstrumentFileError, match="not keV"):
        read_instrument_files([write_fxi_xanes(tmp_path / "ev.h5", energies * 1000)])
    scan = read_instrument_files([write_fxi_xanes(tmp_path / "u.h5", energies * 1000, units="eV")])
    np.testing.assert_allclose(scan.energies_eV, energies * 1000)


def test_fxi_tomography(tmp_path: Path) -> None:
    path = tmp_path / "fly_scan_id_7.h5"
    with h5py.File(path, "w") as h5:
        h5["img_tomo"] = np.ones((4, 6, 10), np.uint16)
        h5["img_bkg"] = np.full((3, 6, 10), 5, np.uint16)
        h5["img_dark"] = np.zeros((2, 6, 10), np.uint16)
        h5["angle"] = np.array([0.0, 60.0, 120.0, 180.0])
        h5["X_eng"] = 8.35
    scan = read_instrument_files([path])
    assert scan.kind == "projections" and not scan.normalized
    np.testing.assert_allclose(np.rad2deg(scan.angles_rad), [0, 60, 120, 180])
    assert scan.flats.shape == (3, 6, 10) and scan.darks.shape == (2, 6, 10)
    np.testing.assert_allclose(scan.energies_eV, 8350.0)
    with h5py.File(path, "a") as h5:
        del h5["angle"]
    with pytest.raises(InstrumentFileError, match="dataset angle"):
        read_instrument_files([path])


# ---------------------------------------------------------------------------------- NXtomo
def write_nxtomo(path: Path, angles: np.ndarray, units: str | None, keys: np.ndarray) -> Path:
    data = np.stack([np.full((4, 8), 10 * (k + 1) + i, np.uint16) for i, k in enumerate(keys)])
    with h5py.File(path, "w") as h5:
        entry = h5.create_group("entry0000")
        entry["definition"] = "NXtomo"
        entry["instrument/detector/data"] = data
        entry["instrument/detector/image_key"] = keys
        entry["sample/rotation_angle"] = angles
        if units is not None:
            entry["sample/rotation_angle"].attrs["units"] = units
        entry["sample/x_pixel_size"] = 3.0e-7
        entry["sample/x_pixel_size"].attrs["units"] = "m"
    return path


def test_nxtomo_image_key_and_angle_units(tmp_path: Path) -> None:
    keys = np.array([2, 1, 1, 0, 0, 3, 0, 1])
    angles = np.array([0, 0, 0, 0.0, 0.5, 0.7, 1.0, 0])
    path = write_nxtomo(tmp_path / "scan.nx", angles, "rad", keys)
    assert detect_format(path) == "nxtomo"
    scan = read_instrument_files([path])
    assert scan.frames.shape == (3, 4, 8)
    np.testing.assert_array_equal(scan.frames[:, 0, 0], [13, 14, 16])  # projections in order
    assert scan.flats.shape == (3, 4, 8) and scan.darks.shape == (1, 4, 8)
    np.testing.assert_allclose(scan.angles_rad, [0.0, 0.5, 1.0])
    assert scan.metadata["invalid_frames"] == 1
    assert scan.pixel_size_um == pytest.approx(0.3)
    scan = read_instrument_files([write_nxtomo(tmp_path / "deg.nx", angles, "degree", keys)])
    np.testing.assert_allclose(scan.angles_rad, np.deg2rad([0.0, 0.5, 1.0]))
    with pytest.raises(InstrumentFileError, match="no units attribute"):
        read_instrument_files([write_nxtomo(tmp_path / "none.nx", angles, None, keys)])


# ---------------------------------------------------------------------------------- TIFF
def test_tiff_stack_with_imagej_pixel_size(tmp_path: Path) -> None:
    import tifffile

    stack = np.arange(3 * 5 * 7, dtype=np.uint16).reshape(3, 5, 7)
    path = tmp_path / "volume.tif"
    tifffile.imwrite(
        path, stack, imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata={"unit": "um"}
    )
    scan = read_instrument_files([path])
    assert scan.format == "tiff" and scan.kind == "images"
    np.testing.assert_array_equal(scan.frames, stack)
    assert scan.pixel_size_um == pytest.approx(0.25)
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")
    assert read_instrument_files([tmp_path / "plain.tif"]).pixel_size_um is None


def test_tiff_folder_frames_flats_darks_energies(tmp_path: Path) -> None:
    import tifffile

    folder = tmp_path / "scan"
    folder.mkdir()
    for i, energy in enumerate((8330.0, 8340.0, 8350.0)):
        tifffile.imwrite(folder / f"xanes_{energy:.1f}eV.tif", np.full((5, 7), i, np.uint16))
    tifffile.imwrite(folder / "flat_001.tif", np.full((5, 7), 50, np.uint16))
    tifffile.imwrite(folder / "dark_001.tif", np.full((5, 7), 2, np.uint16))
    (folder / "notes.txt").write_text("not a frame")
    scan = read_instrument_files([folder])
    np.testing.assert_array_equal(scan.frames[:, 0, 0], [0, 1, 2])
    np.testing.assert_array_equal(scan.energies_eV, [8330.0, 8340.0, 8350.0])
    assert scan.flats.shape == (1, 5, 7) and scan.darks.shape == (1, 5, 7)
    np.testing.assert_allclose(scan.transmission(2), 1.0 / 48.0)


# ---------------------------------------------------------------------------------- errors
def test_input_errors_name_what_is_missing(tmp_path: Path) -> None:
    import tifffile

    with pytest.raises(InstrumentFileError, match="input not found"):
        read_instrument_files([tmp_path / "nope.xrm"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InstrumentFileError, match="holds no Xradia"):
        read_instrument_files([tmp_path / "empty"])
    text = tmp_path / "frames.xrm"
    text.write_text("not an OLE file")
    with pytest.raises(InstrumentFileError, match="unknown format"):
        read_instrument_files([text])
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, np.zeros((4, 4), np.uint16))
    fxi = write_fxi_xanes(tmp_path / "fxi.h5", np.array([8.3, 8.4]))
    with pytest.raises(InstrumentFileError, match="mix formats"):
        read_instrument_files([tif, fxi])
    with pytest.raises(InstrumentFileError, match="give one fxi HDF5 file"):
        read_instrument_files([fxi, fxi])
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["something"] = np.zeros(3)
    with pytest.raises(InstrumentFileError, match="unknown layout"):
        read_instrument_files([other])
