"""Where results live in Tiled and what their statuses say: one place for every reader.

The analysis writers (``services.analysis``), the raw path, the report and the live page all
read these names; the page gets them as JSON from ``/layout.json`` (:func:`layout_json`), so a
key renamed here is renamed everywhere. The README's "Layout in Tiled" describes the same tree::

    raw/<run uid>/<stream>/...              what the detector saw (bluesky TiledWriter layout)
    analysis/<run uid>/<pipeline>/<key>     what beamwatch made of it
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

#: Top-level containers of the catalog.
RAW = "raw"
ANALYSIS = "analysis"
#: The first column of an analysis table without a seq_num of its own per row: the row's place
#: in the table, from 0 in append order; the table's rows read back in its order on every
#: table storage (``services.tiled.tables``).
ROW_INDEX = "row_index"


class Status(StrEnum):
    """``status`` of a pipeline container ``analysis/<uid>/<pipeline>``."""

    QUEUED = "queued"  # announced, waits for an earlier stage (particles after cracks)
    RUNNING = "running"
    COMPLETE = "complete"  # every frame is in and every result written
    #: finished without some frames (``missing_seq_nums``) or with a write Tiled rejected
    #: (``rejected_writes``)
    INCOMPLETE = "incomplete"
    FAILED = "failed"  # ``error`` and ``traceback`` say why
    INTERRUPTED = "interrupted"  # the consumer stopped before the run did


#: Statuses after which a pipeline container no longer changes.
FINAL_STATUSES: tuple[Status, ...] = (
    Status.COMPLETE,
    Status.INCOMPLETE,
    Status.FAILED,
    Status.INTERRUPTED,
)


def not_complete(status: str) -> str:
    """A final status of a run or pipeline that lost something: ``complete`` becomes
    ``incomplete``; any other status (``failed``, ``interrupted``, ...) is kept."""
    return Status.INCOMPLETE.value if status == Status.COMPLETE else str(status)


class RawStatus(StrEnum):
    """``beamwatch_status`` of ``raw/<uid>`` once its stop document is in (or given up)."""

    COMPLETE = "complete"
    #: Events missing (``beamwatch_missing_seq_nums``) or a write rejected (``rejected_writes``)
    INCOMPLETE = "incomplete"
    #: given up: every raw worker that took the run died (``error`` says how often)
    FAILED = "failed"


#: ``raw/<uid>`` metadata written with a ``complete`` status: rows each stream's table must
#: hold (the Events routed); the status is written ``incomplete`` when Tiled holds fewer.
RAW_ROWS = "beamwatch_rows"


@dataclass(frozen=True)
class MetadataKeys:
    """Metadata keys of a pipeline container (and of ``raw/<uid>``)."""

    status: str = "status"
    error: str = "error"
    traceback: str = "traceback"
    missing_seq_nums: str = "missing_seq_nums"
    stop_lost: str = "stop_lost"
    bad_fields: str = "bad_fields"
    raw_status: str = "beamwatch_status"
    #: writes Tiled will never accept, of this run or pipeline (kept in the consumer's
    #: ``spool/<role>/rejected/``): op, key, path, error, and the seq_nums or rows they held
    rejected_writes: str = "rejected_writes"
    write_errors: str = "write_errors"  # how many
    #: ``raw/<uid>``: frames (stream -> seq_nums) whose Datum never arrived, dropped at the stop
    unregistered_frames: str = "beamwatch_unregistered_frames"


@dataclass(frozen=True)
class FramesKeys:
    pipeline: str = "frames"
    frame_stats: str = "frame_stats"


@dataclass(frozen=True)
class XanesKeys:
    pipeline: str = "xanes"
    global_shift: str = "global_shift"
    particle_com: str = "particle_com"
    particle_shift: str = "particle_shift"
    labels: str = "labels"
    frames: str = "frames"
    particles: str = "particles"
    edge_energy: str = "edge_energy"
    whiteline_energy: str = "whiteline_energy"
    spectra: str = "spectra"
    spectra_raw: str = "spectra_raw"
    energy: str = "energy"
    aligned: str = "aligned"
    backfilled: str = "backfilled"  # (P, N) bool: shift from the post-edge pass's backfill
    smoothed: str = "smoothed"  # (P, N) bool: deviation from the drift smoothed at finalize
    post_edge_applied: str = "post_edge_applied"  # metadata key: the post-edge pass ran
    deformation: str = "deformation"
    deformation_displacement: str = "deformation_displacement"
    deformation_nonrigid: str = "deformation_nonrigid"
    # chemistry (start document lcf_references / xanes_clusters; services.analysis.xanes_chemistry)
    lcf_references: str = "lcf_references"
    lcf_fraction_map: str = "lcf_fraction_map"
    lcf_r_factor_map: str = "lcf_r_factor_map"
    lcf_particles: str = "lcf_particles"
    cluster_labels: str = "cluster_labels"
    cluster_spectra: str = "cluster_spectra"
    clusters: str = "clusters"
    chemistry: str = "chemistry"  # metadata key: request, status, error, fit summary
    soc_trajectory: str = "soc_trajectory"  # operando series: per particle per scan
    figures: str = "figures"


@dataclass(frozen=True)
class CracksKeys:
    pipeline: str = "cracks"
    reconstruction: str = "reconstruction"
    mask: str = "mask"
    particle_mask: str = "particle_mask"
    depth_profile: str = "depth_profile"
    damage_density: str = "damage_density"
    particle_density: str = "particle_density"
    damage_histogram: str = "damage_histogram"
    histogram_edges: str = "histogram_edges"
    layer_fit: str = "layer_fit"
    figures: str = "figures"


@dataclass(frozen=True)
class ParticlesKeys:
    pipeline: str = "particles"
    labels: str = "labels"
    table: str = "table"
    slice_scores: str = "slice_scores"
    size_counts: str = "size_counts"
    size_edges_um: str = "size_edges_um"
    size_edges_px: str = "size_edges_px"
    detachment_counts: str = "detachment_counts"
    detachment_edges: str = "detachment_edges"
    figures: str = "figures"


@dataclass(frozen=True)
class ParticleColumns:
    """Columns of ``analysis/<uid>/particles/table`` (one row per particle)."""

    label: str = "label"
    volume_voxels: str = "volume_voxels"
    equivalent_diameter_px: str = "equivalent_diameter_px"
    centroid_z: str = "centroid_z"
    centroid_y: str = "centroid_y"
    centroid_x: str = "centroid_x"
    surface_area_px2: str = "surface_area_px2"
    sphericity: str = "sphericity"
    crack_fraction: str = "crack_fraction"
    flawed_slices: str = "flawed_slices"
    flawed: str = "flawed"
    detachment: str = "detachment"
    touches_border: str = "touches_border"


METADATA = MetadataKeys()
FRAMES = FramesKeys()
XANES = XanesKeys()
CRACKS = CracksKeys()
PARTICLES = ParticlesKeys()
PARTICLE_COLUMNS = ParticleColumns()


def status_node(path: tuple[str, ...] | list[str]) -> tuple[tuple[str, ...], str] | None:
    """The node whose status a write under ``path`` counts for, and its status key:
    ``raw/<uid>`` (``beamwatch_status``) or ``analysis/<uid>/<pipeline>`` (``status``);
    None for any other path."""
    path = tuple(path)
    if path[:1] == (RAW,) and len(path) >= 2:
        return path[:2], METADATA.raw_status
    if path[:1] == (ANALYSIS,) and len(path) >= 3:
        return path[:3], METADATA.status
    return None


def raw_path(run_uid: str, *parts: str) -> list[str]:
    """``raw/<run uid>/...`` as a path list."""
    return [RAW, run_uid, *parts]


def analysis_path(run_uid: str, *parts: str) -> list[str]:
    """``analysis/<run uid>/...`` as a path list (``parts`` start with the pipeline name)."""
    return [ANALYSIS, run_uid, *parts]


def layout_json() -> dict[str, Any]:
    """The whole layout as plain JSON, as the live page reads it (``/layout.json``)."""
    return {
        "containers": {"raw": RAW, "analysis": ANALYSIS},
        "row_index": ROW_INDEX,
        "status": {s.name.lower(): s.value for s in Status},
        "final_statuses": [s.value for s in FINAL_STATUSES],
        "raw_status": {s.name.lower(): s.value for s in RawStatus},
        "metadata": asdict(METADATA),
        "frames": asdict(FRAMES),
        "xanes": asdict(XANES),
        "cracks": asdict(CRACKS),
        "particles": asdict(PARTICLES),
        "particle_columns": asdict(PARTICLE_COLUMNS),
    }
