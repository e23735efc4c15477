"""XANES chemistry in the live analysis: LCF and clustering maps, the operando SoC trajectory.

A XANES run asks for it in its start document:

``lcf_references``  mapping ``{name: reference}``, two to eight standards; a reference is a file
                    name under the consumer's data dir (two-column text, energy eV and
                    absorbance, as ``xanes align --reference`` reads it) or an inline list
                    ``[[energy eV, absorbance], ...]``. Names: letters, digits, ``_`` and
                    ``-``, at most 40 characters (they become column names).
``xanes_clusters``  number of k-means clusters (2 to 16) of the per-pixel spectra (PCA scores);
                    default 3 when ``lcf_references`` is given, 0 turns clustering off.
``lcf_sum_to_one``  constrain the LCF weights to sum to 1 (default false).

A bad request (unknown reference file, a file outside the data dir, malformed numbers, a
reference without an edge jump in the normalisation windows) is refused when the run starts:
logged with the reason, counted in ``beamwatch_start_options_rejected{option}``, and written
as ``chemistry.error`` in the metadata of ``analysis/<uid>/xanes``; the rest of the XANES
analysis goes on. The results (after the scan, under ``analysis/<uid>/xanes``, keys of
:class:`services.core.layout.XanesKeys`):

``lcf_references``     float64 (R, N) the references normalised like the sample, at the scan
                       energies; NaN outside a reference's range
``lcf_fraction_map``   float32 (R, H, W) fraction of each reference per pixel; NaN where unknown
``lcf_r_factor_map``   float32 (H, W) R-factor of each pixel's fit
``lcf_particles``      table per particle: particle, r_factor, weight_<name>, fraction_<name>
``cluster_labels``     int32 (H, W) cluster per pixel, -1 where none
``cluster_spectra``    float64 (K, N) mean normalised spectrum per cluster
``clusters``           table per cluster: cluster, pixels
``soc_trajectory``     table (operando series) per particle per scan: see
                       :data:`TRAJECTORY_COLUMNS`
figures                lcf_fractions, clusters, soc_trajectory
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, overload

import numpy as np

from services.analysis.figures import Drawer, draw_map, length_unit, map_extent, publish_figures
from services.analysis.results import ResultWriter
from services.core.layout import XANES, Status

logger = logging.getLogger(__name__)

__all__ = [
    "CLUSTERS_KEY",
    "ChemistryRequest",
    "ChemistryRequestError",
    "LCF_REFERENCES_KEY",
    "SUM_TO_ONE_KEY",
    "TRAJECTORY_COLUMNS",
    "chemistry_request",
    "write_chemistry",
    "write_trajectory",
]

LCF_REFERENCES_KEY = "lcf_references"
CLUSTERS_KEY = "xanes_clusters"
SUM_TO_ONE_KEY = "lcf_sum_to_one"
DEFAULT_CLUSTERS = 3
MAX_CLUSTERS = 16
MIN_REFERENCES, MAX_REFERENCES = 2, 8
EDGE_MAP = "edge_energy_eV"

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

#: Columns of ``soc_trajectory`` (``<map>`` is ``edge_energy_eV`` and ``fraction_<name>``).
TRAJECTORY_COLUMNS = {
    "particle": "track id: the particles of the series' first scan in label order (label - 1), "
    "then particles that appear later",
    "scan": "position of the scan in the series so far (0 = first)",
    "scan_index": "the start document's scan_index",
    "run_uid": "the scan's run",
    "scan_time": "the scan's start time (start document 'time', Unix seconds); NaN if unknown",
    "start_time": "the same as ISO 8601 UTC, empty if unknown",
    "elapsed_s": "seconds since the first scan's start",
    "label": "the particle's label in this scan, 0 when not found",
    "found": "the particle was matched in this scan",
    "centre_row_px, centre_col_px": "particle centre in the scan's own frame 0 (px)",
    "drift_row_px, drift_col_px": "position of the scan's frame 0 relative to the first (px)",
    "n_pixels": "pixels of the particle",
    "<map>_mean, <map>_sd, <map>_n": "mean and sd over the particle's pixels with a value, and "
    "their number (NaN mean / sd when 0)",
}


class ChemistryRequestError(ValueError):
    """A start-document chemistry option that cannot be used; ``option`` names the key."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass(frozen=True)
