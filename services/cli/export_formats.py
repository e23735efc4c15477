"""File formats other tools read, shared by ``beamwatch export`` from result files
(:mod:`services.cli.export`) and from a run in Tiled (:mod:`services.cli.export_tiled`).

- :func:`write_tiff`: TIFF stacks (Fiji/ImageJ hyperstacks with the voxel size in um when it is
  known; other dtypes, e.g. labels above 65535, as plain TIFF);
- :func:`write_csv`: tables as CSV (vector fields spread over numbered columns);
- :func:`write_spectra`: per-particle XANES spectra as two-column text for Athena and Larch.
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
) -> list[Path]:
    """Each particle's mean spectrum as two-column text (``energy_eV absorbance``), NaN frames
    left out and counted in a comment, as Athena and Larch read it.

    ``found`` (P, N) bool, when given, says in which frames each particle was found (finite
    ``particle_com``), so the comment tells a particle not found from a spectrum that has no
    value although the particle was there (not normalisable: e.g. no frame in the pre-edge or
    post-edge window)."""
    written = []
    for k, spectrum in enumerate(np.asarray(spectra)):
        keep = np.isfinite(spectrum) & np.isfinite(energy)
        path = prefix.with_name(f"{prefix.name}_particle_{k + 1:03d}.txt")
        left = int((~keep).sum())
        if found is None:
            why = "particle not found or spectrum not normalisable (NaN)"
        else:
            missing = int((~keep & ~np.asarray(found[k], dtype=bool)).sum())
            why = (
                f"particle not found in {missing}; found but without a normalised absorbance "
                f"in {left - missing} (NaN: e.g. no frame in the pre-edge or post-edge window)"
            )
        header = (
            f"# {source}: particle {k + 1} (label {k + 1}), mean normalised "
            f"absorbance\n# {left} of {keep.size} frames left out: {why}\n"
            "# energy_eV absorbance\n"
        )
        with open(path, "w") as fh:
            fh.write(header)
            for e, a in zip(energy[keep], spectrum[keep], strict=True):
                fh.write(f"{e:.4f} {a:.8g}\n")
        written.append(path)
    return written


def found_frames(particle_com: np.ndarray) -> np.ndarray:
    """(P, N) bool: the particle has a centre in the frame (``particle_com`` (P, N, 2))."""
    com = np.asarray(particle_com, dtype=np.float64)
    return np.asarray(np.isfinite(com).all(axis=-1), dtype=bool)
