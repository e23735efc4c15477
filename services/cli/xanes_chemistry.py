"""XANES chemistry options of ``beamwatch xanes align``: ``--reference NAME=FILE`` (linear
combination fitting per particle and per pixel) and ``--clusters K`` (PCA + k-means of the
per-pixel spectra).

The science lives in :mod:`pipelines.xanes.chemistry` and :mod:`pipelines.xanes.chemistry_maps`;
this module reads the reference files, checks the options and writes the result datasets.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CHEMISTRY_DATASETS",
    "ChemistryInputError",
    "ChemistryOptions",
    "add_arguments",
    "options_from_args",
    "read_reference",
]

logger = logging.getLogger(__name__)

#: Datasets added to the ``xanes align`` output by ``--reference`` and ``--clusters``.
CHEMISTRY_DATASETS = {
    "/xanes/lcf/reference_names": "str (R,): NAME of each --reference, in the order given",
    "/xanes/lcf/references": "float64 (R, N): each reference normalised like the sample "
    "spectra, at the scan energies (frame order); NaN outside its energy range",
    "/xanes/lcf/particle_weights": "float64 (P, R): non-negative LCF weights of each "
    "particle's mean normalised spectrum; NaN where not fitted",
    "/xanes/lcf/particle_fractions": "float64 (P, R): weights / their sum (phase fractions)",
    "/xanes/lcf/particle_r_factor": "float64 (P,): sum((mu - fit)^2) / sum(mu^2)",
    "/xanes/lcf/fraction_map": "float32 (R, H, W): fraction of each reference per pixel, "
    "frame-0 geometry; NaN outside particles and where the edge jump is masked",
    "/xanes/lcf/r_factor_map": "float32 (H, W): R-factor of each pixel's fit, NaN as above",
    "/xanes/clusters/labels": "int32 (H, W): k-means cluster of each pixel's normalised "
    "spectrum (PCA scores); -1 outside particles or where the spectrum is incomplete",
    "/xanes/clusters/spectra": "float64 (K, N): mean normalised spectrum of each cluster "
    "(frame order); NaN for an empty cluster",
    "/xanes/clusters/sizes": "int64 (K,): pixels per cluster",
    "/xanes/clusters/explained_variance_ratio": "float64 (C,): variance share of the kept "
    "principal components",
}

REFERENCE_HELP = (
    "reference spectrum for linear-combination fitting, repeatable (two or more standards, "
    "e.g. --reference pristine=NCA.csv --reference charged=NCA_soc1.tsv): a two-column text "
    "file, energy (eV) and absorbance, as Athena or Larch export it (comma, tab or space "
    "separated; lines starting with # and a header line are skipped). Each reference is "
    "NORMALISED AUTOMATICALLY with the same pre-edge/post-edge windows as the sample spectra "
    "(pipelines.xanes.spectra.analyse_spectra, SpectraParams of --params), so raw and "
    "already-normalised exports both work; its energies must cover those windows. Every "
    "particle's mean spectrum and every pixel's spectrum is fitted as a non-negative "
    "combination (exact NNLS) over the energies all references cover; results under /xanes/lcf"
)


class ChemistryInputError(ValueError):
    """A reference file or chemistry option that cannot be used."""


@dataclass(frozen=True)
class Reference:
    """One ``--reference``: its name, file and spectrum as read (energies ascending)."""

    name: str
    path: Path
    energies: Any  # numpy.ndarray (numpy is imported lazily)
    absorbance: Any


@dataclass(frozen=True)
class ChemistryOptions:
    """What ``xanes align`` computes beyond its maps."""

    references: list[Reference] = field(default_factory=list)
    n_clusters: int | None = None
    sum_to_one: bool = False
    cluster_components: int = 3

    def write(self, out: Any, result: Any, spectra_params: Any) -> None:
        """Compute the requested chemistry of ``result`` and write it into the open file.

        Parameters
        ----------
        out : h5py.File
            Output file, open for writing.
        result : pipelines.xanes.tracker.XanesResult
            Alignment result with aligned stacks.
        spectra_params : pipelines.xanes.params.SpectraParams
            Normalisation windows (those of the edge-energy map).
        """
        from pipelines.xanes.chemistry_maps import particle_pixel_spectra

        # both need the normalised per-pixel spectra: computed once when both are asked
        pixels = None
        if self.references and self.n_clusters is not None:
            pixels = list(particle_pixel_spectra(result, spectra_params))
        if self.references:
            _write_lcf(out, result, self.references, spectra_params, self.sum_to_one, pixels)
        if self.n_clusters is not None:
            _write_clusters(
                out, result, self.n_clusters, self.cluster_components, spectra_params, pixels
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--reference``, ``--lcf-sum-to-one``, ``--clusters``, ``--cluster-components``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``xanes align`` parser.
    """
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help=REFERENCE_HELP,
    )
    parser.add_argument(
        "--lcf-sum-to-one",
        action="store_true",
        help="constrain the LCF weights to sum to 1 (default: free non-negative weights; "
        "the fractions are the weights divided by their sum either way)",
    )
    parser.add_argument(
        "--clusters",
        type=int,
        default=None,
        metavar="K",
        help="PCA + k-means clustering of the per-pixel normalised spectra into K >= 2 "
        "clusters (labels map and cluster spectra under /xanes/clusters)",
    )
    parser.add_argument(
        "--cluster-components",
        type=int,
        default=3,
        metavar="C",
        help="principal components kept for the clustering (default 3, at most the number of "
        "energies)",
    )