class Reference:
    """One standard: raw and normalised spectrum, and where it came from."""

    name: str
    source: str  # the file name under the data dir, or "inline"
    energies: np.ndarray
    normalised: np.ndarray


@dataclass(frozen=True)
class ChemistryRequest:
    """What a run's start document asks for (checked)."""

    references: list[Reference] = field(default_factory=list)
    n_clusters: int = 0
    sum_to_one: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "references": {r.name: r.source for r in self.references},
            "n_clusters": self.n_clusters,
            "sum_to_one": self.sum_to_one,
        }


def _int_option(start: Mapping[str, Any], key: str, default: int) -> int:
    value = start.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChemistryRequestError(key, f"expected an integer, got {value!r:.60}")
    return value


def chemistry_request(
    start: Mapping[str, Any], *, references_dir: Path | None, spectra_params: Any
) -> ChemistryRequest | None:
    """Read and check a start document's chemistry options (module docstring).

    Parameters
    ----------
    start : mapping
        The run's start document.
    references_dir : pathlib.Path or None
        Directory reference file names are relative to (the data dir); None allows only
        inline references.
    spectra_params : pipelines.xanes.params.SpectraParams
        The run's normalisation windows: every reference must be normalisable with them.

    Returns
    -------
    ChemistryRequest or None
        None when the run asks for no chemistry.

    Raises
    ------
    ChemistryRequestError
        With the key and the reason.
    """
    raw_refs = start.get(LCF_REFERENCES_KEY)
    has_clusters = start.get(CLUSTERS_KEY) is not None
    if raw_refs is None and not has_clusters:
        return None
    references: list[Reference] = []
    if raw_refs is not None:
        if not isinstance(raw_refs, Mapping):
            raise ChemistryRequestError(
                LCF_REFERENCES_KEY,
                "expected a mapping {name: file name or [[energy eV, absorbance], ...]}, "
                f"got {type(raw_refs).__name__}",
            )
        if not MIN_REFERENCES <= len(raw_refs) <= MAX_REFERENCES:
            raise ChemistryRequestError(
                LCF_REFERENCES_KEY,
                f"{MIN_REFERENCES} to {MAX_REFERENCES} references needed, got {len(raw_refs)}",
            )
        for name, spec in raw_refs.items():
            references.append(_reference(str(name), spec, references_dir, spectra_params))
    n_clusters = _int_option(start, CLUSTERS_KEY, DEFAULT_CLUSTERS if references else 0)
    if n_clusters != 0 and not 2 <= n_clusters <= MAX_CLUSTERS:
        raise ChemistryRequestError(
            CLUSTERS_KEY, f"expected 0 (off) or 2 to {MAX_CLUSTERS}, got {n_clusters}"
        )
    sum_to_one = start.get(SUM_TO_ONE_KEY, False)
    if not isinstance(sum_to_one, bool):
        raise ChemistryRequestError(SUM_TO_ONE_KEY, f"expected true or false, got {sum_to_one!r}")
    if not references and n_clusters == 0:
        return None
    return ChemistryRequest(references, n_clusters, sum_to_one)


