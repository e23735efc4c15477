"""The live XANES pipeline: per-frame particle tracking, drift feedback, maps after the scan.

Writes under ``analysis/<run uid>/xanes/``:

``global_shift``          (N, 2) grows by one row per frame (dy, dx px, frame 0 reference)
``particle_com``          (P, N, 2) grows along the frame axis; NaN where not found
``particle_shift``        (P, N, 2) grows along the frame axis
``frames``                table per frame: seq_num, energy, dy, dx, n_found, latency_ms
``particles``             table per particle per frame: frame, particle, com_y, com_x,
                          shift_y, shift_x, ssim
after the last frame:     ``labels`` (H, W) int32, ``edge_energy`` / ``whiteline_energy``
                          (H, W) float32 eV, ``spectra`` (P, N) normalised,
                          ``spectra_raw`` (P, N) mean optical density, ``energy`` (N,),
                          ``aligned/particle_<k>`` (N, h, w) aligned ROI stacks,
                          ``deformation`` table across the operando series so far,
                          ``figures/<name>`` RGB images (PNG files under the data dir) and
                          the numbers behind them (:mod:`services.analysis.xanes_figures`);
                          when the start document asks (``lcf_references``,
                          ``xanes_clusters``): LCF and cluster maps, and across an operando
                          series the ``soc_trajectory`` table
                          (:mod:`services.analysis.xanes_chemistry`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.analysis.results import ResultWriter
from services.core.layout import XANES
from services.runs.frames import Frame, axis_reading

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
    time: float = float("nan")  # start document 'time' (Unix s)
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # (H, W) per-pixel, NaN unknown


class _StoredScan:
    """A scan of a series kept on disk: its numbers in memory, its arrays read when asked.

    Has the attributes of :class:`_ScanSummary`; every read of ``labels``, ``reference``,
    ``mean_com`` or ``maps`` loads them from the scan's ``.npz`` file and keeps nothing, so
    what the store holds per scan is a few numbers, whatever the frame size.
    """

    __slots__ = ("path", "run_uid", "scan_index", "time")

    def __init__(self, path: Path, scan_index: int, run_uid: str, time: float) -> None:
        self.path = path
        self.scan_index = scan_index
        self.run_uid = run_uid
        self.time = time

    @classmethod
    def open(cls, path: Path) -> _StoredScan:
        """Read a summary file's numbers (not its arrays)."""
        with np.load(path, allow_pickle=False) as data:
            return cls(
                path,
                int(data["scan_index"]),
                str(data["run_uid"]),
                # summaries written before the trajectory have no time
                float(data["time"]) if "time" in data.files else float("nan"),
            )

    def _read(self, key: str) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as data:
            return np.asarray(data[key])

    @property
    def labels(self) -> np.ndarray:
        return self._read("labels")

    @property
    def reference(self) -> np.ndarray:
        return self._read("reference")

    @property
    def mean_com(self) -> np.ndarray:
        return self._read("mean_com")

    @property
    def maps(self) -> dict[str, np.ndarray]:
        with np.load(self.path, allow_pickle=False) as data:
            return {
                key.removeprefix(_MAP_PREFIX): np.asarray(data[key])
                for key in data.files
                if key.startswith(_MAP_PREFIX)
            }


#: One scan of a series as :meth:`SeriesStore.add` returns it.
SeriesScanSummary = _ScanSummary | _StoredScan