def options_from_args(args: argparse.Namespace) -> ChemistryOptions | None:
    """Read the reference files and check the options; None when no chemistry is asked.

    Raises
    ------
    ChemistryInputError
        A malformed ``NAME=FILE``, an unreadable file, a duplicate name, ``K < 2``.
    """
    specs = list(getattr(args, "reference", None) or [])
    n_clusters = getattr(args, "clusters", None)
    if not specs and n_clusters is None:
        return None
    if n_clusters is not None and n_clusters < 2:
        raise ChemistryInputError(f"--clusters must be at least 2, got {n_clusters}")
    components = int(getattr(args, "cluster_components", 3))
    if components < 1:
        raise ChemistryInputError(f"--cluster-components must be at least 1, got {components}")
    references: list[Reference] = []
    for spec in specs:
        name, sep, file = str(spec).partition("=")
        if not sep or not name.strip() or not file.strip():
            raise ChemistryInputError(f"--reference {spec!r}: expected NAME=FILE")
        if any(r.name == name.strip() for r in references):
            raise ChemistryInputError(f"--reference name {name.strip()!r} is given twice")
        energies, absorbance = read_reference(Path(file.strip()))
        references.append(Reference(name.strip(), Path(file.strip()), energies, absorbance))
    return ChemistryOptions(
        references=references,
        n_clusters=n_clusters,
        sum_to_one=bool(getattr(args, "lcf_sum_to_one", False)),
        cluster_components=components,
    )


def read_reference(path: Path) -> tuple[Any, Any]:
    """:func:`services.core.reference_spectra.read_reference_file` (energies in eV, absorbance),
    its errors raised as :class:`ChemistryInputError` for the CLI."""
    from services.core.reference_spectra import ReferenceSpectrumError, read_reference_file

    try:
        return read_reference_file(path)
    except ReferenceSpectrumError as exc:
        raise ChemistryInputError(str(exc)) from exc


def _dataset(group: Any, name: str, data: Any, full_name: str, units: str = "") -> None:
    dset = group.create_dataset(name, data=data)
    dset.attrs["description"] = CHEMISTRY_DATASETS[full_name]
    dset.attrs["units"] = units


def _normalised_references(
    references: list[Reference], spectra_params: Any
) -> list[tuple[Any, Any]]:
    from pipelines.xanes.spectra import analyse_spectra

    normalised = []
    for ref in references:
        try:
            analysis = analyse_spectra(ref.energies, ref.absorbance, params=spectra_params)
        except ValueError as exc:
            raise ChemistryInputError(
                f"reference {ref.name} ({ref.path}, {ref.energies[0]:g}-{ref.energies[-1]:g} eV)"
                f" cannot be normalised with pre_edge_ev={spectra_params.pre_edge_ev}, "
                f"post_edge_ev={spectra_params.post_edge_ev}: {exc}"
            ) from exc
        if not bool(analysis.valid):
            raise ChemistryInputError(
                f"reference {ref.name} ({ref.path}) has no edge jump between pre_edge_ev="
                f"{spectra_params.pre_edge_ev} and post_edge_ev={spectra_params.post_edge_ev}"
            )
        normalised.append((analysis.energies, analysis.normalised))
    return normalised


def normalise_references(options: ChemistryOptions, spectra_params: Any) -> None:
    """Check that every reference can be normalised (before the alignment runs).

    Raises
    ------
    ChemistryInputError
        When one cannot.
    """
    _normalised_references(options.references, spectra_params)


