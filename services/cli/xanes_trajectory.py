"""``beamwatch xanes trajectory OUT1.h5 OUT2.h5 ... -o TRAJ.csv [--plot TRAJ.png]``.

The state-of-charge trajectory of every particle across an operando series: per particle and
scan, the mean and spread of the edge energy (and of the LCF fractions when the files hold
them), with the scans' time stamps. The science is :mod:`pipelines.xanes.trajectory`; this
module reads the ``xanes align`` outputs and writes the table and the plot.
"""

from __future__ import annotations

import argparse
import csv
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["TRAJECTORY_COLUMNS", "register", "run_trajectory"]

logger = logging.getLogger(__name__)

#: Columns of the CSV (``<map>`` is ``edge_energy_eV`` and, when every file has LCF results,
#: ``fraction_<NAME>`` for each reference).
TRAJECTORY_COLUMNS = {
    "particle": "track id: the particles of the first file in label order (label - 1), then "
    "particles that appear later",
    "scan": "index of the file in the order given",
    "file": "the xanes align output",
    "start_time": "ISO 8601 time of the scan when the file carries it (/xanes start_time), "
    "else empty",
    "elapsed_s": "seconds since the first scan's start_time; empty when unknown",
    "label": "the particle's label in this scan, 0 when not found",
    "found": "1 when the particle was matched in this scan, else 0",
    "centre_row_px, centre_col_px": "particle centre in the scan's own frame 0 (px)",
    "drift_row_px, drift_col_px": "position of this scan's frame 0 relative to the first scan "
    "(phase correlation of the particle masks), px",
    "n_pixels": "pixels of the particle",
    "<map>_mean, <map>_sd": "mean and standard deviation over the particle's pixels with a value",
    "<map>_n": "pixels with a value (NaN pixels are left out); mean and sd are empty when 0",
}

_EPILOG = (
    "CSV columns:\n"
    + "".join(f"  {name:<30} {text}\n" for name, text in TRAJECTORY_COLUMNS.items())
    + "exit codes: 0 success, 2 missing or inconsistent input files"
)


class TrajectoryInputError(ValueError):
    """An input file that is not a usable ``xanes align`` output."""


def register(commands: Any) -> argparse.ArgumentParser:
    """Add ``trajectory`` to the ``xanes`` sub-commands.

    Parameters
    ----------
    commands
        The ``xanes`` sub-parsers object.

    Returns
    -------
    argparse.ArgumentParser
        The ``trajectory`` parser.
    """
    parser = commands.add_parser(
        "trajectory",
        help="state-of-charge trajectory of every particle across xanes align outputs",
        description=(
            "Follow the particles through an operando series of XANES scans (xanes align "
            "outputs, in time order): the drift between consecutive scans is the phase "
            "correlation of their particle masks, particles are paired by position after it. "
            "Per particle and scan: mean and spread of the edge energy, and of the LCF "
            "fractions when every file has them (xanes align --reference)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        metavar="OUT.h5",
        help="xanes align outputs of the same field of view, in time order",
    )
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="TRAJ.csv", help="table to write"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="TRAJ.png", help="also draw the trajectories"
    )
    parser.add_argument(
        "--max-distance-px",
        type=float,
        default=6.0,
        help="a particle moves at most this far between scans after the drift (default 6)",
    )
    parser.set_defaults(func=run_trajectory)
    return parser


def run_trajectory(args: argparse.Namespace) -> int:
    """Run ``xanes trajectory``; returns the exit code (0, or 2 on bad input)."""
    from pipelines.xanes.params import MatchParams
    from pipelines.xanes.trajectory import trajectory

    try:
        if args.max_distance_px <= 0:
            raise TrajectoryInputError(
                f"--max-distance-px must be positive, got {args.max_distance_px}"
            )
        scans, times = [], []
        for path in args.inputs:
            scan, time = _read_scan(Path(path))
            scans.append(scan)
            times.append(time)
        known = [t for t in times if t is not None]
        if len(known) == len(times) and any(
            b < a for a, b in zip(known[:-1], known[1:], strict=True)
        ):
            logger.warning(
                "xanes trajectory: the files' start_time is not increasing in the order given"
            )
        names = _common_maps(scans, args.inputs)
        scans = [_only(scan, names) for scan in scans]
        traj = trajectory(scans, params=MatchParams(max_distance_px=args.max_distance_px))
        rows = _rows(traj, args.inputs, times, names)
        _write_csv(Path(args.output), rows)
        if args.plot is not None:
            _plot(Path(args.plot), traj, times, names)
    except (TrajectoryInputError, ValueError) as exc:
        logger.error("xanes trajectory: %s", exc)
        return 2
    logger.info(
        "xanes trajectory: %d particles over %d scans -> %s",
        traj.label.shape[0],
        len(scans),
        args.output,
    )
    return 0