@dataclass
class SeriesStore:
    """Per operando series, what later scans need to follow each particle across scans.

    With a ``directory`` (``<data dir>/series`` under ``beamwatch up``) every scan summary is
    kept on disk when its scan finishes, one ``.npz`` file per run (plain arrays, read back
    with ``allow_pickle=False``), and only its numbers (scan index, run uid, time) stay in
    memory: the arrays (labels, reference frame, per-pixel maps) are read back from the file
    when a later scan's stage uses them, one or two scans at a time, so the memory the store
    holds does not grow with the length of a series. A series seen for the first time in this
    process is listed from there: a restarted analysis consumer links the next scan of a
    series to the scans it analysed before the restart. Series and run uids come from
    documents, so file and folder names are their SHA-256 digests, never the strings
    themselves. Without a directory (tests, in-process use, a consumer without a data dir) the
    files go to a temporary directory made when the first scan is kept and removed by
    :meth:`close` (or when the store is garbage-collected, or at exit): the memory is bounded
    the same way, only a restart does not find them.
    """

    scans: dict[str, list[SeriesScanSummary]] = field(default_factory=dict)
    directory: Path | None = None
    #: Longest a scan's stage waits for an earlier scan of its series to join (s).
    wait_s: float = 600.0
    _lock: threading.Condition = field(
        default_factory=threading.Condition, repr=False, compare=False
    )
    _queued: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)
    #: the temporary directory the files go to without a ``directory``, and its remover
    _spill: Path | None = field(default=None, repr=False, compare=False)
    _remove_spill: Any = field(default=None, repr=False, compare=False)

    @property
    def spill_directory(self) -> Path | None:
        """The temporary directory of a store without ``directory`` (None until a scan is kept
        and after :meth:`close`)."""
        return self._spill

    def close(self) -> None:
        """Remove the temporary directory of a store without ``directory`` (idempotent; a
        ``directory`` given by the caller is left as it is)."""
        with self._lock:
            if self._remove_spill is not None:
                self._remove_spill()
            self._spill = None
            self._remove_spill = None
            self.scans.clear()

    def expect(self, series: str, run_uid: str, scan_index: int) -> None:
        """A scan's after-scan stage is queued (called in stop order, before it is queued)."""
        with self._lock:
            self._queued.setdefault(series, {})[run_uid] = scan_index

    def release(self, series: str, run_uid: str) -> None:
        """The scan's stage ended (joined the series or failed): later scans stop waiting."""
        with self._lock:
            queued = self._queued.get(series, {})
            if queued.pop(run_uid, None) is not None:
                self._lock.notify_all()

    def add(self, series: str, summary: _ScanSummary) -> list[SeriesScanSummary]:
        """Add a scan's summary; return the series as it is now (a copy, in scan order).

        The after-scan stages of two scans of one series can run at once (the consumer's
        worker pool) and a later scan's can end first: a scan first waits (at most
        :attr:`wait_s`) for the earlier scans of its series whose stages were queued before
        its own, so it is compared with every scan before it, whatever the timing. The
        summaries change under a lock, and each scan works on its own copy of the list, so
        its deformation arrays, trajectory and ``series_scans`` describe the same scans. The
        returned scans read their arrays from disk when used.
        """
        with self._lock:

            def earlier_queued() -> bool:
                queued = self._queued.get(series, {})
                return any(
                    index < summary.scan_index
                    for uid, index in queued.items()
                    if uid != summary.run_uid
                )

            if not self._lock.wait_for(lambda: not earlier_queued(), timeout=self.wait_s):
                logger.warning(
                    "series %s: scan %d joins without earlier scans still being analysed "
                    "after %.0f s",
                    series,
                    summary.scan_index,
                    self.wait_s,
                )
            self._queued.get(series, {}).pop(summary.run_uid, None)
            self._lock.notify_all()
            items = self.scans.get(series)
            if items is None:
                items = self.scans[series] = self._load(series)
            if summary.run_uid:
                # the same run analysed again (a resumed or replayed run) replaces its summary
                items[:] = [s for s in items if s.run_uid != summary.run_uid]
            kept: SeriesScanSummary = summary
            try:
                path = self._save(series, summary)
                if path is not None:
                    kept = _StoredScan(path, summary.scan_index, summary.run_uid, summary.time)
            except OSError as exc:  # the analysis goes on; only a restart would miss it
                logger.error("series %s: scan summary not kept on disk (%s)", series, exc)
            items.append(kept)
            items.sort(key=lambda s: s.scan_index)
            return list(items)

    def _root(self, *, create: bool) -> Path | None:
        if self.directory is not None:
            return self.directory
        if self._spill is None and create:
            import shutil
            import tempfile
            import weakref

            self._spill = Path(tempfile.mkdtemp(prefix="beamwatch-series-"))
            self._remove_spill = weakref.finalize(
                self, shutil.rmtree, str(self._spill), ignore_errors=True
            )
            logger.info("operando series state in %s until the consumer stops", self._spill)
        return self._spill

    def _series_dir(self, series: str, *, create: bool = False) -> Path | None:
        root = self._root(create=create)
        return None if root is None else root / _digest(series)

    def _load(self, series: str) -> list[SeriesScanSummary]:
        folder = self._series_dir(series)
        if folder is None or not folder.is_dir():
            return []
        items: list[SeriesScanSummary] = []
        for path in sorted(folder.glob("*.npz")):
            try:
                items.append(_StoredScan.open(path))
            except (OSError, ValueError, KeyError) as exc:
                logger.error(
                    "series %s: unreadable scan summary %s (%s); skipped", series, path, exc
                )
        logger.info("series %s: %d earlier scans listed in %s", series, len(items), folder)
        return items

    def _save(self, series: str, summary: _ScanSummary) -> Path | None:
        folder = self._series_dir(series, create=True)
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        name = _digest(summary.run_uid or f"scan-{summary.scan_index}")
        tmp = folder / f".{name}.tmp"
        arrays: dict[str, Any] = {
            "scan_index": np.int64(summary.scan_index),
            "labels": summary.labels,
            "reference": summary.reference,
            "mean_com": summary.mean_com,
            "run_uid": np.str_(summary.run_uid),
            "time": np.float64(summary.time),
        }
        arrays.update({f"{_MAP_PREFIX}{key}": v for key, v in summary.maps.items()})
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        path = folder / f"{name}.npz"
        os.replace(tmp, path)
        return path


