"""Fixtures for the XANES pipeline tests: real SSRL TXM data and a synthetic scan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from synthetic.txm import TxmScene, default_energies
from tests.conftest import SHARED_DATA

SSRL = SHARED_DATA / "txm_ssrl_nca"


def _need_ssrl() -> Path:
    if not SSRL.is_dir() or not any(SSRL.glob("*.xrm")):
        pytest.skip(f"real SSRL TXM data not found at {SSRL} (see ../shared/data/README.md)")
    return SSRL


@dataclass(frozen=True)
class SsrlEnergy:
    """Real frames of one energy: sample repeats and the flat scaled to the sample exposure."""

    energy: float
    samples: list[np.ndarray]
    flat: np.ndarray  # float32, counts for the sample exposure


@pytest.fixture(scope="session")
def ssrl() -> dict[str, SsrlEnergy]:
    """The SSRL frames per energy, read by ``services.core.instrument_files`` (energy from the file
    name, flats: the ``ref`` files at the same energy scaled from 0.3 s to 0.5 s)."""
    from services.core.instrument_files import read_instrument_files

    root = _need_ssrl()
    out = {}
    for tag in ("08324.0", "08354.0"):
        files = sorted(root.glob(f"rep01_*_{tag}_eV_*.xrm"))
        if not any("_ref_" in p.name for p in files) or all("_ref_" in p.name for p in files):
            pytest.skip(f"SSRL frames for {tag} eV missing in {root}")
        scan = read_instrument_files(files)
        flat = scan.reference(0)
        assert flat is not None
        out[tag] = SsrlEnergy(float(scan.energies_eV[0]), list(scan.frames), flat)
    return out


@pytest.fixture(scope="session")
def ssrl_spectra() -> dict[str, np.ndarray]:
    root = _need_ssrl()
    files = {
        "NCA_xanes.csv": root / "NCA_xanes.csv",
        "NCA-cell2-soc1-fov1-xanesspectrum.tsv": root / "NCA-cell2-soc1-fov1-xanesspectrum.tsv",
    }
    for path in files.values():
        if not path.is_file():
            pytest.skip(f"real spectrum {path} not found")
    return {name: np.loadtxt(path) for name, path in files.items()}


@dataclass(frozen=True)
class SyntheticScan:
    scene: TxmScene
    energies: np.ndarray
    frames: np.ndarray  # (N, H, W) float32 counts
    flat: np.ndarray
    dark: np.ndarray


@pytest.fixture(scope="session")
def synthetic_scan() -> SyntheticScan:
    """A 256 x 256, 143-energy synthetic scan with 9 drifting, deforming particles."""
    scene = TxmScene.random(7, shape=(256, 256), n_particles=9, n_frames=143)
    energies = default_energies(143)
    frames = np.stack([scene.frame(e, scan=0, index=i) for i, e in enumerate(energies)])
    flat = np.stack([scene.flat(e) for e in energies[::30]])
    return SyntheticScan(scene, energies, frames, flat, scene.dark())


def truth_index(scene: TxmScene, labels: np.ndarray) -> np.ndarray:
    """Index of the true particle under every detected label (largest overlap)."""
    truth = scene.truth_labels()
    out = []
    for k in range(int(labels.max())):
        counts = np.bincount(truth[labels == k + 1], minlength=scene.n_particles + 1)
        out.append(int(np.argmax(counts[1:])) if counts[1:].any() else -1)
    return np.array(out)
