"""Offline XANES alignment: ``beamwatch xanes align INPUT.h5 -o OUTPUT.h5``.

Re-processes a saved XANES scan with the same tracker as the live service. The science lives in
``pipelines.xanes``; this module only reads and writes HDF5 and reports progress.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from services.cli import xanes_chemistry as cli_xanes_chemistry
from services.cli.xanes_chemistry import CHEMISTRY_DATASETS

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
    "/xanes/spectra_raw": "float64 (P, N): mean optical density of each particle per frame "
    "before normalisation (background-free); known also where the spectrum is not "
    "normalisable, NaN where the particle was not found",
    "/xanes/energy": "float64 (N,): energy of each frame (eV), copied from the input",
    "/xanes/ssim": "float64 (P, N): similarity of each aligned particle to its template "
    "(normalised correlation of the outlines; SSIM of the silhouettes with "
    "track.registration=silhouette)",
    "/xanes/backfilled": "bool (P, N): shift found by the post-edge pass at the end of the scan "
    "where the live tracking had none (the attribute post_edge_applied on /xanes says whether "
    "that pass ran)",
    "/xanes/smoothed": "bool (P, N): the particle's shift is the global shift plus its deviation "
    "from it smoothed over the neighbouring frames (track.smooth_deviation_frames; at the end "
    "of the scan, when the whole particles move rigidly)",
    **CHEMISTRY_DATASETS,
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
    align.add_argument(
        "input",
        type=Path,
        nargs="+",
        metavar="INPUT",
        help="NeXus-like HDF5 scan (/entry/data/data and energy), or instrument files: Xradia "
        ".xrm/.txrm, FXI HDF5, Data Exchange, NXtomo, TIFF; one file, several files or a folder",
    )
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
    align.add_argument(
        "--pixel-size-um",
        type=float,
        default=None,
        help="pixel size in um (default: from the file; unknown sizes are reported in px)",
    )
    cli_xanes_chemistry.add_arguments(align)
    align.set_defaults(func=run_align)
    from services.cli import xanes_trajectory as cli_xanes_trajectory

    cli_xanes_trajectory.register(commands)
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
    from services.cli.inputs import as_paths, is_beamwatch_layout
    from services.core.instrument_files import InstrumentFileError

    paths = as_paths(args.input)
    try:
        params = _with_detector(_load_params(args.params), getattr(args, "detector", None))
        chemistry = cli_xanes_chemistry.options_from_args(args)
        if chemistry is not None:
            cli_xanes_chemistry.normalise_references(chemistry, params.spectra)
            params = params.model_copy(update={"keep_aligned_stacks": True})
        if is_beamwatch_layout(paths):
            _align_file(
                paths[0], Path(args.output), params, progress=not args.no_progress, chem=chemistry
            )
            file_pixel = _layout_pixel_size(paths[0])
        else:
            file_pixel = _align_instrument_files(
                paths, Path(args.output), params, progress=not args.no_progress, chem=chemistry
            )
        _write_pixel_size(Path(args.output), getattr(args, "pixel_size_um", None), file_pixel)
    except (InputError, InstrumentFileError, cli_xanes_chemistry.ChemistryInputError) as exc:
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


def _align_file(path: Path, output: Path, params: Any, *, progress: bool, chem: Any = None) -> None:
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
        start_time = h5["/entry"].attrs.get("start_time", h5.get("/entry/start_time"))
        start_time = start_time[()] if hasattr(start_time, "shape") else start_time
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
    _write(output, final, chem, params)
    if start_time is not None:  # NeXus /entry/start_time (ISO 8601), for xanes trajectory
        with _open_output(output) as out:
            text = start_time.decode() if isinstance(start_time, bytes) else str(start_time)
            out["/xanes"].attrs["start_time"] = text


def _write(output: Path, final: Any, chem: Any = None, params: Any = None) -> None:
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
        "/xanes/spectra_raw": final.spectra_raw.astype(np.float64),
        "/xanes/energy": final.energies.astype(np.float64),
        "/xanes/ssim": final.ssim.astype(np.float64),
        "/xanes/n_found": np.asarray(final.n_found, dtype=np.int64),
        "/xanes/spread": np.asarray(final.spread, dtype=np.float64),
        "/xanes/trusted": np.asarray(final.trusted, dtype=bool),
        "/xanes/partial": np.asarray(final.partial, dtype=bool),
        "/xanes/backfilled": np.asarray(final.backfilled, dtype=bool),
        "/xanes/smoothed": np.asarray(final.smoothed, dtype=bool),
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
        out["/xanes"].attrs["post_edge_applied"] = bool(final.post_edge_applied)
        if chem is not None:
            chem.write(out, final, params.spectra)


# ------------------------------------------------------------------ instrument files, pixel size
#: Flat-corrected frames are handed to the tracker as transmission x this many counts, with a
#: flat of exactly this value: its optical density is then -ln(transmission).
TRANSMISSION_COUNTS = 1.0e4


def _align_instrument_files(
    paths: list[Path], output: Path, params: Any, *, progress: bool, chem: Any = None
) -> Any:
    """Align a scan read from instrument files; returns the file's pixel size (um) or None.

    Frames with flats of their own (Xradia: the references at their energy, scaled to their
    exposure) or already normalised (FXI) are flat-corrected here, frame by frame; otherwise
    the flats and darks go to the tracker as with the HDF5 layout.
    """
    import numpy as np
    from tqdm import tqdm

    from pipelines.xanes.tracker import XanesTracker
    from services.cli.inputs import read_scan

    scan = read_scan(paths, needs="energies")
    own_flats = scan.normalized or scan.per_frame_flats
    if own_flats:
        counts = np.float32(TRANSMISSION_COUNTS)
        flat = np.full(scan.frames.shape[1:], counts, dtype=np.float32)
        tracker = XanesTracker(params, flat=flat)
    else:
        tracker = XanesTracker(params, flat=scan.flats, dark=scan.darks)
    energies = scan.energies_eV
    bar = tqdm(range(scan.n_frames), desc="xanes align", unit="frame", disable=not progress)
    try:
        for i in bar:
            frame = scan.transmission(i) * counts if own_flats else scan.frames[i]
            result = tracker.add_frame(frame, float(energies[i]))  # type: ignore[index]
            bar.set_postfix(found=f"{result.n_found}/{tracker.n_particles}", refresh=False)
    finally:
        tracker.close()
    _write(output, tracker.finalize(), chem, params)
    with _open_output(output) as out:
        out["/xanes"].attrs["source"] = scan.source
        if scan.metadata.get("start_time"):
            out["/xanes"].attrs["start_time"] = scan.metadata["start_time"]
    return scan.pixel_size_um


def _open_output(output: Path) -> Any:
    import h5py

    return h5py.File(output, "a")


def _layout_pixel_size(path: Path) -> float | None:
    from services.cli.inputs import layout_pixel_size

    return layout_pixel_size(path)


def _write_pixel_size(output: Path, option: float | None, from_file: float | None) -> None:
    """Attributes ``pixel_size_um`` (NaN when unknown) and ``length_unit`` (``um`` or ``px``)
    on ``/xanes``, and ``global_shift_um`` when the pixel size is known."""
    from services.cli.inputs import length_attrs, resolve_size

    pixel = resolve_size(option, from_file, str(output))
    with _open_output(output) as out:
        group = out["/xanes"]
        group.attrs.update(length_attrs(pixel))
        if pixel is not None:
            shift = group["global_shift"][()] * pixel
            dset = group.create_dataset("global_shift_um", data=shift)
            dset.attrs["units"] = "um"
            dset.attrs["description"] = "global_shift x pixel_size_um"