def _reference(name: str, spec: Any, references_dir: Path | None, spectra_params: Any) -> Reference:
    from pipelines.xanes.spectra import analyse_spectra
    from services.core.identifiers import InvalidIdentifier, confined_path
    from services.core.reference_spectra import (
        ReferenceSpectrumError,
        read_reference_file,
        reference_from_rows,
    )

    key = LCF_REFERENCES_KEY
    if not _NAME.match(name):
        raise ChemistryRequestError(
            key, f"reference name {name[:60]!r}: use letters, digits, _ or - (at most 40)"
        )
    try:
        if isinstance(spec, str):
            if references_dir is None:
                raise ChemistryRequestError(
                    key, f"{name}: file {spec[:200]!r} given, but this consumer has no data dir"
                )
            # the messages name the file as the start document gave it, never the data dir's
            # own path: they reach the run's metadata and the live page
            try:
                path = confined_path(references_dir, spec)
            except InvalidIdentifier:
                raise ChemistryRequestError(
                    key,
                    f"{name}: file {spec[:200]!r} is not under the data dir "
                    "(an absolute path, or one that leaves it through '..' or a link)",
                ) from None
            if not path.is_file():
                raise ChemistryRequestError(
                    key, f"{name}: no file {spec[:200]!r} under the data dir"
                )
            energies, absorbance = read_reference_file(path)
            source = spec
        else:
            energies, absorbance = reference_from_rows(spec, where=f"reference {name}")
            source = "inline"
    except ReferenceSpectrumError as exc:
        raise ChemistryRequestError(key, f"{name}: {exc}") from exc
    windows = (
        f"pre_edge_ev={tuple(spectra_params.pre_edge_ev)}, "
        f"post_edge_ev={tuple(spectra_params.post_edge_ev)}"
    )
    try:
        analysis = analyse_spectra(energies, absorbance, params=spectra_params)
    except ValueError as exc:
        raise ChemistryRequestError(
            key,
            f"{name} ({energies[0]:g}-{energies[-1]:g} eV) cannot be normalised with "
            f"{windows}: {exc}",
        ) from exc
    if not bool(analysis.valid):
        raise ChemistryRequestError(key, f"{name} has no edge jump between {windows}")
    return Reference(name, source, analysis.energies, np.asarray(analysis.normalised))


