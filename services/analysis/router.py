"""The analysis path: a registry maps runs to pipelines; one router per run feeds them frames.

The live pipelines themselves and the default registry live in sibling modules
(``xanes_live``, ``tomo_live``, ``registry``); they import the result writer from ``results``,
never this module, so the analysis package has no import cycle.

Results go under ``analysis/<run uid>/<pipeline>/`` through the spool. Each pipeline container
carries metadata ``source_run_uid``, ``pipeline``, ``version``, ``status`` (``running``,
``complete``, ``failed`` with ``error``) and ``parameters``.
"""

from __future__ import annotations

import contextvars
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.analysis.results import PipelineRun, RecoveryInterrupted, ResultWriter
from services.core.layout import FRAMES, Status, analysis_path
from services.core.metrics import Metrics
from services.runs.frames import (
    Frame,
    FrameAssembler,
    FrameSourceError,
    FrameUnusable,
    Hdf5Reader,
)
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
        self._closers: list[Callable[[], None]] = []
        self._warmers: list[Callable[[], None]] = []

    def on_warm_up(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` at :meth:`warm_up` (e.g. import what a live pipeline's first frame needs)."""
        self._warmers.append(fn)

    def warm_up(self) -> None:
        """Prepare the per-frame pipelines before their first run (the consumer calls it at
        start-up, before its threads start): a run's first frame then does not pay for imports
        that, while an after-scan stage holds the GIL, took 0.9 s instead of 0.15 s."""
        for fn in self._warmers:
            try:
                fn()
            except Exception:  # noqa: BLE001 - the first frame does it again, and says why
                logger.exception("warm-up of the live pipelines failed")

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` at :meth:`close` (state the pipelines share, e.g. temporary files)."""
        self._closers.append(fn)

    def close(self) -> None:
        """Release what the registered pipelines share (when the consumer stops)."""
        while self._closers:
            self._closers.pop()()

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


@dataclass
class RawEvent:
    """An Event as ``raw/<uid>/<stream>`` in Tiled holds it: its row and its frames."""

    time: float
    readings: dict[str, Any]
    images: dict[str, np.ndarray] = field(default_factory=dict)


#: ``raw_lookup(run_uid, stream, seq_nums)``: the Events of ``stream`` with these seq_nums
#: that ``raw/`` holds (absent ones left out). It may wait a bounded time for the raw path to
#: finish the run; it raises when Tiled cannot be read.
RawLookup = Callable[[str, str, list[int]], dict[int, RawEvent]]


#: lost frames rebuilt (read from Tiled, processed) at a time
RECOVERY_CHUNK = 32
#: streams whose frames feed others (flats and darks before projections): recovered first
_STREAM_ORDER = {"dark": 0, "flat": 1}
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
        raw_lookup: RawLookup | None = None,
        after_scan: AfterScan | None = None,
    ) -> None:
        self._uid = start["uid"]
        self._after_scan = after_scan
        self._spool = spool
        self._metrics = metrics
        self._assembler = FrameAssembler(self._uid, Hdf5Reader())
        self._lookup = raw_lookup
        self._lost: list[tuple[Doc, list[int]]] = []
        #: streams none of whose descriptors came: (stream name, seq_nums the stop counts)
        self._lost_streams: list[tuple[str, list[int]]] = []
        self._pipelines: list[tuple[PipelineRun, ResultWriter]] = []
        self._failed: set[str] = set()
        self._bad_fields: list[dict[str, Any]] = []
        #: (stream, seq_num) -> fields dropped from that Event (their frames say so)
        self._dropped: dict[tuple[str, int], set[str]] = {}
        self._missing: dict[str, list[int]] = {}
        #: per pipeline, the frames it could not use (FrameUnusable): stream -> seq_nums
        self._unusable: dict[str, dict[str, list[int]]] = {}
        #: lost documents were rebuilt at the stop (False for a run where nothing was lost:
        #: it never waits for raw/)
        self.recovery_entered = False
        #: opened from a stand-in start (the start was lost and not in raw/ when the run's
        #: first document came): which pipelines the run wanted, and so whether every result
        #: is in, is unknown; the run never says ``complete`` (found by benchmarks.chaos)
        self._start_lost = bool(start.get("beamwatch_start_lost"))
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

    def stream_lost(self, stream: str, seq_nums: list[int]) -> None:
        self._lost_streams.append((stream, seq_nums))

    def bad_fields(self, descriptor: Doc, seq_num: int, problems: dict[str, str]) -> None:
        stream = descriptor.get("name", "primary")
        self._dropped.setdefault((stream, seq_num), set()).update(problems)
        for key, problem in problems.items():
            self._bad_fields.append(
                {"stream": stream, "seq_num": seq_num, "data_key": key[:200], "problem": problem}
            )

    def stop(self, doc: Doc | None) -> None:
        self._take_unassembled(self._assembler.drain())
        if self._after_scan is None:
            self._end(doc)
        else:
            for run, _ in self._pipelines:
                queued = getattr(run, "stop_queued", None)
                if queued is not None and run.name not in self._failed:
                    queued()
            # Recovering lost frames may wait for Tiled and the raw path, and after-scan
            # stages (maps, reconstructions) can take minutes: both run in the consumer's
            # worker pool so frames of the next runs are not held back (in this context:
            # a replay's frames stay marked as replayed).
            context = contextvars.copy_context()
            self._after_scan(self._uid, lambda: context.run(self._end, doc))

    def _end(self, doc: Doc | None) -> None:
        self._recover_lost()
        self._finish(doc)

    def _finish(self, doc: Doc | None) -> None:
        for run, out in self._pipelines:
            if run.name in self._failed:
                abandoned = getattr(run, "stop_abandoned", None)
                if abandoned is not None:
                    abandoned()
                continue
            # "complete" only when every frame is in and used; otherwise say which are missing.
            # Without a stop (closed after the idle timeout) nothing says how many Events the
            # run had, so Events lost after the last one seen cannot be counted: never complete.
            # Decided before on_stop: a stage the pipeline declares final itself (the crack
            # map, then the particle stage) ends with the same status.
            missing = _merged(self._missing, self._unusable.get(run.name, {}))
            whole = not missing and not self._start_lost and doc is not None
            out.final_status = {
                "status": Status.COMPLETE if whole else Status.INCOMPLETE,
                "missing_seq_nums": missing,
                "start_lost": self._start_lost,
                "recovery_entered": self.recovery_entered,
                "stop_lost": doc is None,
                "bad_fields": self._bad_fields,
            }
            try:
                run.on_stop(doc, out)
            except RecoveryInterrupted:
                raise  # stopping: the next process replays the run, stages included
            except Exception as exc:
                self._fail(run.name, out, exc)
                continue
            out.metadata(out.final())
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
            dropped = self._dropped.pop((frame.stream, frame.seq_num), None)
            if dropped:
                frame.dropped_fields = frozenset(dropped)
            if arrival is not None and not frame.recovered:
                frame.received = arrival
            for run, out in self._pipelines:
                if run.name in self._failed:
                    continue
                try:
                    run.on_frame(frame, out)
                except FrameUnusable as exc:
                    logger.warning(
                        "pipeline %s leaves out a frame: %s",
                        run.name,
                        exc,
                        extra={"run_uid": self._uid},
                    )
                    unusable = self._unusable.setdefault(run.name, {})
                    unusable.setdefault(frame.stream, []).append(frame.seq_num)
                    self._metrics.frames_unusable.labels(self._metrics.service, run.name).inc()
                    continue
                except Exception as exc:
                    self._fail(run.name, out, exc)
                    continue
                self._metrics.frames_processed.labels(self._metrics.service, run.name).inc()
                self._metrics.processing_latency.labels(self._metrics.service, run.name).observe(
                    time.monotonic() - frame.received
                )

    def _recover_lost(self) -> None:
        """Rebuild the frames whose Events, or whole streams, were lost on the bus.

        Readings come from ``raw/`` in Tiled (the raw consumer's copy of the run), images from
        the detector file where the run's StreamDatums say where they are, else from ``raw/``.
        A frame found nowhere is missing: the run ends ``incomplete`` naming it.
        """
        if not (self._lost or self._lost_streams):
            return  # nothing lost: no look in raw/, no wait for it
        self.recovery_entered = True
        self._metrics.recoveries.labels(self._metrics.service).inc()
        # stream -> seq_num -> its descriptor (None: the stream's descriptor was lost too)
        wanted: dict[str, dict[int, Doc | None]] = {}
        for stream, seq_nums in self._lost_streams:
            wanted.setdefault(stream, {}).update(dict.fromkeys(seq_nums))
        for descriptor, seq_nums in self._lost:
            stream = descriptor.get("name", "primary")
            wanted.setdefault(stream, {}).update(dict.fromkeys(seq_nums, descriptor))
        for stream in sorted(wanted, key=lambda name: (_STREAM_ORDER.get(name, 2), name)):
            seq_nums = sorted(wanted[stream])
            # in chunks: a whole lost stream of large frames is never in memory at once
            for i in range(0, len(seq_nums), RECOVERY_CHUNK):
                chunk = seq_nums[i : i + RECOVERY_CHUNK]
                raw = self._raw_events(stream, chunk)
                frames = []
                for seq in chunk:
                    try:
                        frame = self._rebuild_one(stream, wanted[stream][seq], seq, raw.get(seq))
                    except RecoveryInterrupted:
                        raise
                    except Exception:
                        # whatever raw/ or the file held, this frame is not known: it counts
                        # as missing (the run ends incomplete naming it), the others go on
                        logger.exception(
                            "lost frame %d of stream %s could not be rebuilt",
                            seq,
                            stream,
                            extra={"run_uid": self._uid},
                        )
                        frame = None
                    if frame is None:
                        self._missing.setdefault(stream, []).append(seq)
                        logger.error(
                            "frame %d of stream %s is lost for good (not in the detector file "
                            "nor in raw/)",
                            seq,
                            stream,
                            extra={"run_uid": self._uid},
                        )
                    else:
                        frames.append(frame)
                if not REPLAYING.get():  # counted when it was recovered the first time
                    self._metrics.messages_recovered.labels(self._metrics.service, "event").inc(
                        len(frames)
                    )
                self._process(frames)
        for name in self._missing:
            self._missing[name] = sorted(set(self._missing[name]))
        self._lost.clear()
        self._lost_streams.clear()

    def _raw_events(self, stream: str, seq_nums: list[int]) -> dict[int, RawEvent]:
        if self._lookup is None:
            return {}
        try:
            return self._lookup(self._uid, stream, seq_nums)
        except RecoveryInterrupted:
            raise
        except Exception:
            logger.warning(
                "could not read lost events of stream %s from Tiled",
                stream,
                exc_info=True,
                extra={"run_uid": self._uid},
            )
            return {}

    def _rebuild_one(
        self, stream: str, descriptor: Doc | None, seq: int, raw: RawEvent | None
    ) -> Frame | None:
        if descriptor is not None:
            readings = dict(raw.readings) if raw is not None else {}
            if raw is not None:
                readings.setdefault("time", raw.time)
            try:
                frame = self._assembler.frame_for(descriptor["uid"], seq, readings)
            except FrameSourceError as exc:
                logger.warning("lost frame %d not in the detector file: %s", seq, exc)
                frame = None
            if frame is not None:
                # the image is in the file, but its Event's readings are found nowhere
                frame.readings_lost = raw is None
                return frame
            keys = self._assembler.image_keys(descriptor["uid"])
        else:
            keys = list(raw.images) if raw is not None else []
        if raw is None or not keys or any(k not in raw.images for k in keys):
            return None
        return Frame(
            self._uid,
            stream,
            seq,
            raw.time,
            dict(raw.readings),
            {k: raw.images[k] for k in keys},
            recovered=True,
        )

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


def _merged(*missing: dict[str, list[int]]) -> dict[str, list[int]]:
    """Missing seq_nums per stream, from several sources, each list sorted and unique."""
    out: dict[str, set[int]] = {}
    for source in missing:
        for stream, seq_nums in source.items():
            out.setdefault(stream, set()).update(seq_nums)
    return {stream: sorted(seq_nums) for stream, seq_nums in out.items()}
