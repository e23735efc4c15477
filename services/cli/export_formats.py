"""File formats other tools read, shared by ``beamwatch export`` from result files
(:mod:`services.cli.export`) and from a run in Tiled (:mod:`services.cli.export_tiled`).

- :func:`write_tiff`: TIFF stacks (Fiji/ImageJ hyperstacks with the voxel size in um when it is
  known; other dtypes, e.g. labels above 65535, as plain TIFF);
- :func:`write_csv`: tables as CSV (vector fields spread over numbered columns);
- :func:`write_spectra`: per-particle XANES spectra as column text (``energy_eV mu_norm
  mu_raw``) for Athena and Larch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["found_frames", "write_csv", "write_spectra", "write_tiff"]


def write_tiff(path: Path, array: np.ndarray, size_um: float | None) -> None:
    """A TIFF stack; ImageJ hyperstack (with the voxel size in um when known) where ImageJ
    takes the dtype, else a plain TIFF."""
    import tifffile

    data = np.asarray(array)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.signedinteger) and data.size and data.min() >= 0:
        top = int(data.max())
        data = data.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)
    elif data.dtype == np.float64:
        data = data.astype(np.float32)
    imagej = data.dtype in (np.uint8, np.uint16, np.float32)
    kwargs: dict[str, Any] = {"photometric": "minisblack"}
    if imagej:
        kwargs["imagej"] = True
        kwargs.pop("photometric")
        metadata: dict[str, Any] = {"axes": "ZYX" if data.ndim == 3 else "YX"}
        if size_um is not None:
            kwargs["resolution"] = (1.0 / size_um, 1.0 / size_um)
            metadata.update(unit="um", spacing=size_um)
        kwargs["metadata"] = metadata
    elif size_um is not None:
        kwargs["resolution"] = (1e4 / size_um, 1e4 / size_um)  # pixels per cm
        kwargs["resolutionunit"] = "CENTIMETER"
    tifffile.imwrite(path, data, **kwargs)


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Columns of equal length as CSV; 2-D columns spread over ``name_0``, ``name_1``, ..."""
    flat: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        values = np.asarray(values)
        if values.ndim == 1:
            flat[name] = values
        else:
            for k in range(values.shape[1]):
                flat[f"{name}_{k}"] = values[:, k]
    n = len(next(iter(flat.values())))
    with open(path, "w") as fh:
        fh.write(",".join(flat) + "\n")
        for i in range(n):
            fh.write(",".join(_cell(flat[c][i]) for c in flat) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.bool_ | bool):
        return str(int(value))
    if isinstance(value, np.floating | float):
        return "nan" if not math.isfinite(float(value)) else repr(float(value))
    return str(value)


def write_spectra(
    spectra: np.ndarray,
    energy: np.ndarray,
    prefix: Path,
    *,
    source: str,
    found: np.ndarray | None = None,
    raw: np.ndarray | None = None,
) -> list[Path]:
    """Each particle's mean spectrum as column text, as Athena and Larch read it: ``#``
    comments, the last of them naming the columns ``energy_eV mu_norm mu_raw``.

    ``mu_norm`` is the mean normalised absorbance (NaN where the spectrum is not normalisable,
    e.g. no frame in the pre-edge or post-edge window, or too few frames), ``mu_raw`` (``raw``,
    (P, N)) the particle's mean optical density before normalisation, so a particle whose
    normalisation failed still has a spectrum to read (NaN when the result holds no raw
    spectra). Frames with neither value (or no energy) are left out and counted in a comment.

    ``found`` (P, N) bool, when given, says in which frames each particle was found (finite
    ``particle_com``), so the comment tells a particle not found from a spectrum that has no
    value although the particle was there."""
    written = []
    energy = np.asarray(energy, dtype=np.float64)
    normalised_all = np.asarray(spectra, dtype=np.float64)
    raw_all = None if raw is None else np.asarray(raw, dtype=np.float64)
    if raw_all is not None and raw_all.shape != normalised_all.shape:
        raw_all = None
    for k, normalised in enumerate(normalised_all):
        mu_raw = np.full_like(normalised, np.nan) if raw_all is None else raw_all[k]
        has_norm = np.isfinite(normalised) & np.isfinite(energy)
        keep = (has_norm | np.isfinite(mu_raw)) & np.isfinite(energy)
        path = prefix.with_name(f"{prefix.name}_particle_{k + 1:03d}.txt")
        no_norm = int((~has_norm).sum())
        if found is None:
            why = "particle not found or spectrum not normalisable (NaN)"
        else:
            missing = int((~has_norm & ~np.asarray(found[k], dtype=bool)).sum())
            why = (
                f"particle not found in {missing}; found but without a normalised absorbance "
                f"in {no_norm - missing} (NaN: e.g. no frame in the pre-edge or post-edge window)"
            )
        raw_note = (
            "mean optical density before normalisation"
            if raw_all is not None
            else "not in this result (NaN)"
        )
        header = (
            f"# {source}: particle {k + 1} (label {k + 1}), mean absorbance of its pixels\n"
            f"# {no_norm} of {has_norm.size} frames without mu_norm: {why}\n"
            f"# {int((~keep).sum())} of {keep.size} frames left out (no value at all)\n"
            "# energy_eV: energy (eV); mu_norm: normalised absorbance (NaN when not "
            f"normalisable); mu_raw: {raw_note}\n"
            "# energy_eV mu_norm mu_raw\n"
        )
        with open(path, "w") as fh:
            fh.write(header)
            for e, a, r in zip(energy[keep], normalised[keep], mu_raw[keep], strict=True):
                fh.write(f"{e:.4f} {a:.8g} {r:.8g}\n")
        written.append(path)
    return written


def found_frames(particle_com: np.ndarray) -> np.ndarray:
    """(P, N) bool: the particle has a centre in the frame (``particle_com`` (P, N, 2))."""
    com = np.asarray(particle_com, dtype=np.float64)
    return np.asarray(np.isfinite(com).all(axis=-1), dtype=bool)