# ---- after the scan --------------------------------------------------------------------------
def write_chemistry(
    final: Any,
    request: ChemistryRequest,
    out: ResultWriter,
    *,
    spectra_params: Any,
    pixel_um: float | None,
    figures_dir: Path,
    run_uid: str,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """Compute and write the LCF and cluster maps of a finished scan.

    Returns
    -------
    tuple
        Metadata (``chemistry``), per-pixel maps for the series trajectory
        (``fraction_<name>``), and the figure paths.
    """
    from pipelines.xanes.chemistry_maps import particle_pixel_spectra

    energies = np.asarray(final.energies, dtype=np.float64)
    md: dict[str, Any] = {**request.describe(), "status": Status.COMPLETE}
    maps: dict[str, np.ndarray] = {}
    drawers: list[tuple[str, Drawer]] = []
    pixels = list(particle_pixel_spectra(final, spectra_params))
    extent = map_extent(final.labels.shape, pixel_um)
    unit = length_unit(pixel_um)
    if request.references:
        lcf_md, lcf_maps = _write_lcf(final, request, out, pixels, energies)
        md["lcf"] = lcf_md
        names = [r.name for r in request.references]
        for k, name in enumerate(names):
            maps[f"fraction_{name}"] = lcf_maps.fraction_map[k].astype(np.float64)
        drawers.append(("lcf_fractions", _lcf_figure(lcf_maps, names, extent, unit)))
    if request.n_clusters:
        cluster_md, clusters = _write_clusters(final, request.n_clusters, out, pixels, energies)
        md["clusters"] = cluster_md
        if clusters is not None:
            drawers.append(("clusters", _cluster_figure(clusters, energies, extent, unit)))
    del pixels
    figures = publish_figures(out, figures_dir, "xanes", drawers, run_uid=run_uid)
    return md, maps, figures


def _write_lcf(
    final: Any,
    request: ChemistryRequest,
    out: ResultWriter,
    pixels: Sequence[Any],
    energies: np.ndarray,
) -> tuple[dict[str, Any], Any]:
    from pipelines.xanes.chemistry_maps import lcf_maps

    refs = [(r.energies, r.normalised) for r in request.references]
    maps = lcf_maps(final, refs, sum_to_one=request.sum_to_one, pixels=pixels)
    on_scan = np.stack(
        [
            np.where((energies >= e[0]) & (energies <= e[-1]), np.interp(energies, e, mu), np.nan)
            for e, mu in refs
        ]
    )
    names = [r.name for r in request.references]
    out.array(XANES.lcf_references, on_scan, dims=["reference", "frame"], names=names)
    out.array(
        XANES.lcf_fraction_map,
        maps.fraction_map.astype(np.float32),
        dims=["reference", "row", "col"],
        names=names,
    )
    out.array(XANES.lcf_r_factor_map, maps.r_factor_map.astype(np.float32), dims=["row", "col"])
    n_p = maps.particle_fractions.shape[0]
    if n_p:
        columns: dict[str, list[Any]] = {
            "particle": list(range(1, n_p + 1)),
            "r_factor": maps.particle_r_factor.tolist(),
        }
        for k, name in enumerate(names):
            columns[f"weight_{name}"] = maps.particle_weights[:, k].tolist()
            columns[f"fraction_{name}"] = maps.particle_fractions[:, k].tolist()
        out.table_rows(XANES.lcf_particles, columns)
    window = maps.fit_window_ev
    n_fit = int(((energies >= window[0]) & (energies <= window[1])).sum())
    fitted = int(np.isfinite(maps.r_factor_map).sum())
    r_finite = maps.r_factor_map[np.isfinite(maps.r_factor_map)]
    md = {
        "reference_names": names,
        "fit_window_ev": [float(window[0]), float(window[1])],
        "n_fit_energies": n_fit,
        "fitted_pixels": fitted,
        "r_factor_median": float(np.median(r_finite)) if r_finite.size else None,
    }
    if fitted == 0:
        md["warning"] = (
            f"no pixel fitted: {energies.size} energies, {n_fit} inside the references' range "
            f"{window[0]:g}-{window[1]:g} eV; a pixel needs its edge normalised and at least "
            f"{len(names) + 1} energies there"
        )
        logger.warning("LCF: %s", md["warning"], extra={"run_uid": out.run_uid})
    return md, maps


def _write_clusters(
    final: Any, n_clusters: int, out: ResultWriter, pixels: Sequence[Any], energies: np.ndarray
) -> tuple[dict[str, Any], Any]:
    from pipelines.xanes.chemistry import ClusterParams
    from pipelines.xanes.chemistry_maps import cluster_maps

    try:
        clusters = cluster_maps(final, params=ClusterParams(n_clusters=n_clusters), pixels=pixels)
    except ValueError as exc:
        logger.warning("clusters not computed: %s", exc, extra={"run_uid": out.run_uid})
        return {"n_clusters": n_clusters, "warning": f"not computed: {exc}"}, None
    out.array(XANES.cluster_labels, clusters.labels, dims=["row", "col"])
    out.array(XANES.cluster_spectra, clusters.cluster_spectra, dims=["cluster", "frame"])
    out.table_rows(
        XANES.clusters,
        {
            "cluster": list(range(n_clusters)),
            "pixels": [int(v) for v in clusters.cluster_sizes],
        },
    )
    return {
        "n_clusters": n_clusters,
        "clustered_pixels": int(clusters.cluster_sizes.sum()),
        "explained_variance_ratio": [float(v) for v in clusters.explained_variance_ratio],
    }, clusters


#: Why an LCF fraction or R-factor map has no value.
WHY_NO_FIT = "NaN everywhere: no particle pixel with a spectrum to fit"


def _lcf_figure(maps: Any, names: list[str], extent: list[float], unit: str) -> Drawer:
    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(names) + 1, squeeze=False)[0]
        for k, name in enumerate(names):
            draw_map(
                fig,
                axes[k],
                maps.fraction_map[k],
                extent=extent,
                label="",
                why_empty=WHY_NO_FIT,
                colorbar={"shrink": 0.7},
                vmin=0.0,
                vmax=1.0,
            )
            values = maps.fraction_map[k][np.isfinite(maps.fraction_map[k])]
            mean = f"mean {values.mean():.2f}" if values.size else "none"
            axes[k].set_title(f"fraction {name}: {mean}", fontsize=8)
        r_map = maps.r_factor_map
        draw_map(
            fig,
            axes[-1],
            r_map,
            extent=extent,
            label="",
            why_empty=WHY_NO_FIT,
            colorbar={"shrink": 0.7},
            cmap="magma",
        )
        finite = r_map[np.isfinite(r_map)]
        median = f"median {np.median(finite):.2g}" if finite.size else "none"
        axes[-1].set_title(f"R-factor: {median}", fontsize=8)
        for ax in axes:
            ax.set_xlabel(f"x ({unit})", fontsize=8)
        axes[0].set_ylabel(f"y ({unit})", fontsize=8)

    return draw, (3.2 * (len(names) + 1), 3.4)