def _write_lcf(
    out: Any,
    result: Any,
    references: list[Reference],
    spectra_params: Any,
    sum_to_one: bool,
    pixels: Any = None,
) -> None:
    import numpy as np

    from pipelines.xanes.chemistry_maps import lcf_maps

    normalised = _normalised_references(references, spectra_params)
    maps = lcf_maps(
        result, normalised, spectra_params=spectra_params, sum_to_one=sum_to_one, pixels=pixels
    )
    energies = np.asarray(result.energies, dtype=np.float64)
    on_scan = np.stack(
        [
            np.where((energies >= e[0]) & (energies <= e[-1]), np.interp(energies, e, mu), np.nan)
            for e, mu in normalised
        ]
    )
    group = out.require_group("/xanes/lcf")
    names = np.array([r.name for r in references], dtype=object)
    _dataset(group, "reference_names", names.astype("S"), "/xanes/lcf/reference_names")
    group["reference_names"].attrs["files"] = [str(r.path) for r in references]
    _dataset(group, "references", on_scan, "/xanes/lcf/references")
    _dataset(group, "particle_weights", maps.particle_weights, "/xanes/lcf/particle_weights")
    _dataset(group, "particle_fractions", maps.particle_fractions, "/xanes/lcf/particle_fractions")
    _dataset(group, "particle_r_factor", maps.particle_r_factor, "/xanes/lcf/particle_r_factor")
    _dataset(group, "fraction_map", maps.fraction_map, "/xanes/lcf/fraction_map")
    _dataset(group, "r_factor_map", maps.r_factor_map, "/xanes/lcf/r_factor_map")
    window = maps.fit_window_ev
    n_fit = int(((energies >= window[0]) & (energies <= window[1])).sum())
    group.attrs["fit_window_ev"] = window
    group.attrs["sum_to_one"] = sum_to_one
    group.attrs["n_fit_energies"] = n_fit
    group.attrs["normalisation"] = (
        f"references and sample spectra: pre_edge_ev={spectra_params.pre_edge_ev}, "
        f"post_edge_ev={spectra_params.post_edge_ev}"
    )
    fitted = int(np.isfinite(maps.r_factor_map).sum())
    if fitted == 0:
        status = (
            f"no pixel fitted: the scan has {energies.size} energies, {n_fit} inside the "
            f"references' range {window[0]:g}-{window[1]:g} eV; a pixel needs its edge "
            f"normalised (pre_edge_ev={spectra_params.pre_edge_ev}, post_edge_ev="
            f"{spectra_params.post_edge_ev}) and at least {len(references) + 1} energies"
        )
        logger.warning("xanes align --reference: %s", status)
    else:
        status = f"fitted {fitted} pixels"
    group.attrs["status"] = status
    logger.info("xanes align: LCF against %s: %s", ", ".join(names), status)


def _write_clusters(
    out: Any,
    result: Any,
    n_clusters: int,
    components: int,
    spectra_params: Any,
    pixels: Any = None,
) -> None:
    import numpy as np

    from pipelines.xanes.chemistry import ClusterParams
    from pipelines.xanes.chemistry_maps import cluster_maps

    group = out.require_group("/xanes/clusters")
    params = ClusterParams(n_clusters=n_clusters, n_components=components)
    try:
        maps = cluster_maps(result, params=params, spectra_params=spectra_params, pixels=pixels)
    except ValueError as exc:
        status = f"not computed: {exc}"
        logger.warning("xanes align --clusters: %s", status)
        n_energy = np.asarray(result.energies).size
        _dataset(
            group,
            "labels",
            np.full(result.labels.shape, -1, dtype=np.int32),
            "/xanes/clusters/labels",
        )
        _dataset(
            group, "spectra", np.full((n_clusters, n_energy), np.nan), "/xanes/clusters/spectra"
        )
        _dataset(group, "sizes", np.zeros(n_clusters, dtype=np.int64), "/xanes/clusters/sizes")
        _dataset(
            group,
            "explained_variance_ratio",
            np.full(0, np.nan),
            "/xanes/clusters/explained_variance_ratio",
        )
    else:
        status = f"clustered {int(maps.cluster_sizes.sum())} pixels"
        _dataset(group, "labels", maps.labels, "/xanes/clusters/labels")
        _dataset(group, "spectra", maps.cluster_spectra, "/xanes/clusters/spectra")
        _dataset(group, "sizes", maps.cluster_sizes.astype(np.int64), "/xanes/clusters/sizes")
        _dataset(
            group,
            "explained_variance_ratio",
            maps.explained_variance_ratio,
            "/xanes/clusters/explained_variance_ratio",
        )
    group.attrs["n_clusters"] = n_clusters
    group.attrs["status"] = status
