"""``beamwatch export --run UID -o DIR``: a run's analysis results in Tiled, in formats other
tools read, as ``beamwatch export RESULT.h5`` writes them from the offline files.

Every result container of the run (``analysis/<uid>/<pipeline>``, re-analyses ``-r<k>``
included) gives, with the prefix ``<uid>_<pipeline>``:

- its maps, masks and labels as TIFF stacks (ImageJ hyperstacks carrying the pixel / voxel
  size in um when the analysis states one; none when it does not);
- every table as CSV (``_<table>.csv``), and the crack numbers per slice
  (``_cracks_by_slice.csv``: depth, crack / particle area ratio, per-slice fit);
- each particle's XANES spectrum as column text (energy_eV mu_norm mu_raw) for Athena / Larch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from services.cli.export_formats import found_frames, write_csv, write_spectra, write_tiff
from services.core.layout import ANALYSIS, CRACKS, PARTICLES, XANES

__all__ = ["RunExportError", "export_run"]

logger = logging.getLogger(__name__)

#: Arrays written as TIFF, per pipeline: result key -> file suffix (as the file export names them).
STACKS = {
    CRACKS.pipeline: {
        CRACKS.reconstruction: "volume",
        CRACKS.mask: "crack_mask",
        CRACKS.particle_mask: "particle_mask",
        CRACKS.damage_density: "damage_density",
        CRACKS.particle_density: "particle_density",
    },
    PARTICLES.pipeline: {PARTICLES.labels: "particle_labels"},
    XANES.pipeline: {
        XANES.labels: "xanes_labels",
        XANES.edge_energy: "edge_energy_eV",
        XANES.whiteline_energy: "whiteline_energy_eV",
        "lcf_fraction_map": "lcf_fractions",
        "lcf_r_factor_map": "lcf_r_factor",
        "cluster_labels": "xanes_clusters",
    },
}


class RunExportError(ValueError):
    """The run has no analysis results to export."""


def _size_um(metadata: Any) -> float | None:
    for key in ("voxel_size_um", "pixel_size_um"):
        value = metadata.get(key)
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _base_pipeline(name: str) -> str:
    """``cracks-r1`` -> ``cracks``: a re-analysis has the layout of its pipeline."""
    head, _, tail = name.rpartition("-r")
    return head if head and tail.isdigit() else name


def _cracks_by_slice(node: Any) -> dict[str, np.ndarray] | None:
    if CRACKS.depth_profile not in node:
        return None
    profile = node[CRACKS.depth_profile].read()
    columns: dict[str, np.ndarray] = {"z": np.arange(profile.shape[0])}
    if node.metadata.get("length_unit") == "um" and "slice_depth" in node:
        columns["depth_um"] = node["slice_depth"].read()
    columns["depth_profile"] = profile
    if CRACKS.layer_fit in node:
        fit = node[CRACKS.layer_fit].read()
        for k, name in enumerate(("layer_slope", "layer_intercept", "layer_pearson_r")):
            columns[name] = fit[:, k]
    return columns


def _export_container(node: Any, pipeline: str, prefix: str, output: Path) -> list[Path]:
    written: list[Path] = []
    base = _base_pipeline(pipeline)
    size = _size_um(node.metadata)
    for key, suffix in STACKS.get(base, {}).items():
        if key in node and getattr(node[key], "structure_family", None) == "array":
            array = node[key].read()
            if array.ndim in (2, 3):
                path = output / f"{prefix}_{suffix}.tif"
                write_tiff(path, array, size)
                written.append(path)
    for key in sorted(node):
        child = node[key]
        if getattr(child, "structure_family", None) != "table":
            continue
        frame = child.read()
        path = output / f"{prefix}_{key}.csv"
        write_csv(path, {str(c): frame[c].to_numpy() for c in frame.columns})
        written.append(path)
    if base == CRACKS.pipeline:
        columns = _cracks_by_slice(node)
        if columns is not None:
            path = output / f"{prefix}_cracks_by_slice.csv"
            write_csv(path, columns)
            written.append(path)
    if base == XANES.pipeline and XANES.spectra in node and XANES.energy in node:
        written += write_spectra(
            node[XANES.spectra].read(),
            node[XANES.energy].read(),
            output / prefix,
            source=f"analysis/{node.metadata.get('source_run_uid', '')}/{pipeline}",
            found=(
                found_frames(node[XANES.particle_com].read())
                if XANES.particle_com in node
                else None
            ),
            raw=node[XANES.spectra_raw].read() if XANES.spectra_raw in node else None,
        )
    return written


def export_run(client: Any, uid: str, output: Path) -> list[Path]:
    """Export every analysis container of run ``uid`` into ``output``; the files written.

    Raises
    ------
    RunExportError
        The run has no analysis results in this Tiled.
    """
    try:
        containers = client[ANALYSIS][uid]
    except KeyError:
        raise RunExportError(f"run {uid}: no results under {ANALYSIS}/ in this Tiled") from None
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for pipeline in sorted(containers):
        written += _export_container(containers[pipeline], pipeline, f"{uid}_{pipeline}", output)
    if not written:
        raise RunExportError(f"run {uid}: its results hold no map, table or spectrum yet")
    return written
