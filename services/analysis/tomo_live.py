"""The tomography pipeline: after the scan, reconstruct, map cracks slice by slice, quantify.

Writes under ``analysis/<run uid>/cracks/``:

``reconstruction``        float32 (Z, Y, X) filtered back projection
``mask``                  uint8 (Z, Y, X) 1 = crack, grows in blocks of slices as they are segmented
``particle_mask``         uint8 (Z, Y, X) 1 = particle including its cracks, grows likewise
``depth_profile``         float64 (Z,) crack area / particle area per slice (z = 0 separator)
``damage_density``        float32 (Z, Y, X) crack share of the moving window
``particle_density``      float32 (Z, Y, X) particle share of the moving window
``damage_histogram``      float64 (Z, bins), ``histogram_edges`` (bins + 1,)
``layer_fit``             float64 (Z, 3): slope, intercept, Pearson r per slice
``figures/<name>``        and the numbers behind them: see :mod:`services.analysis.tomo_figures`
metadata                  volume fit (slope, intercept, pearson_r, n), timings, figures,
                          ``weights``: the networks used (``crack_weights`` /
                          ``particle_weights``: a file under the data dir or "shipped") and
                          ``errors`` for refused start-document weights
                          (:mod:`services.analysis.tomo_weights`)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from services.analysis.child_stage import ChildStages
from services.analysis.results import ResultWriter
from services.core.layout import CRACKS, PARTICLES, Status
from services.runs.frames import Frame, axis_reading

logger = logging.getLogger(__name__)


def select(start: dict[str, Any]) -> bool:
    return (
        start.get("beamwatch_technique") == "tomography"
        or start.get("plan_name") == "tomo_scan_plan"
    )


def warm_up() -> None:
    """Import what a tomogram's router needs when its start comes (the parameter models of
    the reconstruction and the crack map, torch with them), so that the dispatch thread does
    not then (1.4 s in a fresh interpreter at load 7.5, 1.8 to 4.4 s in the consumer: the
    documents behind the start, a XANES scan's frames among them, waited that long); see
    :meth:`services.analysis.router.PipelineRegistry.warm_up`."""
    import pipelines.cracks.segment  # noqa: F401
    import pipelines.tomo.fbp  # noqa: F401


#: Start-document keys that give the edge length of a reconstructed voxel, in this order.
VOXEL_SIZE_KEYS = ("voxel_size_um", "pixel_size_um")


def voxel_size_from_start(start: dict[str, Any]) -> float | None:
    """Voxel edge length (um) a start document states, or None when it states none.

    ``voxel_size_um`` wins over ``pixel_size_um`` (the detector pixel, which is the voxel of
    a parallel-beam reconstruction), then ``beamwatch_stats_params.voxel_size_um``. A value that
    is not a positive finite number is refused with a warning and counts as unknown, so
    lengths are then reported in px, never in a made-up um.
    """
    stats = start.get("beamwatch_stats_params")
    candidates = [(key, start.get(key)) for key in VOXEL_SIZE_KEYS]
    if isinstance(stats, dict):
        candidates.append(("beamwatch_stats_params.voxel_size_um", stats.get("voxel_size_um")))
    for key, value in candidates:
        if value is None:
            continue
        try:
            size = float(value)
        except (TypeError, ValueError):
            size = float("nan")
        if np.isfinite(size) and size > 0:
            return size
        logger.warning(
            "start document %s=%r is not a positive length in um; lengths stay in px",
            key,
            value,
            extra={"run_uid": start.get("uid")},
        )
    return None


#: Start-document key naming which end of the sample's z axis (the detector's row axis) is the
#: separator side: ``first`` (detector row 0, the default) or ``last``.
SEPARATOR_KEY = "separator"
SEPARATOR_ENDS = ("first", "last")


def separator_from_start(
    start: dict[str, Any], on_rejected: Callable[[str], None] | None = None
) -> tuple[str, str | None]:
    """Which end is the separator side, and the error when the start document's value was
    refused (then ``first``, the documented default, with the error in the metadata)."""
    value = start.get(SEPARATOR_KEY, "first")
    if value in SEPARATOR_ENDS:
        return str(value), None
    error = (
        f"start document {SEPARATOR_KEY}={str(value)[:80]!r} is not one of "
        f"{list(SEPARATOR_ENDS)}; z = 0 (the first detector row) is taken as the separator side"
    )
    logger.warning("%s", error, extra={"run_uid": start.get("uid")})
    if on_rejected is not None:
        on_rejected(SEPARATOR_KEY)
    return "first", error


#: The crack and particle masks grow in Tiled by blocks of slices of at least this many bytes
#: (each), or of what was segmented in :data:`LIVE_MASK_SECONDS`, whichever comes first.
LIVE_MASK_BYTES = 1 << 20
LIVE_MASK_SECONDS = 2.0


class LiveMaskRows:
    """Appends the slices of the crack and particle masks to Tiled as they are segmented, a
    block of slices per write.

    One write per slice cost the Tiled server a request (an array extended) per slice and mask
    (64 slices: 23 and 14 requests per run after the spool's merging, a quarter of a tomogram's
    requests); a block of :data:`LIVE_MASK_BYTES` (a 256 x 256 slice is 64 kB: 16 slices) or
    of :data:`LIVE_MASK_SECONDS` keeps the masks growing while the crack map is made. The arrays
    read back the same.
    """

    def __init__(self, out: Any, cracks: np.ndarray, particles: np.ndarray) -> None:
        self._out = out
        self._cracks = cracks
        self._particles = particles
        self._written = 0
        self._since = time.monotonic()
        slice_bytes = max(1, int(cracks[0].nbytes)) if len(cracks) else 1
        self._rows = max(1, LIVE_MASK_BYTES // slice_bytes)

    def segmented(self, done: int) -> None:
        """Slices ``0 .. done - 1`` are segmented (in increasing z): write a block when due."""
        pending = done - self._written
        if pending >= self._rows or (
            pending > 0 and time.monotonic() - self._since >= LIVE_MASK_SECONDS
        ):
            self._write(done)

    def flush(self) -> None:
        """Write the slices segmented and not written yet."""
        if self._written < len(self._cracks):
            self._write(len(self._cracks))

    def _write(self, done: int) -> None:
        rows = slice(self._written, done)
        self._out.rows(CRACKS.mask, self._cracks[rows], dims=["z", "y", "x"])
        self._out.rows(CRACKS.particle_mask, self._particles[rows], dims=["z", "y", "x"])
        self._written = done
        self._since = time.monotonic()


class CracksPipeline:
    name = CRACKS.pipeline
    version = "1"

    def __init__(
        self,
        start: dict[str, Any],
        *,
        figures_dir: Path,
        slabs: Any = None,
        data_dir: Path | None = None,
        on_rejected: Callable[[str], None] | None = None,
        child: ChildStages | None = None,
    ) -> None:
        from pipelines.cracks.segment import CrackParams
        from pipelines.tomo.fbp import ReconParams
        from services.analysis.tomo_weights import run_weights

        self._recon_params = ReconParams(**start.get("beamwatch_recon_params", {}))
        self._crack_params = CrackParams(**start.get("beamwatch_crack_params", {}))
        self.parameters: dict[str, Any] = {
            "reconstruction": self._recon_params.model_dump(mode="json"),
            "cracks": self._crack_params.model_dump(mode="json"),
        }
        self._uid = start["uid"]
        self._start = start
        self._data_dir = data_dir
        #: runs the in-memory after-scan stage in a child process (None: on this thread)
        self._child = child
        # start-document weights (crack_weights, particle_weights) under the data dir; a refused
        # one leaves the shipped weights, and the metadata says which were used and why
        self._weights = run_weights(start, data_dir=data_dir, on_rejected=on_rejected)
        self.parameters["weights"] = self._weights.metadata()
        self._image_key = start.get("image_key")
        self._angle_key = start.get("angle_key", "rotation")
        self._figures_root = figures_dir
        self._figures_dir = figures_dir / self._uid
        self._particle_params = start.get("beamwatch_particle_params", {})
        self._stats_params = start.get("beamwatch_stats_params", {})
        self._voxel_um = voxel_size_from_start(start)
        # depths count from the separator: with ``separator: last`` the projections' rows are
        # flipped before the reconstruction, so z = 0 of every result is the separator side
        self._separator, separator_error = separator_from_start(start, on_rejected)
        self.parameters["separator"] = self._separator
        if separator_error is not None:
            self.parameters["separator_error"] = separator_error
        self._frames: dict[str, list[np.ndarray]] = {"primary": [], "flat": [], "dark": []}
        self._angles: list[float] = []
        #: services.analysis.tomo_slabs.SlabConfig: big tomograms go slab by slab on Dask
        self._slabs = slabs

    def on_frame(self, frame: Frame, out: ResultWriter) -> None:
        image: np.ndarray | None
        if self._image_key and self._image_key in frame.images:
            image = frame.images[self._image_key]
        else:
            image = next(iter(frame.images.values()), None)
        if image is None or frame.stream not in self._frames:
            return
        if frame.stream == "primary":
            # a projection whose angle is unknown cannot be back-projected: left out and
            # named missing (FrameUnusable), never reconstructed at a made-up angle
            self._angles.append(axis_reading(frame, self._angle_key))
        image = np.asarray(image)
        if self._separator == "last" and image.ndim == 2:
            image = image[::-1]  # detector rows are the volume's z slices
        self._frames[frame.stream].append(image)

    def on_stop(self, stop: dict[str, Any] | None, out: ResultWriter) -> None:
        if len(self._frames["primary"]) < 2:
            raise ValueError(
                f"a tomogram needs at least 2 projections, got {len(self._frames['primary'])}"
            )
        # lengths for a viewer from the first slice on (the figures and numbers follow)
        out.metadata(
            {
                "voxel_size_um": self._voxel_um,
                "length_unit": "um" if self._voxel_um else "px",
                "window": self._crack_params.quantify.window,
                "separator": self._separator,
                "z_convention": "z = 0 is the separator side"
                + (
                    " (the last detector row: the reconstruction is flipped along z)"
                    if self._separator == "last"
                    else " (the first detector row)"
                ),
            }
        )
        rows, cols = np.shape(self._frames["primary"][0])
        if self._slabs is not None and self._slabs.wanted(rows, cols):
            self._on_stop_slabs(out)
            return
        if self._child is not None:
            self._stage_in_child(self._child, out)
            return
        t0 = time.monotonic()
        projections = np.stack(self._frames["primary"])
        flat = np.stack(self._frames["flat"]) if self._frames["flat"] else None
        dark = np.stack(self._frames["dark"]) if self._frames["dark"] else None
        self.stage(projections, np.asarray(self._angles), flat, dark, out, started=t0)

    def _stage_in_child(self, child: ChildStages, out: Any) -> None:
        """The in-memory stage in a child process: the frames handed over as npy files."""
        rows, cols = np.shape(self._frames["primary"][0])[:2]
        with child.stage_dir(self._uid) as work:
            for stream, frames in self._frames.items():
                if frames:
                    save_stack(work / f"{stream}.npy", frames)
            np.save(work / "angles.npy", np.asarray(self._angles, dtype=np.float64))
            # the child has them now (a replay after a restart collects them again)
            self._frames = {stream: [] for stream in self._frames}
            params = {
                "start": self._start,
                "figures_dir": str(self._figures_root),
                "data_dir": None if self._data_dir is None else str(self._data_dir),
            }
            # the time limit grows with the (rows, cols, cols) volume
            child.run(
                f"{__name__}:stage_in_child",
                stage_dir=work,
                params=params,
                out=out,
                voxels=int(rows) * int(cols) * int(cols),
            )

    def stage(
        self,
        projections: np.ndarray,
        angles: np.ndarray,
        flat: np.ndarray | None,
        dark: np.ndarray | None,
        out: Any,
        *,
        started: float | None = None,
    ) -> None:
        """The in-memory after-scan stage: reconstruction, crack map, quantification,
        figures, then the particle stage (here, or in a child process: ``out`` is then a
        :class:`~services.analysis.child_stage.ChildWriter`)."""
        from pipelines.cracks.particle_mask import solid_threshold
        from pipelines.cracks.quantify import quantify_damage
        from pipelines.cracks.segment import iter_crack_slices
        from pipelines.tomo.fbp import reconstruct

        t0 = time.monotonic() if started is None else started
        volume = reconstruct(projections, angles, flat=flat, dark=dark, params=self._recon_params)
        t_recon = time.monotonic() - t0
        out.array(CRACKS.reconstruction, volume, dims=["z", "y", "x"])
        threshold = solid_threshold(volume)
        params = self._crack_params.model_copy(
            update={
                "particle": self._crack_params.particle.model_copy(update={"threshold": threshold})
            }
        )
        cracks = np.zeros(volume.shape, dtype=np.uint8)
        particles = np.zeros(volume.shape, dtype=np.uint8)
        live = LiveMaskRows(out, cracks, particles)
        for piece in iter_crack_slices(volume, params, model=self._weights.crack_model):
            cracks[piece.z] = piece.crack
            particles[piece.z] = piece.particle
            live.segmented(piece.z + 1)
        live.flush()
        t_cracks = time.monotonic() - t0 - t_recon
        q = quantify_damage(cracks, particles, params.quantify, workers=params.n_workers())
        out.array(CRACKS.depth_profile, q.depth_profile, dims=["z"])
        out.array(CRACKS.damage_density, q.damage_density, dims=["z", "y", "x"])
        out.array(CRACKS.particle_density, q.particle_density, dims=["z", "y", "x"])
        out.array(CRACKS.damage_histogram, q.damage_histogram, dims=["z", "bin"])
        out.array(CRACKS.histogram_edges, q.histogram_edges, dims=["edge"])
        out.array(
            CRACKS.layer_fit,
            np.stack([q.layer_slope, q.layer_intercept, q.layer_pearson_r], axis=1),
            dims=["z", "slope_intercept_r"],
        )
        figures = self._figures(q, out)
        fit = q.volume_fit
        # the particle stage is announced before the crack map is declared complete, so a
        # watcher waiting for every container of the run to be final waits for it too
        particles_out = out.sibling(PARTICLES.pipeline)
        particles_out.container(
            {
                "source_run_uid": self._uid,
                "pipeline": PARTICLES.pipeline,
                "version": self.version,
                "status": Status.QUEUED,
            }
        )
        out.metadata(
            {
                "volume_fit": {
                    "slope": fit.slope,
                    "intercept": fit.intercept,
                    "pearson_r": fit.pearson_r,
                    "n_samples": fit.n_samples,
                },
                "crack_fraction": float(cracks.sum() / max(1, particles.sum())),
                "window": q.window,
                "shape": list(volume.shape),
                "seconds_reconstruction": t_recon,
                "seconds_cracks": t_cracks,
                "seconds_total": time.monotonic() - t0,
                "figures": figures,
                "weights": self._weights.metadata(),
                # the crack map is final now: a viewer need not wait for the particle stage
                # (minutes at 512^3) to see it complete (or incomplete: projections missing)
                **out.final(),
            }
        )
        self._particles(volume, cracks, particles_out)
        logger.info(
            "tomogram %s: %s volume reconstructed in %.1f s, cracks in %.1f s",
            self._uid,
            volume.shape,
            t_recon,
            t_cracks,
            extra={"run_uid": self._uid},
        )

    def _on_stop_slabs(self, out: ResultWriter) -> None:
        """The after-scan stages slab by slab on the Dask cluster (volume > dask.threshold_mb)."""
        from pipelines.particles.analyze import ParticleParams
        from pipelines.particles.stats import StatsParams
        from services.analysis.tomo_slabs import run_slab_stages
        from services.analysis.tomo_weights import CRACK_WEIGHTS_KEY, PARTICLE_WEIGHTS_KEY

        params = ParticleParams(**self._particle_params)
        stats_params = StatsParams(**{**self._stats_params, "voxel_size_um": self._voxel_um or 1.0})
        cracks_complete: list[bool] = []

        def cracks_done(q: Any, numbers: dict[str, Any]) -> None:
            out.array(CRACKS.depth_profile, q.depth_profile, dims=["z"])
            out.array(CRACKS.damage_histogram, q.damage_histogram, dims=["z", "bin"])
            out.array(CRACKS.histogram_edges, q.histogram_edges, dims=["edge"])
            out.array(
                CRACKS.layer_fit,
                np.stack([q.layer_slope, q.layer_intercept, q.layer_pearson_r], axis=1),
                dims=["z", "slope_intercept_r"],
            )
            figures = self._preview_figures(lambda: self._figures(q, out))
            particles_out = out.sibling(PARTICLES.pipeline)
            particles_out.container(
                {
                    "source_run_uid": self._uid,
                    "pipeline": PARTICLES.pipeline,
                    "version": self.version,
                    "status": Status.QUEUED,
                }
            )
            fit = q.volume_fit
            out.metadata(
                {
                    "volume_fit": {
                        "slope": fit.slope,
                        "intercept": fit.intercept,
                        "pearson_r": fit.pearson_r,
                        "n_samples": fit.n_samples,
                    },
                    "window": q.window,
                    **numbers,
                    "weights": self._weights.metadata(),
                    "figures": figures,
                    **out.final(),
                }
            )
            particles_out.container(
                {
                    "source_run_uid": self._uid,
                    "pipeline": PARTICLES.pipeline,
                    "version": self.version,
                    "status": Status.RUNNING,
                    "parameters": {
                        "particles": params.model_dump(mode="json"),
                        "statistics": stats_params.model_dump(mode="json"),
                    },
                }
            )
            cracks_complete.append(True)

        def particles_done(table: np.ndarray, shape: Any, pout: ResultWriter, sec: float) -> None:
            self._slab_particle_results(table, shape[0], pout, stats_params, sec)

        try:
            run_slab_stages(
                self._slabs,
                uid=self._uid,
                frames=self._frames,
                angles=self._angles,
                recon_params=self._recon_params,
                crack_params=self._crack_params,
                particle_params=params,
                crack_weights=self._weights.paths.get(CRACK_WEIGHTS_KEY),
                particle_weights=self._weights.paths.get(PARTICLE_WEIGHTS_KEY),
                out=out,
                cracks_done=cracks_done,
                particles_done=particles_done,
            )
        except Exception as exc:
            if not cracks_complete:
                raise  # the crack stage failed: the router reports it
            logger.error(
                "particle analysis (slabs) failed: %s",
                exc,
                exc_info=True,
                extra={"run_uid": self._uid},
            )
            out.sibling(PARTICLES.pipeline).metadata(
                {"status": Status.FAILED, "error": f"{type(exc).__name__}: {exc}"}
            )

    def _preview_figures(self, draw: Any) -> dict[str, str]:
        """Figures of the slab path (its volumes are Zarr arrays, not in memory): a preview
        that fails is logged and left out, the results stand."""
        try:
            return dict(draw())
        except Exception as exc:
            logger.warning("figures of the slab path failed: %s", exc, extra={"run_uid": self._uid})
            return {}

    def _slab_particle_results(
        self, table: np.ndarray, depth: int, out: ResultWriter, stats_params: Any, seconds: float
    ) -> None:
        """Table, statistics and metadata of the particle stage of the slab path."""
        from pipelines.particles.stats import particle_statistics

        unit = "um" if self._voxel_um is not None else "px"
        stats = particle_statistics(table, depth=depth, params=stats_params)
        _write_particle_table(out, table, stats, unit)
        out.metadata(
            {
                **out.final(),
                "particles": int(len(table)),
                "flawed_fraction": _finite(stats.overall.flawed_fraction),
                "mean_detachment": _finite(stats.overall.mean_detachment),
                "n_excluded_border": int(stats.n_excluded_border),
                "length_unit": unit,
                "voxel_size_um": self._voxel_um,
                "size_threshold_um": stats_params.size_threshold_um if self._voxel_um else None,
                "seconds": seconds,
                "slabs": True,
                "figures": {},
            }
        )

    def _particles(self, volume: np.ndarray, cracks: np.ndarray, out: ResultWriter) -> None:
        """Second stage: every particle once (even when cracked), flaws, detachment, stats."""
        from pipelines.particles.analyze import ParticleParams, analyze_particles
        from pipelines.particles.stats import StatsParams, particle_statistics

        params = ParticleParams(**self._particle_params)
        # Unknown voxel size: lengths in px (1 px per voxel); the paper's 11 um small/large
        # split has no meaning in px and is not reported.
        stats_params = StatsParams(**{**self._stats_params, "voxel_size_um": self._voxel_um or 1.0})
        unit = "um" if self._voxel_um is not None else "px"
        out.container(
            {
                "source_run_uid": self._uid,
                "pipeline": PARTICLES.pipeline,
                "version": self.version,
                "status": Status.RUNNING,
                "parameters": {
                    "particles": params.model_dump(mode="json"),
                    "statistics": stats_params.model_dump(mode="json"),
                },
            }
        )
        try:
            t0 = time.monotonic()
            result = analyze_particles(
                volume,
                crack_mask=cracks.astype(bool),
                params=params,
                particle_model=self._weights.particle_model,
            )
            stats = particle_statistics(result.table, depth=volume.shape[0], params=stats_params)
            out.array(PARTICLES.labels, result.labels.astype(np.int32), dims=["z", "y", "x"])
            _write_particle_table(out, result.table, stats, unit)
            figures = self._particle_figures(stats, out, unit, result, volume)
            out.metadata(
                {
                    **out.final(),
                    "particles": int(len(result.table)),
                    "flawed_fraction": _finite(stats.overall.flawed_fraction),
                    "mean_detachment": _finite(stats.overall.mean_detachment),
                    "n_excluded_border": int(stats.n_excluded_border),
                    "length_unit": unit,
                    "voxel_size_um": self._voxel_um,
                    "size_threshold_um": stats_params.size_threshold_um if self._voxel_um else None,
                    "seconds": time.monotonic() - t0,
                    "stage_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
                    "figures": figures,
                }
            )
        except Exception as exc:
            logger.error(
                "particle analysis failed: %s", exc, exc_info=True, extra={"run_uid": self._uid}
            )
            out.metadata({"status": Status.FAILED, "error": f"{type(exc).__name__}: {exc}"})

    def _particle_figures(
        self, stats: Any, out: ResultWriter, unit: str, result: Any, volume: np.ndarray
    ) -> dict[str, str]:
        from pipelines.particles.analyze import ParticleParams
        from pipelines.particles.stats import StatsParams
        from services.analysis.tomo_figures import particle_figures

        params = ParticleParams(**self._particle_params)
        threshold = StatsParams(**self._stats_params).size_threshold_um
        extra = particle_figures(
            stats,
            result.table,
            out,
            volume=volume,
            labels=result.labels,
            voxel_um=self._voxel_um,
            size_threshold_um=threshold,
            min_flawed_slices=params.flaw.min_flawed_slices,
            figures_dir=self._figures_dir,
            run_uid=self._uid,
        )
        figures: dict[str, str] = extra.pop("figures")
        out.metadata(extra)
        return figures

    def _figures(self, q: Any, out: ResultWriter) -> dict[str, str]:
        from services.analysis.tomo_figures import crack_figures

        extra = crack_figures(
            q,
            out,
            n_layers=self._crack_params.quantify.n_layers,
            voxel_um=self._voxel_um,
            figures_dir=self._figures_dir,
            run_uid=self._uid,
        )
        figures: dict[str, str] = extra.pop("figures")
        out.metadata(extra)
        return figures


def stage_in_child(stage_dir: Path, params: dict[str, Any], out: Any) -> None:
    """The child process's side of :meth:`CracksPipeline._stage_in_child`."""

    def load(name: str) -> np.ndarray | None:
        path = stage_dir / f"{name}.npy"
        return np.load(path, allow_pickle=False) if path.exists() else None

    data_dir = params.get("data_dir")
    pipeline = CracksPipeline(
        params["start"],
        figures_dir=Path(params["figures_dir"]),
        data_dir=None if data_dir is None else Path(data_dir),
    )
    projections, angles = load("primary"), load("angles")
    if projections is None or angles is None:
        raise ValueError(f"no projections or angles in {stage_dir}")
    pipeline.stage(projections, angles, load("flat"), load("dark"), out)


def save_stack(path: Path, frames: list[np.ndarray]) -> None:
    """``np.stack(frames)`` saved as an npy file, frame by frame (no stacked copy in memory,
    no long hold of the GIL)."""
    first = np.asarray(frames[0])
    shapes = {np.shape(frame) for frame in frames}
    if len(shapes) > 1:
        raise ValueError(f"frames of different shapes cannot be stacked: {sorted(shapes)}")
    dtype = np.result_type(*{np.asarray(frame).dtype for frame in frames})
    stack = np.lib.format.open_memmap(
        path, mode="w+", dtype=dtype, shape=(len(frames), *first.shape)
    )
    for i, frame in enumerate(frames):
        stack[i] = frame
    stack.flush()
    del stack


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _write_particle_table(out: ResultWriter, table: np.ndarray, stats: Any, unit: str) -> None:
    """The particle table, per-slice flaw scores and the size / detachment histograms (the
    in-memory and the slab path write the same keys)."""
    scalar = [n for n in (table.dtype.names or ()) if table[n].ndim == 1]
    out.table_rows(PARTICLES.table, {n: table[n].tolist() for n in scalar})
    out.array(PARTICLES.slice_scores, table["slice_scores"], dims=["particle", "slice"])
    out.array(PARTICLES.size_counts, stats.size_counts, dims=["bin"])
    out.array(
        PARTICLES.size_edges_um if unit == "um" else PARTICLES.size_edges_px,
        stats.size_edges_um,
        dims=["edge"],
    )
    out.array(PARTICLES.detachment_counts, stats.detachment_counts, dims=["bin"])
    out.array(PARTICLES.detachment_edges, stats.detachment_edges, dims=["edge"])
