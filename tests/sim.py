"""Small simulated scans shared by the tests."""

from __future__ import annotations

from pathlib import Path

from bluesky_plans.devices import SimTXM
from models.synthetic.txm import TxmScene, default_energies

N_ENERGIES = 8


def small_txm(directory: Path, frame_source: str = "stream", seed: int = 0) -> SimTXM:
    scene = TxmScene.random(seed, shape=(96, 96), n_particles=3, n_scans=2, n_frames=N_ENERGIES)
    return SimTXM(scene, directory, frame_source=frame_source, seed=seed)


def energies():
    return default_energies(N_ENERGIES)
