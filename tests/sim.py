"""Small simulated scans shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bluesky_plans.devices import SimTXM
from pipelines.tomo.fbp import ReconParams, reconstruct
from synthetic.cathode import CathodeVolume, make_cathode_volume
from synthetic.scan import simulate_scan
from synthetic.txm import TxmScene, default_energies

N_ENERGIES = 8


def small_txm(directory: Path, frame_source: str = "stream", seed: int = 0) -> SimTXM:
    scene = TxmScene.random(seed, shape=(96, 96), n_particles=3, n_scans=2, n_frames=N_ENERGIES)
    return SimTXM(scene, directory, frame_source=frame_source, seed=seed)


def energies():
    return default_energies(N_ENERGIES)


def scanned_cathode(shape: tuple[int, int, int]) -> tuple[CathodeVolume, np.ndarray]:
    """A synthetic cathode (seed 5) scanned over 90 angles and reconstructed by pipelines.tomo.

    Returns the truth and the float64 reconstruction (axis at the detector centre).
    """
    truth = make_cathode_volume(shape, seed=5, crack_density=1.5)
    angles = np.linspace(0.0, 180.0, 90, endpoint=False)
    frames = simulate_scan(truth.attenuation, angles, seed=6)
    volume = reconstruct(
        frames.projections,
        angles,
        flat=frames.flat,
        dark=frames.dark,
        params=ReconParams(center="detector"),
    )
    return truth, volume
