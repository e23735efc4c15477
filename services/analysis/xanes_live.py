"""The live XANES pipeline: per-frame particle tracking, drift feedback, maps after the scan.

Writes under ``analysis/<run uid>/xanes/``:

``global_shift``          (N, 2) grows by one row per frame (dy, dx px, frame 0 reference)
``particle_com``          (P, N, 2) grows along the frame axis; NaN where not found
``particle_shift``        (P, N, 2) grows along the frame axis
``frames``                table per frame: seq_num, energy, dy, dx, n_found, latency_ms
``particles``             table per particle per frame: frame, particle, com_y, com_x,
                          shift_y, shift_x, ssim
after the last frame:     ``labels`` (H, W) int32, ``edge_energy`` / ``whiteline_energy``
                          (H, W) float32 eV, ``spectra`` (P, N), ``energy`` (N,),
                          ``aligned/particle_<k>`` (N, h, w) aligned ROI stacks,
                          ``deformation`` table across the operando series so far,
                          ``figures/<name>`` RGB images (PNG files under the data dir) and
                          the numbers behind them (:mod:`services.analysis.xanes_figures`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.analysis.results import ResultWriter
from services.core.layout import XANES
from services.runs.frames import Frame

logger = logging.getLogger(__name__)


class FeedbackPublisher:
    """PUB socket publishing the live drift as JSON (see bluesky_plans.feedback)."""

    def __init__(self, address: str) -> None:
        import zmq

        self._socket: Any = zmq.Context.instance().socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)
        self.address = address

    def publish(self, message: dict[str, Any]) -> None:
        self._socket.send(json.dumps(message).encode())

    def close(self) -> None:
        self._socket.close(0)


@dataclass
class _ScanSummary:
    scan_index: int
    labels: np.ndarray
    reference: np.ndarray
    mean_com: np.ndarray  # (P, 2)
    run_uid: str = ""


@dataclass
class SeriesStore:
    """Per operando series, what later scans need to follow each particle across scans.

    With a ``directory`` (``<data dir>/series`` under ``beamwatch up``) every scan summary is
    also kept on disk when its scan finishes, one ``.npz`` file per run (plain arrays, read
    back with ``allow_pickle=False``), and a series seen for the first time in this process is
    loaded from there: a restarted analysis consumer links the next scan of a series to the
    scans it analysed before the restart. Series and run uids come from documents, so file and
    folder names are their SHA-256 digests, never the strings themselves.
    """

    scans: dict[str, list[_ScanSummary]] = field(default_factory=dict)
    directory: Path | None = None

    def add(self, series: str, summary: _ScanSummary) -> list[_ScanSummary]:
        items = self.scans.get(series)
        if items is None:
            items = self.scans[series] = self._load(series)
        if summary.run_uid:
            # the same run analysed again (a resumed or replayed run) replaces its summary
            items[:] = [s for s in items if s.run_uid != summary.run_uid]
        items.append(summary)
        items.sort(key=lambda s: s.scan_index)
        try:
            self._save(series, summary)
        except OSError as exc:  # the analysis of this scan goes on; only a restart would miss it
            logger.error("series %s: scan summary not kept on disk (%s)", series, exc)
        return items

    def _series_dir(self, series: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / _digest(series)

    def _load(self, series: str) -> list[_ScanSummary]:
        folder = self._series_dir(series)
        if folder is None or not folder.is_dir():
            return []
        items = []
        for path in sorted(folder.glob("*.npz")):
            try:
                with np.load(path, allow_pickle=False) as data:
                    items.append(
                        _ScanSummary(
                            scan_index=int(data["scan_index"]),
                            labels=data["labels"],
                            reference=data["reference"],
                            mean_com=data["mean_com"],
                            run_uid=str(data["run_uid"]),
                        )
                    )
            except (OSError, ValueError, KeyError) as exc:
                logger.error(
                    "series %s: unreadable scan summary %s (%s); skipped", series, path, exc
                )
        logger.info("series %s: %d earlier scans loaded from %s", series, len(items), folder)
        return items

    def _save(self, series: str, summary: _ScanSummary) -> None:
        folder = self._series_dir(series)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        name = _digest(summary.run_uid or f"scan-{summary.scan_index}")
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                scan_index=np.int64(summary.scan_index),
                labels=summary.labels,
                reference=summary.reference,
                mean_com=summary.mean_com,
                run_uid=np.str_(summary.run_uid),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / f"{name}.npz")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def select(start: dict[str, Any]) -> bool:
    return start.get("beamwatch_technique") == "xanes" or start.get("plan_name") in (
        "xanes_scan_plan",
        "operando_xanes_plan",
    )


class XanesLivePipeline:
    name = XANES.pipeline
    version = "1"

    def __init__(
        self,
        start: dict[str, Any],
        *,
        feedback: FeedbackPublisher | None,
        figures_dir: Path,
        series: SeriesStore,
    ) -> None:
        from pipelines.xanes.params import XanesParams

        self._params = XanesParams(**start.get("beamwatch_xanes_params", {}))
        self.parameters = self._params.model_dump(mode="json")
        self._start = start
        self._uid = start["uid"]
        self._image_key = start.get("image_key")
        self._energy_key = start.get("energy_key", "energy")
        self._pixel_size = start.get("pixel_size_um")
        self._feedback = feedback
        self._figures_dir = figures_dir / self._uid
        self._series = series
        self._flats: list[np.ndarray] = []
        self._darks: list[np.ndarray] = []
        self._tracker: Any = None
        self._first_frame: np.ndarray | None = None
        self._latencies: list[float] = []

    def _image(self, frame: Frame) -> np.ndarray | None:
        if self._image_key and self._image_key in frame.images:
            return frame.images[self._image_key]
        return next(iter(frame.images.values()), None)

    def on_frame(self, frame: Frame, out: ResultWriter) -> None:
        image = self._image(frame)
        if image is None:
            return
        if frame.stream == "flat":
            self._flats.append(np.asarray(image, dtype=np.float32))
            return
        if frame.stream == "dark":
            self._darks.append(np.asarray(image, dtype=np.float32))
            return
        if frame.stream != "primary":
            return
        if self._energy_key not in frame.readings:
            raise ValueError(f"event seq_num {frame.seq_num} has no reading {self._energy_key!r}")
        energy = float(frame.readings[self._energy_key])
        if self._tracker is None:
            from pipelines.xanes.tracker import XanesTracker

            flat = np.stack(self._flats) if self._flats else None
            dark = np.stack(self._darks) if self._darks else None
            self._tracker = XanesTracker(self._params, flat=flat, dark=dark)
            self._first_frame = np.asarray(image)
        result = self._tracker.add_frame(image, energy)
        dy, dx = (float(v) for v in result.global_shift)
        latency = time.monotonic() - frame.received
        self._latencies.append(latency)
        message = {
            "run_uid": self._uid,
            "seq_num": frame.seq_num,
            "energy": energy,
            "dy_px": dy,
            "dx_px": dx,
        }
        if self._pixel_size:
            message["dy_um"] = dy * float(self._pixel_size)
            message["dx_um"] = dx * float(self._pixel_size)
        # no trustworthy estimate (no particle registered, or particles disagree): the drift
        # is unknown (NaN), and no feedback move is sent for it; nor for a frame replayed after
        # a crash (its move was sent when it arrived; the stage has moved on since), nor for
        # one recovered after the stop (the scan is over; and that runs off the dispatch
        # thread, which alone uses the feedback socket)
        trusted = bool(getattr(result, "trusted", True))
        if self._feedback is not None and trusted and not frame.replayed and not frame.recovered:
            self._feedback.publish(message)
        if result.index == 0:
            out.array(XANES.labels, self._tracker.labels, dims=["row", "col"])
        out.rows(XANES.global_shift, result.global_shift[None, :], dims=["frame", "axis"])
        # live per-frame arrays hold the frame-0 particles; particles joining later (detected
        # when the edge raised the contrast) are in the "particles" table and the final arrays
        p0 = self._tracker_particles0 = getattr(self, "_tracker_particles0", None) or len(
            result.particle_com
        )
        out.rows(XANES.particle_com, result.particle_com[:p0, None, :], axis=1)
        out.rows(XANES.particle_shift, result.particle_shift[:p0, None, :], axis=1)
        out.table_rows(
            XANES.frames,
            {
                "seq_num": [frame.seq_num],
                "energy": [energy],
                "dy": [dy],
                "dx": [dx],
                "n_found": [int(result.n_found)],
                "n_used": [int(getattr(result, "n_used", result.n_found))],
                "spread_px": [float(getattr(result, "spread", float("nan")))],
                "trusted": [bool(getattr(result, "trusted", True))],
                "latency_ms": [latency * 1e3],
                "recovered": [frame.recovered],
            },
        )
        p = result.particle_com.shape[0]
        out.table_rows(
            XANES.particles,
            {
                "frame": [result.index] * p,
                "particle": list(range(1, p + 1)),
                "com_y": result.particle_com[:, 0].tolist(),
                "com_x": result.particle_com[:, 1].tolist(),
                "shift_y": result.particle_shift[:, 0].tolist(),
                "shift_x": result.particle_shift[:, 1].tolist(),
                "ssim": np.asarray(result.ssim, dtype=np.float64).tolist(),
                "found": np.asarray(result.found, dtype=bool).tolist(),
                "partial": np.asarray(result.partial, dtype=bool).tolist(),
            },
        )

    def on_stop(self, stop: dict[str, Any] | None, out: ResultWriter) -> None:
        if self._tracker is None:
            out.metadata({"frames": 0})
            return
        final = self._tracker.finalize()
        out.array(XANES.particle_com, final.particle_com, dims=["particle", "frame", "axis"])
        out.array(XANES.particle_shift, final.particle_shift, dims=["particle", "frame", "axis"])
        out.array(XANES.global_shift, final.global_shift, dims=["frame", "axis"])
        out.array(
            XANES.edge_energy, final.edge_energy.astype(np.float32), dims=["row", "col"], units="eV"
        )
        out.array(
            XANES.whiteline_energy,
            final.whiteline_energy.astype(np.float32),
            dims=["row", "col"],
            units="eV",
        )
        out.array(XANES.spectra, final.spectra, dims=["particle", "frame"])
        out.array(XANES.energy, final.energies, dims=["frame"], units="eV")
        for k, stack in enumerate(final.aligned_stacks):
            out.array(
                f"particle_{k + 1}",
                np.asarray(stack),
                sub=[XANES.aligned],
                dims=["frame", "row", "col"],
            )
        deformation_md = self._deformation(final, out)
        figures = self._figures(final, out)
        lat = np.asarray(self._latencies) * 1e3
        out.metadata(
            {
                "frames": int(final.global_shift.shape[0]),
                "particles": int(final.particle_com.shape[0]),
                "latency_ms_p50": float(np.percentile(lat, 50)),
                "latency_ms_p95": float(np.percentile(lat, 95)),
                "residual_drift_rms_px": float(
                    np.sqrt(np.nanmean(np.sum(final.global_shift**2, axis=1)))
                ),
                "figures": figures,
                **deformation_md,
            }
        )

    # ---- operando series ----
    def _deformation(self, final: Any, out: ResultWriter) -> dict[str, Any]:
        from pipelines.xanes.deformation import deformation_rows, deformation_series
        from pipelines.xanes.match import match_labels
        from pipelines.xanes.prepare import average_frames, optical_density, remove_background

        series = self._start.get("operando_series")
        if not series or self._first_frame is None:
            return {}
        flat = average_frames("flat", np.stack(self._flats)) if self._flats else None
        dark = average_frames("dark", np.stack(self._darks)) if self._darks else None
        reference = remove_background(optical_density(self._first_frame, flat, dark))
        with np.errstate(invalid="ignore"):
            mean_com = np.nanmean(final.particle_com, axis=1)
        scans = self._series.add(
            series,
            _ScanSummary(
                int(self._start.get("scan_index", 0)),
                final.labels,
                reference,
                mean_com,
                run_uid=str(self._uid),
            ),
        )
        first = scans[0]
        displacement = np.full((first.mean_com.shape[0], len(scans), 2), np.nan)
        for t, scan in enumerate(scans):
            matching = match_labels(first.labels, first.reference, scan.labels, scan.reference)
            for k, j in enumerate(matching.assignment):
                if j >= 0:
                    displacement[k, t] = scan.mean_com[j] - first.mean_com[k]
        times = np.asarray([s.scan_index for s in scans], dtype=np.float64)
        deformation = deformation_series(displacement, times=times if len(times) > 1 else None)
        rows = deformation_rows(deformation)
        if rows:
            out.array(
                XANES.deformation_displacement,
                deformation.displacement,
                dims=["particle", "scan", "axis"],
            )
            columns = {key: [row[key] for row in rows] for key in rows[0]}
            out.array(
                XANES.deformation_nonrigid, deformation.nonrigid, dims=["particle", "scan", "axis"]
            )
            out.metadata({"deformation_columns": list(columns)})
            out.table_rows(XANES.deformation, columns)
        return {"operando_series": series, "series_scans": [int(s.scan_index) for s in scans]}

    # ---- figures ----
    def _figures(self, final: Any, out: ResultWriter) -> dict[str, str]:
        from services.analysis.xanes_figures import pixel_size, xanes_figures

        extra = xanes_figures(
            final,
            out,
            pixel_um=pixel_size(self._pixel_size),
            figures_dir=self._figures_dir,
            run_uid=self._uid,
        )
        figures: dict[str, str] = extra.pop("figures")
        out.metadata(extra)
        return figures