def _cluster_figure(clusters: Any, energies: np.ndarray, extent: list[float], unit: str) -> Drawer:
    def draw(fig: Any) -> None:
        import matplotlib

        left, right = fig.subplots(1, 2)
        k = clusters.cluster_spectra.shape[0]
        colours = matplotlib.colormaps["tab10"]
        shown = np.where(clusters.labels >= 0, clusters.labels.astype(np.float64), np.nan)
        left.imshow(
            shown, cmap=colours, vmin=-0.5, vmax=9.5, interpolation="nearest", extent=extent
        )
        left.set_title(f"{k} clusters (PCA + k-means)", fontsize=8)
        left.set_xlabel(f"x ({unit})", fontsize=8)
        left.set_ylabel(f"y ({unit})", fontsize=8)
        order = np.argsort(energies)
        for c in range(k):
            right.plot(
                energies[order],
                clusters.cluster_spectra[c][order],
                color=colours(c % 10),
                label=f"{c}: {int(clusters.cluster_sizes[c])} px",
            )
        right.set_xlabel("energy (eV)", fontsize=8)
        right.set_ylabel("normalised absorbance", fontsize=8)
        right.legend(fontsize=7, loc="upper left")

    return draw, (8.0, 3.4)


# ---- operando series -------------------------------------------------------------------------
class SeriesScan(Protocol):
    """What the trajectory needs of one scan of a series.

    A scan kept on disk (``services.analysis.xanes_live.SeriesStore``) reads ``labels`` and
    ``maps`` from its file on every access, so they are read where they are used, one or two
    scans at a time.
    """

    @property
    def run_uid(self) -> str: ...
    @property
    def scan_index(self) -> int: ...
    @property
    def time(self) -> float: ...  # start document 'time' (Unix s), NaN if unknown
    @property
    def labels(self) -> np.ndarray: ...
    @property
    def maps(self) -> Mapping[str, np.ndarray]: ...


class _ScanMapsView(Sequence[Any]):
    """The scans as ``pipelines.xanes.trajectory.ScanMaps``, each built when it is indexed."""

    def __init__(self, scans: Sequence[SeriesScan]) -> None:
        self._scans = scans

    def __len__(self) -> int:
        return len(self._scans)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        from pipelines.xanes.trajectory import ScanMaps

        scan = self._scans[index]
        return ScanMaps(labels=scan.labels, maps=dict(scan.maps))


