"""``xanes trajectory`` end to end: align outputs of drifting scans whose per-pixel phase
fractions are known, followed particle by particle (CSV and plot)."""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.cli import xanes as cli_xanes
from tests.services.test_cli_xanes_chemistry import PARTICLES, references, run, write_stack


@pytest.fixture()
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beamwatch")
    cli_xanes.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_trajectory_follows_particles_through_drifting_scans(parser, tmp_path: Path) -> None:
    t0 = datetime(2026, 5, 29, 15, 0, 0)
    outs, truths = [], []
    for s, shift in enumerate([(0, 0), (3, -2), (5, 1)]):
        src, out = tmp_path / f"scan{s}.h5", tmp_path / f"out{s}.h5"
        start = (t0 + timedelta(minutes=30 * s)).isoformat()
        truths.append(write_stack(src, offset=-0.1 * s, shift=shift, start=start))
        assert run(parser, "xanes", "align", src, "-o", out, "--no-progress", *references()) == 0
        outs.append(out)
    table, plot = tmp_path / "traj.csv", tmp_path / "traj.png"
    assert run(parser, "xanes", "trajectory", *outs, "-o", table, "--plot", plot) == 0
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert plot.stat().st_size > 10_000
    assert len(rows) == len(PARTICLES) * 3
    by = {(int(r["particle"]), int(r["scan"])): r for r in rows}
    # track t is label t + 1 of the first scan's alignment; which written particle that is
    with h5py.File(outs[0], "r") as h5:
        first = h5["xanes/labels"][()]
    written = [np.bincount(truths[0][0][first == t + 1]).argmax() for t in range(len(PARTICLES))]
    assert sorted(written) == [1, 2, 3]
    for (t, s), row in by.items():
        assert row["found"] == "1"
        labels, fraction = truths[s]
        assert float(row["elapsed_s"]) == 1800.0 * s
        # the same written particle, drifted, in every scan
        mine = labels == written[t]
        assert float(row["fraction_pristine_mean"]) == pytest.approx(
            np.nanmean(fraction[mine]), abs=0.03
        )
        assert float(row["fraction_pristine_sd"]) == pytest.approx(
            np.nanstd(fraction[mine]), abs=0.03
        )
        assert int(row["edge_energy_eV_n"]) > 0.8 * mine.sum()
    assert float(by[(0, 1)]["drift_row_px"]) == pytest.approx(3, abs=0.2)
    assert float(by[(0, 2)]["drift_col_px"]) == pytest.approx(1, abs=0.2)
    # charging: less pristine, higher edge energy, scan after scan for every particle
    for t in range(len(PARTICLES)):
        frac = [float(by[(t, s)]["fraction_pristine_mean"]) for s in range(3)]
        edge = [float(by[(t, s)]["edge_energy_eV_mean"]) for s in range(3)]
        assert frac[0] > frac[1] > frac[2]
        assert edge[0] < edge[1] < edge[2]


def test_trajectory_rejects_a_file_that_is_not_an_align_output(parser, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = 1
    assert run(parser, "xanes", "trajectory", other, "-o", tmp_path / "t.csv") == 2
    assert not (tmp_path / "t.csv").exists()
