"""Offline XANES alignment: ``beamwatch xanes align INPUT.h5 -o OUTPUT.h5``.

Re-processes a saved XANES scan with the same tracker as the live service. The science lives in
``pipelines.xanes``; this module only reads and writes HDF5 and reports progress.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

__all__ = ["register", "run_align", "InputError", "OUTPUT_DATASETS"]

logger = logging.getLogger(__name__)

DATA = "/entry/data/data"
ENERGY = "/entry/instrument/monochromator/energy"
FLAT = "/entry/data/flat"
DARK = "/entry/data/dark"

#: Output datasets (all in pixels, (row, col) order, frame 0 is the reference).
OUTPUT_DATASETS = {
    "/xanes/labels": "int32 (H, W): particle k has label k + 1 in frame 0, 0 is background",
    "/xanes/particle_com": "float64 (P, N, 2): centre of particle k in frame i, NaN if not found",
    "/xanes/particle_shift": "float64 (P, N, 2): particle_com[:, i] - particle_com[:, 0]",
    "/xanes/global_shift": "float64 (N, 2): rigid drift, median of the particle shifts; "
    "NaN where no particle was registered (unknown, never 0.0)",
    "/xanes/n_found": "int64 (N,): particles behind the global shift of each frame",
    "/xanes/spread": "float64 (N,): robust spread of the particle shifts per frame (px), "
    "NaN below 2 particles",
    "/xanes/trusted": "bool (N,): the global shift is backed by enough particles",
    "/xanes/partial": "bool (P,): particle cut by the frame border",
    "/xanes/edge_energy": "float32 (H, W) eV at 50 % of the edge jump, frame-0 geometry, "
    "NaN outside particles or where the jump is too small",
    "/xanes/whiteline_energy": "float32 (H, W) eV of the white-line maximum, NaN as above",
    "/xanes/spectra": "float64 (P, N): mean normalised absorbance of each particle per frame",
    "/xanes/energy": "float64 (N,): energy of each frame (eV), copied from the input",
    "/xanes/ssim": "float64 (P, N): similarity of each aligned particle to its template "
    "(normalised correlation of the outlines; SSIM of the silhouettes with "
    "track.registration=silhouette)",
}

_EPILOG = (
    "input datasets:\n"
    f"  {DATA:<40} (N, H, W) frames, any integer or float dtype\n"
    f"  {ENERGY:<40} (N,) energies in eV\n"
    f"  {FLAT:<40} optional (M, H, W) or (H, W) flat field (sample out)\n"
    f"  {DARK:<40} optional (K, H, W) or (H, W) dark frames\n"
    "output datasets:\n"
    + "".join(f"  {name:<26} {text}\n" for name, text in OUTPUT_DATASETS.items())
    + "exit codes: 0 success, 2 missing or inconsistent input datasets or parameters"
)


class InputError(ValueError):
    """A missing or inconsistent input dataset or parameter file."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``xanes align`` to an argparse sub-parsers object.

    Parameters
    ----------
    subparsers
        The object returned by ``ArgumentParser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
        The ``xanes`` parser; ``args.func(args)`` runs the chosen command and returns the exit
        code.
    """
    xanes = subparsers.add_parser(
        "xanes",
        help="XANES particle tracking and chemical maps",
        description="XANES particle tracking, alignment and chemical maps.",
    )
    commands = xanes.add_subparsers(dest="xanes_command", metavar="COMMAND", required=True)
    align = commands.add_parser(
        "align",
        help="align a saved XANES scan particle by particle and compute its maps",
        description=(
            "Track the particles of frame 0 through a saved XANES scan (centre of mass of the "
            "segmented particle refined by correlation), align every particle, and write "
            "drift, tracks, edge-energy and white-line maps and per-particle spectra."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    align.add_argument("input", type=Path, metavar="INPUT.h5", help="NeXus-like HDF5 scan")
    align.add_argument(
        "-o", "--output", type=Path, required=True, metavar="OUTPUT.h5", help="result file"
    )
    align.add_argument(
        "--params",
        type=Path,
        metavar="PARAMS.json",
        help="JSON file with pipeline parameters (XanesParams); unknown keys are rejected",
    )
    align.add_argument(
        "--detector",
        choices=("classical", "learned"),
        default=None,
        help=(
            "particle detector of frame 0: classical (threshold + watershed) or learned "
            "(U-Net trained on synthetic frames, shipped weights); default: the --params "
            "file's detect.method, else classical"
        ),
    )
    align.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    align.set_defaults(func=run_align)
    return xanes


def run_align(args: argparse.Namespace) -> int:
    """Run ``xanes align``; returns the process exit code.

    Parameters
    ----------
    args : argparse.Namespace
        ``input``, ``output``, ``params``, ``detector`` and ``no_progress``.

    Returns
    -------
    int
        0 on success, 2 on missing or inconsistent input.
    """
    try:
        params = _with_detector(_load_params(args.params), getattr(args, "detector", None))
        _align_file(Path(args.input), Path(args.output), params, progress=not args.no_progress)
    except InputError as exc:
        logger.error("xanes align: %s", exc)
        return 2
    logger.info("xanes align: wrote %s", args.output)
    return 0


def _load_params(path: Path | None) -> Any:
    from pydantic import ValidationError

    from pipelines.xanes.params import XanesParams

    if path is None:
        return XanesParams()
    try:
        return XanesParams.model_validate_json(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read --params file {path}: {exc}") from exc
    except ValidationError as exc:
        raise InputError(f"invalid --params file {path}: {exc}") from exc


def _with_detector(params: Any, detector: str | None) -> Any:
    """``params`` with ``detect.method`` set to ``detector`` (unchanged when None)."""
    if detector is None:
        return params
    detect = params.detect.model_copy(update={"method": detector})
    return params.model_copy(update={"detect": detect})


def _read_optional(h5: Any, name: str, frame_shape: tuple[int, ...]) -> Any:
    import numpy as np

    if name not in h5:
        return None
    data = h5[name]
    if data.ndim not in (2, 3) or tuple(data.shape[-2:]) != frame_shape:
        raise InputError(
            f"dataset {name} has shape {data.shape}; expected (M, H, W) or (H, W) "
            f"with (H, W) = {frame_shape} as in {DATA}"
        )
    if data.ndim == 3 and data.shape[0] == 0:
        raise InputError(f"dataset {name} is empty")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise InputError(f"dataset {name} has dtype {data.dtype}; expected integers or floats")
    return data[()]


def _align_file(path: Path, output: Path, params: Any, *, progress: bool) -> None:
    import h5py
    import numpy as np
    from tqdm import tqdm

    from pipelines.xanes.tracker import XanesTracker

    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot open {path} as HDF5: {exc}") from exc
    with h5:
        if DATA not in h5:
            raise InputError(f"dataset {DATA} (frames, N x H x W) is missing in {path}")
        if ENERGY not in h5:
            raise InputError(f"dataset {ENERGY} (energies in eV, N) is missing in {path}")
        frames = h5[DATA]
        if frames.ndim != 3 or frames.shape[0] == 0:
            raise InputError(f"dataset {DATA} has shape {frames.shape}; expected (N, H, W), N > 0")
        if not (
            np.issubdtype(frames.dtype, np.integer) or np.issubdtype(frames.dtype, np.floating)
        ):
            raise InputError(f"dataset {DATA} has dtype {frames.dtype}; expected int or float")
        energies = np.asarray(h5[ENERGY][()], dtype=np.float64).reshape(-1)
        if h5[ENERGY].ndim != 1 or energies.shape[0] != frames.shape[0]:
            raise InputError(
                f"dataset {ENERGY} has shape {h5[ENERGY].shape}; expected ({frames.shape[0]},) "
                f"to match {DATA}"
            )
        if not np.all(np.isfinite(energies)):
            raise InputError(f"dataset {ENERGY} holds non-finite values")
        frame_shape = tuple(frames.shape[1:])
        flat = _read_optional(h5, FLAT, frame_shape)
        dark = _read_optional(h5, DARK, frame_shape)
        tracker = XanesTracker(params, flat=flat, dark=dark)
        bar = tqdm(range(frames.shape[0]), desc="xanes align", unit="frame", disable=not progress)
        try:
            for i in bar:
                result = tracker.add_frame(frames[i], float(energies[i]))
                bar.set_postfix(found=f"{result.n_found}/{tracker.n_particles}", refresh=False)
        finally:
            tracker.close()
    final = tracker.finalize()
    _write(output, final)


def _write(output: Path, final: Any) -> None:
    import h5py
    import numpy as np

    arrays = {
        "/xanes/labels": final.labels.astype(np.int32),
        "/xanes/particle_com": final.particle_com.astype(np.float64),
        "/xanes/particle_shift": final.particle_shift.astype(np.float64),
        "/xanes/global_shift": final.global_shift.astype(np.float64),
        "/xanes/edge_energy": final.edge_energy.astype(np.float32),
        "/xanes/whiteline_energy": final.whiteline_energy.astype(np.float32),
        "/xanes/spectra": final.spectra.astype(np.float64),
        "/xanes/energy": final.energies.astype(np.float64),
        "/xanes/ssim": final.ssim.astype(np.float64),
        "/xanes/n_found": np.asarray(final.n_found, dtype=np.int64),
        "/xanes/spread": np.asarray(final.spread, dtype=np.float64),
        "/xanes/trusted": np.asarray(final.trusted, dtype=bool),
        "/xanes/partial": np.asarray(final.partial, dtype=bool),
    }
    units = {
        "/xanes/particle_com": "pixel",
        "/xanes/particle_shift": "pixel",
        "/xanes/global_shift": "pixel",
        "/xanes/spread": "pixel",
        "/xanes/edge_energy": "eV",
        "/xanes/whiteline_energy": "eV",
        "/xanes/energy": "eV",
    }
    try:
        out = h5py.File(output, "w")
    except OSError as exc:
        raise InputError(f"cannot create output file {output}: {exc}") from exc
    with out:
        for name, data in arrays.items():
            dset = out.create_dataset(name, data=data)
            dset.attrs["description"] = OUTPUT_DATASETS[name]
            dset.attrs["units"] = units.get(name, "")
        out["/xanes"].attrs["frame_reference"] = 0
        out["/xanes"].attrs["axis_order"] = "row, col"