def write_trajectory(
    scans: Sequence[SeriesScan],
    out: ResultWriter,
    *,
    figures_dir: Path,
    run_uid: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Per particle per scan statistics of the series so far (``soc_trajectory``) and its plot.

    Returns
    -------
    tuple
        Metadata (``soc_trajectory_columns``, ``soc_trajectory_maps``) and the figure paths.
    """
    from pipelines.xanes.trajectory import trajectory

    shape = scans[0].labels.shape if scans else None
    if not scans or any(s.labels.shape != shape for s in scans):
        logger.warning(
            "series scans differ in frame shape: no trajectory", extra={"run_uid": run_uid}
        )
        return {}, {}
    names = sorted({name for s in scans for name in s.maps})
    traj = trajectory(_ScanMapsView(scans))
    t0 = scans[0].time
    columns: dict[str, list[Any]] = {key: [] for key in _base_columns()}
    for name in names:
        for suffix in ("mean", "sd", "n"):
            columns[f"{name}_{suffix}"] = []
    for t in range(traj.label.shape[0]):
        for s, scan in enumerate(scans):
            when = scan.time
            columns["particle"].append(t)
            columns["scan"].append(s)
            columns["scan_index"].append(int(scan.scan_index))
            columns["run_uid"].append(scan.run_uid)
            columns["scan_time"].append(when)
            columns["start_time"].append(
                datetime.fromtimestamp(when, UTC).isoformat() if math.isfinite(when) else ""
            )
            columns["elapsed_s"].append(when - t0)
            columns["label"].append(int(traj.label[t, s]))
            columns["found"].append(bool(traj.label[t, s] > 0))
            columns["centre_row_px"].append(float(traj.centre[t, s, 0]))
            columns["centre_col_px"].append(float(traj.centre[t, s, 1]))
            columns["drift_row_px"].append(float(traj.drift[s, 0]))
            columns["drift_col_px"].append(float(traj.drift[s, 1]))
            columns["n_pixels"].append(int(traj.n_pixels[t, s]))
            for name in names:
                columns[f"{name}_mean"].append(float(traj.mean[name][t, s]))
                columns[f"{name}_sd"].append(float(traj.spread[name][t, s]))
                columns[f"{name}_n"].append(int(traj.n_valid[name][t, s]))
    if columns["particle"]:
        out.table_rows(XANES.soc_trajectory, columns)
    times = np.array([s.time for s in scans], dtype=np.float64)
    figures = publish_figures(
        out,
        figures_dir,
        "xanes",
        [("soc_trajectory", _trajectory_figure(traj, times, names))],
        run_uid=run_uid,
    )
    return {
        "soc_trajectory_columns": list(columns),
        "soc_trajectory_maps": names,
    }, figures


def _base_columns() -> list[str]:
    return [
        "particle",
        "scan",
        "scan_index",
        "run_uid",
        "scan_time",
        "start_time",
        "elapsed_s",
        "label",
        "found",
        "centre_row_px",
        "centre_col_px",
        "drift_row_px",
        "drift_col_px",
        "n_pixels",
    ]


def _trajectory_figure(traj: Any, times: np.ndarray, names: list[str]) -> Drawer:
    def draw(fig: Any) -> None:
        axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
        if np.all(np.isfinite(times)):
            x = (times - times[0]) / 60.0
            xlabel = "time since the first scan (min)"
        else:
            x = np.arange(times.size, dtype=np.float64)
            xlabel = "scan (time stamps unknown)"
        for ax, name in zip(axes, names, strict=True):
            for t in range(traj.label.shape[0]):
                mean = traj.mean[name][t]
                if np.isfinite(mean).any():
                    ax.errorbar(
                        x, mean, yerr=traj.spread[name][t], marker="o", ms=3, capsize=2, lw=1
                    )
            ax.set_ylabel(name.removesuffix("_eV") + (" (eV)" if name.endswith("_eV") else ""))
            ax.set_title(f"{name}: mean +- sd per particle", fontsize=8)
        axes[-1].set_xlabel(xlabel)

    return draw, (7.0, 2.6 * max(1, len(names)))
