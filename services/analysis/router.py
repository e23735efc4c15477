"""The analysis path: a registry maps runs to pipelines; one router per run feeds them frames.

The live pipelines themselves and the default registry live in sibling modules
(``xanes_live``, ``tomo_live``, ``registry``); they import the result writer from ``results``,
never this module, so the analysis package has no import cycle.

Results go under ``analysis/<run uid>/<pipeline>/`` through the spool. Each pipeline container
carries metadata ``source_run_uid``, ``pipeline``, ``version``, ``status`` (``running``,
``complete``, ``failed`` with ``error``) and ``parameters``.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.analysis.results import PipelineRun, ResultWriter
from services.core.layout import FRAMES, Status, analysis_path
from services.core.metrics import Metrics
from services.runs.frames import Frame, FrameAssembler, Hdf5Reader
from services.runs.routing import ARRIVAL, REPLAYING, Doc, RunRouter
from services.tiled.records import Container
from services.tiled.spool import Spool

logger = logging.getLogger(__name__)


PipelineFactory = Callable[[Doc], PipelineRun]


@dataclass
class RegistryEntry:
    name: str
    matches: Callable[[Doc], bool]
    factory: PipelineFactory


class PipelineRegistry:
    """Which pipelines consume which runs, decided from the start document.

    A start document's ``beamwatch_pipelines`` (list of names) wins; otherwise each entry's
    ``matches`` predicate (usually on ``plan_name``) decides.
    """

    def __init__(self) -> None:
        self._entries: dict[str, RegistryEntry] = {}

    def register(self, name: str, matches: Callable[[Doc], bool], factory: PipelineFactory) -> None:
        self._entries[name] = RegistryEntry(name, matches, factory)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def select(self, start: Doc) -> list[RegistryEntry]:
        requested = start.get("beamwatch_pipelines")
        if isinstance(requested, str):
            requested = [requested]
        if requested is not None:
            unknown = [n for n in requested if n not in self._entries]
            if unknown:
                logger.warning("run asks for unknown pipelines %s; known: %s", unknown, self.names)
            return [self._entries[n] for n in requested if n in self._entries]
        return [e for e in self._entries.values() if e.matches(start)]


class FrameStatsPipeline:
    """Per-frame statistics of every image: a light preview any imaging run gets."""

    name = FRAMES.pipeline
    version = "1"

    def __init__(self, start: Doc) -> None:
        self.parameters: dict[str, Any] = {}
        self._count = 0

    def on_frame(self, frame: Frame, out: ResultWriter) -> None:
        for key, image in frame.images.items():
            img = np.asarray(image, dtype=np.float64)
            out.table_rows(
                FRAMES.frame_stats,
                {
                    "seq_num": [frame.seq_num],
                    "data_key": [key],
                    "mean": [float(img.mean())],
                    "min": [float(img.min())],
                    "max": [float(img.max())],
                    "recovered": [frame.recovered],
                },
            )
        self._count += 1

    def on_stop(self, stop: Doc | None, out: ResultWriter) -> None:
        out.metadata({"frames": self._count})


ReadingsLookup = Callable[[str, str, list[int]], dict[int, dict[str, Any]]]
#: Runs ``job`` (a run's after-scan stages) off the dispatch thread: ``after_scan(run_uid, job)``.
AfterScan = Callable[[str, Callable[[], None]], None]


class AnalysisRunRouter(RunRouter):
    """Assembles frames of one run and feeds them, in order, to the selected pipelines."""

    def __init__(
        self,
        start: Doc,
        entries: list[RegistryEntry],
        spool: Spool,
        metrics: Metrics,
        *,
        readings_lookup: ReadingsLookup | None = None,
        after_scan: AfterScan | None = None,
    ) -> None:
        self._uid = start["uid"]
        self._after_scan = after_scan
        self._spool = spool
        self._metrics = metrics
        self._assembler = FrameAssembler(self._uid, Hdf5Reader())
        self._lookup = readings_lookup
        self._lost: list[tuple[Doc, list[int]]] = []
        self._pipelines: list[tuple[PipelineRun, ResultWriter]] = []
        self._failed: set[str] = set()
        self._bad_fields: list[dict[str, Any]] = []
        self._missing: dict[str, list[int]] = {}
        for entry in entries:
            out = ResultWriter(spool, self._uid, entry.name)
            try:
                run = entry.factory(start)
            except Exception as exc:
                self._fail(entry.name, out, exc)
                continue
            self._pipelines.append((run, out))

    def start(self, doc: Doc) -> None:
        self._spool.put(Container(tuple(analysis_path(self._uid)), {"source_run_uid": self._uid}))
        for run, out in self._pipelines:
            out.container(
                {
                    "source_run_uid": self._uid,
                    "pipeline": run.name,
                    "version": run.version,
                    "status": Status.RUNNING,
                    "parameters": run.parameters,
                    "plan_name": doc.get("plan_name"),
                }
            )

    def descriptor(self, doc: Doc) -> None:
        self._assembler.descriptor(doc)

    def resource(self, doc: Doc) -> None:
        self._assembler.resource(doc)

    def datum(self, doc: Doc) -> None:
        self._assembler.datum(doc)

    def stream_resource(self, doc: Doc) -> None:
        self._assembler.stream_resource(doc)

    def stream_datum(self, doc: Doc) -> None:
        self._process(self._assembler.stream_datum(doc))
        self._take_unassembled()

    def event(self, doc: Doc) -> None:
        self._process(self._assembler.event(doc))
        self._take_unassembled()

    def _take_unassembled(self, waiting: list[Doc] | None = None) -> None:
        """Events whose frame could not be assembled (their Datum or StreamDatum was lost)
        are lost events: recovered at the stop if the file says where the frame is, else
        listed as missing (the run is then ``incomplete``, never ``complete``)."""
        problems = [(doc, why) for doc, why in self._assembler.unassembled]
        problems += [(doc, "its StreamDatum never came") for doc in waiting or []]
        self._assembler.unassembled.clear()
        for doc, why in problems:
            descriptor = self._assembler.descriptors.get(doc["descriptor"])
            seq = int(doc["seq_num"])
            logger.warning(
                "no frame for event seq_num %d: %s", seq, why, extra={"run_uid": self._uid}
            )
            if descriptor is None:
                self._missing.setdefault("?", []).append(seq)
            else:
                self._lost.append((descriptor, [seq]))

    def events_lost(self, descriptor: Doc, seq_nums: list[int]) -> None:
        self._lost.append((descriptor, seq_nums))

    def bad_fields(self, descriptor: Doc, seq_num: int, problems: dict[str, str]) -> None:
        stream = descriptor.get("name", "primary")
        for key, problem in problems.items():
            self._bad_fields.append(
                {"stream": stream, "seq_num": seq_num, "data_key": key[:200], "problem": problem}
            )

    def stop(self, doc: Doc | None) -> None:
        self._take_unassembled(self._assembler.drain())
        self._recover_lost()
        if self._after_scan is None:
            self._finish(doc)
        else:
            for run, _ in self._pipelines:
                queued = getattr(run, "stop_queued", None)
                if queued is not None and run.name not in self._failed:
                    queued()
            # After-scan stages (maps, reconstructions) can take minutes: they run in the
            # consumer's worker pool so frames of the next runs are not held back.
            self._after_scan(self._uid, lambda: self._finish(doc))

    def _finish(self, doc: Doc | None) -> None:
        for run, out in self._pipelines:
            if run.name in self._failed:
                continue
            try:
                run.on_stop(doc, out)
            except Exception as exc:
                self._fail(run.name, out, exc)
                continue
            # "complete" only when every frame is in; otherwise say which are missing
            out.metadata(
                {
                    "status": Status.INCOMPLETE if self._missing else Status.COMPLETE,
                    "missing_seq_nums": self._missing,
                    "stop_lost": doc is None,
                    "bad_fields": self._bad_fields,
                }
            )
        self._assembler.close()

    def close(self) -> None:
        for run, out in self._pipelines:
            if run.name not in self._failed:
                out.metadata({"status": Status.INTERRUPTED})
        self._assembler.close()

    # ---- internals ---------------------------------------------------------------------------
    def _process(self, frames: list[Frame]) -> None:
        arrival = ARRIVAL.get(None)
        replayed = REPLAYING.get()
        for frame in frames:
            frame.replayed = replayed
            if arrival is not None and not frame.recovered:
                frame.received = arrival
            for run, out in self._pipelines:
                if run.name in self._failed:
                    continue
                try:
                    run.on_frame(frame, out)
                except Exception as exc:
                    self._fail(run.name, out, exc)
                    continue
                self._metrics.frames_processed.labels(self._metrics.service, run.name).inc()
                self._metrics.processing_latency.labels(self._metrics.service, run.name).observe(
                    time.monotonic() - frame.received
                )

    def _recover_lost(self) -> None:
        """Rebuild frames whose Events were lost: readings from Tiled, images from the file."""
        for descriptor, seq_nums in self._lost:
            readings: dict[int, dict[str, Any]] = {}
            if self._lookup is not None:
                try:
                    readings = self._lookup(self._uid, descriptor.get("name", "primary"), seq_nums)
                except Exception:
                    logger.warning(
                        "could not read lost events from Tiled",
                        exc_info=True,
                        extra={"run_uid": self._uid},
                    )
            frames = []
            for seq in seq_nums:
                frame = self._assembler.frame_for(descriptor["uid"], seq, readings.get(seq, {}))
                if frame is None:
                    self._missing.setdefault(descriptor.get("name", "primary"), []).append(seq)
                    logger.error(
                        "frame %d of run is lost for good (no file reference)",
                        seq,
                        extra={"run_uid": self._uid},
                    )
                    continue
                frames.append(frame)
                if not REPLAYING.get():  # counted when it was recovered the first time
                    self._metrics.messages_recovered.labels(self._metrics.service, "event").inc()
            self._process(frames)
        self._lost.clear()

    def _fail(self, name: str, out: ResultWriter, exc: BaseException) -> None:
        self._failed.add(name)
        self._metrics.pipeline_errors.labels(self._metrics.service, name).inc()
        logger.error(
            "pipeline %s failed: %s", name, exc, exc_info=True, extra={"run_uid": self._uid}
        )
        out.metadata(
            {
                "status": Status.FAILED,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exception(exc)[-5:],
            }
        )
