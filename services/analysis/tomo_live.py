"""The tomography pipeline: after the scan, reconstruct, map cracks slice by slice, quantify.

Writes under ``analysis/<run uid>/cracks/``:

``reconstruction``        float32 (Z, Y, X) filtered back projection
``mask``                  uint8 (Z, Y, X) 1 = crack, grows slice by slice as each is segmented
``particle_mask``         uint8 (Z, Y, X) 1 = particle including its cracks, grows likewise
``depth_profile``         float64 (Z,) crack area / particle area per slice (z = 0 separator)
``damage_density``        float32 (Z, Y, X) crack share of the moving window
``particle_density``      float32 (Z, Y, X) particle share of the moving window
``damage_histogram``      float64 (Z, bins), ``histogram_edges`` (bins + 1,)
``layer_fit``             float64 (Z, 3): slope, intercept, Pearson r per slice
``figures/<name>``        damage maps (top, bottom), depth profile, correlation scatter
metadata                  volume fit (slope, intercept, pearson_r, n), timings, figures
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.analysis.figures import publish_figures
from services.analysis.results import ResultWriter
from services.runs.frames import Frame

logger = logging.getLogger(__name__)


def select(start: dict[str, Any]) -> bool:
    return (
        start.get("beamwatch_technique") == "tomography"
        or start.get("plan_name") == "tomo_scan_plan"
    )


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


class CracksPipeline:
    name = "cracks"
    version = "1"

    def __init__(self, start: dict[str, Any], *, figures_dir: Path, slabs: Any = None) -> None:
        from pipelines.cracks.segment import CrackParams
        from pipelines.tomo.fbp import ReconParams

        self._recon_params = ReconParams(**start.get("beamwatch_recon_params", {}))
        self._crack_params = CrackParams(**start.get("beamwatch_crack_params", {}))
        self.parameters = {
            "reconstruction": self._recon_params.model_dump(mode="json"),
            "cracks": self._crack_params.model_dump(mode="json"),
        }
        self._uid = start["uid"]
        self._image_key = start.get("image_key")
        self._angle_key = start.get("angle_key", "rotation")
        self._figures_dir = figures_dir / self._uid
        self._particle_params = start.get("beamwatch_particle_params", {})
        self._stats_params = start.get("beamwatch_stats_params", {})
        self._voxel_um = voxel_size_from_start(start)
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
            if self._angle_key not in frame.readings:
                raise ValueError(f"projection seq_num {frame.seq_num} has no {self._angle_key!r}")
            self._angles.append(float(frame.readings[self._angle_key]))
        self._frames[frame.stream].append(np.asarray(image))

    def on_stop(self, stop: dict[str, Any] | None, out: ResultWriter) -> None:
        from pipelines.cracks.particle_mask import solid_threshold
        from pipelines.cracks.quantify import quantify_damage
        from pipelines.cracks.segment import iter_crack_slices
        from pipelines.tomo.fbp import reconstruct

        if len(self._frames["primary"]) < 2:
            raise ValueError(
                f"a tomogram needs at least 2 projections, got {len(self._frames['primary'])}"
            )
        rows, cols = np.shape(self._frames["primary"][0])
        if self._slabs is not None and self._slabs.wanted(rows, cols):
            self._on_stop_slabs(out)
            return
        t0 = time.monotonic()
        projections = np.stack(self._frames["primary"])
        flat = np.stack(self._frames["flat"]) if self._frames["flat"] else None
        dark = np.stack(self._frames["dark"]) if self._frames["dark"] else None
        volume = reconstruct(
            projections, np.asarray(self._angles), flat=flat, dark=dark, params=self._recon_params
        )
        t_recon = time.monotonic() - t0
        out.array("reconstruction", volume, dims=["z", "y", "x"])
        threshold = solid_threshold(volume)
        params = self._crack_params.model_copy(
            update={
                "particle": self._crack_params.particle.model_copy(update={"threshold": threshold})
            }
        )
        cracks = np.zeros(volume.shape, dtype=np.uint8)
        particles = np.zeros(volume.shape, dtype=np.uint8)
        for piece in iter_crack_slices(volume, params):
            cracks[piece.z] = piece.crack
            particles[piece.z] = piece.particle
            out.rows("mask", piece.crack[None], dims=["z", "y", "x"])
            out.rows("particle_mask", piece.particle[None], dims=["z", "y", "x"])
        t_cracks = time.monotonic() - t0 - t_recon
        q = quantify_damage(cracks, particles, params.quantify, workers=params.n_workers())
        out.array("depth_profile", q.depth_profile, dims=["z"])
        out.array("damage_density", q.damage_density, dims=["z", "y", "x"])
        out.array("particle_density", q.particle_density, dims=["z", "y", "x"])
        out.array("damage_histogram", q.damage_histogram, dims=["z", "bin"])
        out.array("histogram_edges", q.histogram_edges, dims=["edge"])
        out.array(
            "layer_fit",
            np.stack([q.layer_slope, q.layer_intercept, q.layer_pearson_r], axis=1),
            dims=["z", "slope_intercept_r"],
        )
        figures = self._figures(q, out)
        fit = q.volume_fit
        # the particle stage is announced before the crack map is declared complete, so a
        # watcher waiting for every container of the run to be final waits for it too
        particles_out = out.sibling("particles")
        particles_out.container(
            {
                "source_run_uid": self._uid,
                "pipeline": "particles",
                "version": self.version,
                "status": "queued",
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
                # the crack map is whole now: a viewer need not wait for the particle stage
                # (minutes at 512^3) to see it complete
                "status": "complete",
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
        from services.analysis.tomo_slabs import run_slab_stages

        params = ParticleParams(**self._particle_params)
        cracks_complete: list[bool] = []

        def cracks_done(q: Any, numbers: dict[str, Any]) -> None:
            out.array("depth_profile", q.depth_profile, dims=["z"])
            out.array("damage_histogram", q.damage_histogram, dims=["z", "bin"])
            out.array("histogram_edges", q.histogram_edges, dims=["edge"])
            out.array(
                "layer_fit",
                np.stack([q.layer_slope, q.layer_intercept, q.layer_pearson_r], axis=1),
                dims=["z", "slope_intercept_r"],
            )
            figures = self._figures(q, out)
            particles_out = out.sibling("particles")
            particles_out.container(
                {
                    "source_run_uid": self._uid,
                    "pipeline": "particles",
                    "version": self.version,
                    "status": "queued",
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
                    "figures": figures,
                    "status": "complete",
                }
            )
            self._particles_container(particles_out, params)
            cracks_complete.append(True)

        def particles_done(
            table: np.ndarray, shape: Any, particles_out: ResultWriter, seconds: float
        ) -> None:
            self._particle_results(table, shape[0], particles_out, seconds, {"slabs": seconds})

        try:
            run_slab_stages(
                self._slabs,
                uid=self._uid,
                frames=self._frames,
                angles=self._angles,
                recon_params=self._recon_params,
                crack_params=self._crack_params,
                particle_params=params,
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
            out.sibling("particles").metadata(
                {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            )

    def _particles_container(self, out: ResultWriter, params: Any) -> None:
        out.container(
            {
                "source_run_uid": self._uid,
                "pipeline": "particles",
                "version": self.version,
                "status": "running",
                "parameters": {
                    "particles": params.model_dump(mode="json"),
                    "statistics": self._stats_params_model().model_dump(mode="json"),
                },
            }
        )

    def _stats_params_model(self) -> Any:
        from pipelines.particles.stats import StatsParams

        # Unknown voxel size: lengths in px (1 px per voxel); the paper's 11 um small/large
        # split has no meaning in px and is not reported.
        return StatsParams(**{**self._stats_params, "voxel_size_um": self._voxel_um or 1.0})

    def _particles(self, volume: np.ndarray, cracks: np.ndarray, out: ResultWriter) -> None:
        """Second stage: every particle once (even when cracked), flaws, detachment, stats."""
        from pipelines.particles.analyze import ParticleParams, analyze_particles

        params = ParticleParams(**self._particle_params)
        self._particles_container(out, params)
        try:
            t0 = time.monotonic()
            result = analyze_particles(volume, crack_mask=cracks.astype(bool), params=params)
            out.array("labels", result.labels.astype(np.int32), dims=["z", "y", "x"])
            self._particle_results(
                result.table, volume.shape[0], out, time.monotonic() - t0, result.seconds
            )
        except Exception as exc:
            logger.error(
                "particle analysis failed: %s", exc, exc_info=True, extra={"run_uid": self._uid}
            )
            out.metadata({"status": "failed", "error": f"{type(exc).__name__}: {exc}"})

    def _particle_results(
        self,
        table: np.ndarray,
        depth: int,
        out: ResultWriter,
        seconds: float,
        stage_seconds: dict[str, float],
    ) -> None:
        """Table, statistics, figures and metadata of the particle stage."""
        from pipelines.particles.stats import particle_statistics

        stats_params = self._stats_params_model()
        unit = "um" if self._voxel_um is not None else "px"
        t0 = time.monotonic() - seconds
        stats = particle_statistics(table, depth=depth, params=stats_params)
        scalar = [n for n in (table.dtype.names or ()) if table[n].ndim == 1]
        out.table_rows("table", {n: table[n].tolist() for n in scalar})
        out.array("slice_scores", table["slice_scores"], dims=["particle", "slice"])
        out.array("size_counts", stats.size_counts, dims=["bin"])
        out.array(f"size_edges_{unit}", stats.size_edges_um, dims=["edge"])
        out.array("detachment_counts", stats.detachment_counts, dims=["bin"])
        out.array("detachment_edges", stats.detachment_edges, dims=["edge"])
        figures = self._particle_figures(stats, out, unit)
        out.metadata(
            {
                "status": "complete",
                "particles": int(len(table)),
                "flawed_fraction": _finite(stats.overall.flawed_fraction),
                "mean_detachment": _finite(stats.overall.mean_detachment),
                "n_excluded_border": int(stats.n_excluded_border),
                "length_unit": unit,
                "voxel_size_um": self._voxel_um,
                "size_threshold_um": stats_params.size_threshold_um if self._voxel_um else None,
                "seconds": time.monotonic() - t0,
                "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
                "figures": figures,
            }
        )

    def _particle_figures(self, stats: Any, out: ResultWriter, unit: str) -> dict[str, str]:
        def sizes(fig: Any) -> None:
            ax = fig.add_subplot(111)
            ax.stairs(stats.size_counts, stats.size_edges_um)
            ax.set_xlabel(f"equivalent diameter ({unit})")
            ax.set_ylabel("particles")

        def detachment(fig: Any) -> None:
            ax = fig.add_subplot(111)
            ax.stairs(stats.detachment_counts, stats.detachment_edges)
            ax.set_xlabel("degree of detachment (surface share facing pore)")
            ax.set_ylabel("particles")

        def flawed(fig: Any) -> None:
            ax = fig.add_subplot(111)
            groups = [("all", stats.overall)]
            if unit == "um":
                groups += [("small", stats.small), ("large", stats.large)]
            ax.bar([g for g, _ in groups], [np.nan_to_num(s.flawed_fraction) for _, s in groups])
            ax.set_ylabel("flawed fraction")
            ax.set_ylim(0, 1)

        drawers = [("sizes", sizes), ("detachment", detachment), ("flawed", flawed)]
        return publish_figures(out, self._figures_dir, "particles", drawers, run_uid=self._uid)

    def _figures(self, q: Any, out: ResultWriter) -> dict[str, str]:
        z_top, z_bottom = 0, q.damage_density.shape[0] - 1

        def damage(z: int) -> Any:
            def draw(fig: Any) -> None:
                ax = fig.add_subplot(111)
                im = ax.imshow(q.damage_density[z], cmap="inferno", vmin=0)
                fig.colorbar(im, ax=ax, label=f"crack share of {q.window} px window")
                ax.set_title(f"damage density, slice {z}")

            return draw

        def profile(fig: Any) -> None:
            ax = fig.add_subplot(111)
            ax.plot(np.arange(len(q.depth_profile)), q.depth_profile)
            ax.set_xlabel("slice (0 = separator side)")
            ax.set_ylabel("crack area / particle area")

        def scatter(fig: Any) -> None:
            ax = fig.add_subplot(111)
            x = q.particle_density[::2, ::4, ::4].ravel()
            y = q.damage_density[::2, ::4, ::4].ravel()
            ax.plot(x, y, ",", alpha=0.3)
            xs = np.linspace(0, 1, 20)
            fit = q.volume_fit
            ax.plot(xs, fit.slope * xs + fit.intercept, "r-", label=f"r = {fit.pearson_r:.2f}")
            ax.set_xlabel("particle density")
            ax.set_ylabel("damage density")
            ax.legend()

        drawers = [
            ("damage_top", damage(z_top)),
            ("damage_bottom", damage(z_bottom)),
            ("depth_profile", profile),
            ("correlation", scatter),
        ]
        return publish_figures(out, self._figures_dir, "cracks", drawers, run_uid=self._uid)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