_MAP_PREFIX = "map__"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _start_time(start: dict[str, Any]) -> float:
    value = start.get("time")
    if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return float("nan")


def _describe_option(value: Any) -> Any:
    """A start-document option as metadata: file names as given, inline spectra by size."""
    if isinstance(value, dict):
        return {
            str(k)[:60]: v[:200] if isinstance(v, str) else f"inline ({_length(v)} rows)"
            for k, v in list(value.items())[:16]
        }
    if isinstance(value, bool | int | float | str) or value is None:
        return value if not isinstance(value, str) else value[:200]
    return f"{type(value).__name__}"


def _length(value: Any) -> str:
    try:
        return str(len(value))
    except TypeError:
        return "?"


def select(start: dict[str, Any]) -> bool:
    return start.get("beamwatch_technique") == "xanes" or start.get("plan_name") in (
        "xanes_scan_plan",
        "operando_xanes_plan",
    )


def warm_up() -> None:
    """Import the per-frame tracker and what its first frame uses (detection, registration),
    so that a scan's first frame does not (see :meth:`PipelineRegistry.warm_up`)."""
    import pipelines.xanes.detect  # noqa: F401
    import pipelines.xanes.tracker  # noqa: F401


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
        references_dir: Path | None = None,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        from pipelines.xanes.params import XanesParams
        from services.analysis.xanes_chemistry import ChemistryRequestError, chemistry_request

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
        self._chemistry: Any = None
        self._chemistry_error: str | None = None
        self._chemistry_option: str | None = None
        try:
            self._chemistry = chemistry_request(
                start, references_dir=references_dir, spectra_params=self._params.spectra
            )
        except ChemistryRequestError as exc:
            # the XANES analysis goes on without the chemistry; the run's metadata says why
            self._chemistry_error = str(exc)
            self._chemistry_option = exc.option
            logger.error("chemistry options refused: %s", exc, extra={"run_uid": str(self._uid)})
            if on_rejected is not None:
                on_rejected(exc.option)
        self._chemistry_reported = False

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
        if self._chemistry_error is not None and not self._chemistry_reported:
            out.metadata({XANES.chemistry: self._chemistry_md()})
            self._chemistry_reported = True
        # a frame whose energy is unknown has no place on the energy axis: it never feeds
        # the spectra (FrameUnusable: the router names it missing, the run is incomplete)
        energy = axis_reading(frame, self._energy_key)
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
            # lengths for a viewer from the first frame on (the figures say the same)
            from services.analysis.xanes_figures import pixel_size

            size = pixel_size(self._pixel_size)
            out.metadata({"pixel_size_um": size, "length_unit": "um" if size else "px"})
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
            by_seq_num=True,  # one row per energy
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

    def stop_queued(self) -> None:
        """Called on the dispatch thread, in stop order, before this run's stage is queued."""
        series = self._start.get("operando_series")
        if series and self._tracker is not None:
            try:
                index = int(self._start.get("scan_index", 0))
            except (TypeError, ValueError):
                return  # the stage says what is wrong with it; nothing to wait for
            self._series.expect(str(series), str(self._uid), index)

    def stop_abandoned(self) -> None:
        """This run's stage will not join its series (the pipeline failed)."""
        series = self._start.get("operando_series")
        if series:
            self._series.release(str(series), str(self._uid))

    def on_stop(self, stop: dict[str, Any] | None, out: ResultWriter) -> None:
        try:
            self._on_stop(stop, out)
        finally:
            self.stop_abandoned()

    def _on_stop(self, stop: dict[str, Any] | None, out: ResultWriter) -> None:
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
        out.array(XANES.spectra_raw, final.spectra_raw, dims=["particle", "frame"])
        out.array(XANES.energy, final.energies, dims=["frame"], units="eV")
        out.array(XANES.backfilled, final.backfilled, dims=["particle", "frame"])
        out.array(XANES.smoothed, final.smoothed, dims=["particle", "frame"])
        for k, stack in enumerate(final.aligned_stacks):
            out.array(
                f"particle_{k + 1}",
                np.asarray(stack),
                sub=[XANES.aligned],
                dims=["frame", "row", "col"],
            )
        # the operando series: a later scan's stage waits for this one to join (stop_queued)
        extra_figures: dict[str, str] = {}
        chemistry_md, maps = self._chemistry_results(final, out, extra_figures)
        deformation_md = self._deformation(final, out, maps, extra_figures)
        figures = self._figures(final, out)
        figures.update(extra_figures)
        lat = np.asarray(self._latencies) * 1e3
        out.metadata(
            {
                "frames": int(final.global_shift.shape[0]),
                "particles": int(final.particle_com.shape[0]),
                XANES.post_edge_applied: bool(final.post_edge_applied),
                "latency_ms_p50": float(np.percentile(lat, 50)),
                "latency_ms_p95": float(np.percentile(lat, 95)),
                "residual_drift_rms_px": float(
                    np.sqrt(np.nanmean(np.sum(final.global_shift**2, axis=1)))
                ),
                "figures": figures,
                **deformation_md,
                **chemistry_md,
            }
        )

    # ---- chemistry ----
    def _chemistry_md(self) -> dict[str, Any]:
        from services.analysis.xanes_chemistry import (
            CLUSTERS_KEY,
            LCF_REFERENCES_KEY,
            SUM_TO_ONE_KEY,
        )
        from services.core.layout import Status

        return {
            "status": Status.FAILED,
            "option": self._chemistry_option,
            "error": self._chemistry_error,
            "request": {
                key: _describe_option(self._start.get(key))
                for key in (LCF_REFERENCES_KEY, CLUSTERS_KEY, SUM_TO_ONE_KEY)
                if key in self._start
            },
        }

    def _chemistry_results(
        self, final: Any, out: ResultWriter, figures: dict[str, str]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """LCF / cluster maps when the run asked for them; the maps the trajectory follows."""
        maps = {"edge_energy_eV": np.asarray(final.edge_energy, dtype=np.float32)}
        if self._chemistry_error is not None:
            return {XANES.chemistry: self._chemistry_md()}, maps
        if self._chemistry is None:
            return {}, maps
        from services.analysis.xanes_chemistry import write_chemistry
        from services.analysis.xanes_figures import pixel_size

        try:
            md, fractions, paths = write_chemistry(
                final,
                self._chemistry,
                out,
                spectra_params=self._params.spectra,
                pixel_um=pixel_size(self._pixel_size),
                figures_dir=self._figures_dir,
                run_uid=str(self._uid),
            )
        except Exception as exc:
            # the maps, tracks and figures of the scan stand; the chemistry says it failed
            logger.error(
                "chemistry failed: %s", exc, exc_info=True, extra={"run_uid": str(self._uid)}
            )
            from services.core.layout import Status

            failed = {
                **self._chemistry.describe(),
                "status": Status.FAILED,
                "error": f"{type(exc).__name__}: {exc}",
            }
            return {XANES.chemistry: failed}, maps
        figures.update(paths)
        maps.update({name: v.astype(np.float32) for name, v in fractions.items()})
        return {XANES.chemistry: md}, maps

    # ---- operando series ----
    def _deformation(
        self, final: Any, out: ResultWriter, maps: dict[str, np.ndarray], figures: dict[str, str]
    ) -> dict[str, Any]:
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
            str(series),
            _ScanSummary(
                int(self._start.get("scan_index", 0)),
                final.labels,
                reference,
                mean_com,
                run_uid=str(self._uid),
                time=_start_time(self._start),
                maps=maps,
            ),
        )
        # scans kept on disk read their arrays on each access: read each once here
        first_labels, first_reference = scans[0].labels, scans[0].reference
        first_com = scans[0].mean_com
        displacement = np.full((first_com.shape[0], len(scans), 2), np.nan)
        for t, scan in enumerate(scans):
            labels, scan_com = scan.labels, scan.mean_com
            matching = match_labels(first_labels, first_reference, labels, scan.reference)
            for k, j in enumerate(matching.assignment):
                if j >= 0:
                    displacement[k, t] = scan_com[j] - first_com[k]
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
        trajectory_md = self._trajectory(scans, out, figures)
        return {
            "operando_series": series,
            "series_scans": [int(s.scan_index) for s in scans],
            **trajectory_md,
        }

    def _trajectory(
        self, scans: list[SeriesScanSummary], out: ResultWriter, figures: dict[str, str]
    ) -> dict[str, Any]:
        from services.analysis.xanes_chemistry import write_trajectory

        # the scans as they are: those kept on disk are read one or two at a time
        md, paths = write_trajectory(
            scans,
            out,
            figures_dir=self._figures_dir,
            run_uid=str(self._uid),
        )
        figures.update(paths)
        return md

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