def _read_scan(path: Path) -> tuple[Any, datetime | None]:
    import h5py
    import numpy as np

    from pipelines.xanes.trajectory import ScanMaps

    if not path.is_file():
        raise TrajectoryInputError(f"input file {path} does not exist")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise TrajectoryInputError(f"cannot open {path} as HDF5: {exc}") from exc
    with h5:
        for name in ("/xanes/labels", "/xanes/edge_energy"):
            if name not in h5:
                raise TrajectoryInputError(
                    f"{path} has no {name}: expected a `beamwatch xanes align` output"
                )
        labels = h5["/xanes/labels"][()]
        maps = {"edge_energy_eV": h5["/xanes/edge_energy"][()].astype(np.float64)}
        if "/xanes/lcf/fraction_map" in h5 and "/xanes/lcf/reference_names" in h5:
            fractions = h5["/xanes/lcf/fraction_map"][()]
            for k, raw in enumerate(h5["/xanes/lcf/reference_names"][()]):
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                maps[f"fraction_{name}"] = fractions[k].astype(np.float64)
        stamp = h5["/xanes"].attrs.get("start_time")
    time = None
    if stamp is not None:
        text = stamp.decode() if isinstance(stamp, bytes) else str(stamp)
        try:
            time = datetime.fromisoformat(text)
        except ValueError:
            logger.warning("xanes trajectory: %s: start_time %r is not ISO 8601", path, text)
    return ScanMaps(labels=labels, maps=maps), time


def _common_maps(scans: list[Any], paths: list[Path]) -> list[str]:
    names = [n for n in scans[0].maps if all(n in s.maps for s in scans)]
    dropped = sorted({n for s in scans for n in s.maps} - set(names))
    if dropped:
        logger.warning(
            "xanes trajectory: %s not in every file (%s), left out",
            ", ".join(dropped),
            ", ".join(str(p) for p in paths),
        )
    return names


def _only(scan: Any, names: list[str]) -> Any:
    from pipelines.xanes.trajectory import ScanMaps

    return ScanMaps(labels=scan.labels, maps={n: scan.maps[n] for n in names})


def _number(value: float) -> str:
    import math

    return "" if not math.isfinite(value) else f"{value:.6g}"


def _rows(
    traj: Any, paths: list[Path], times: list[datetime | None], names: list[str]
) -> list[dict[str, str]]:
    t0 = times[0]
    rows = []
    for t in range(traj.label.shape[0]):
        for s, path in enumerate(paths):
            time = times[s]
            elapsed = (time - t0).total_seconds() if time is not None and t0 is not None else None
            found = traj.label[t, s] > 0
            row = {
                "particle": str(t),
                "scan": str(s),
                "file": str(path),
                "start_time": time.isoformat() if time is not None else "",
                "elapsed_s": "" if elapsed is None else f"{elapsed:.3f}",
                "label": str(int(traj.label[t, s])),
                "found": "1" if found else "0",
                "centre_row_px": _number(float(traj.centre[t, s, 0])),
                "centre_col_px": _number(float(traj.centre[t, s, 1])),
                "drift_row_px": _number(float(traj.drift[s, 0])),
                "drift_col_px": _number(float(traj.drift[s, 1])),
                "n_pixels": str(int(traj.n_pixels[t, s])),
            }
            for name in names:
                row[f"{name}_mean"] = _number(float(traj.mean[name][t, s]))
                row[f"{name}_sd"] = _number(float(traj.spread[name][t, s]))
                row[f"{name}_n"] = str(int(traj.n_valid[name][t, s]))
            rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    if not rows:
        raise TrajectoryInputError("no particle in the first file: nothing to follow")
    try:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise TrajectoryInputError(f"cannot write {path}: {exc}") from exc


def _plot(path: Path, traj: Any, times: list[datetime | None], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    use_time = all(t is not None for t in times)
    if use_time:
        t0 = times[0]
        x = np.array([(t - t0).total_seconds() / 3600.0 for t in times])  # type: ignore[operator]
        xlabel = "time since the first scan (h)"
    else:
        x = np.arange(len(times), dtype=np.float64)
        xlabel = "scan (no time stamps in the files)"
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 3 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        for t in range(traj.label.shape[0]):
            mean = traj.mean[name][t]
            if np.isfinite(mean).any():
                ax.errorbar(x, mean, yerr=traj.spread[name][t], marker="o", ms=3, capsize=2)
        unit = " (eV)" if name.endswith("_eV") else ""
        ax.set_ylabel(name.removesuffix("_eV") + unit)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{name}: mean +- sd per particle ({traj.label.shape[0]} particles)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
