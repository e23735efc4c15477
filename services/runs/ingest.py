"""The raw-data path: every run's documents into Tiled under ``raw/<run uid>`` (TiledWriter).

Documents are spooled before they are written, so a Tiled outage delays them but loses none.
2-D arrays inside Event documents, which ``TiledWriter`` cannot store, are taken out of the
documents and written as growing arrays ``raw/<uid>/<stream>/<data key>`` with the client.

Batching adapts to the load: Events, Datums and StreamDatums wait in the router until the
consumer has nothing else queued (:meth:`RawRunRouter.flush`, called by the dispatcher), a
size cap is reached or another document of the run comes. At 20 Hz every Event is spooled on
its own as soon as it is routed; when documents pile up (a fast detector, a busy machine) a
run's queued Events become one spooled record (:class:`~services.tiled.records.RawDocs`) and
their frames one block of rows.

With ``frames_dir`` (the default of ``beamwatch up`` with its embedded Tiled server), frames
are not sent to Tiled at all: the router writes each one, as it comes, into the stream's
frame array under ``frames_dir`` (:mod:`services.tiled.frame_files`), and what it spools is
"the first N frames are on disk" (:class:`~services.tiled.records.ExternalFrames`), which
registers the array in Tiled as external data and grows its advertised shape. A frame is
written at its row (the same index it had in the HTTP path), before its Event's row is
spooled, so a journal replayed after a crash writes the same bytes at the same place.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from services.core.layout import RAW_ROWS, RawStatus, raw_path
from services.runs.routing import REPLAYING, Doc, RunRouter
from services.tiled.frame_files import FILE_KINDS, SUFFIX, FrameFile, write_with_retry
from services.tiled.records import ArrayRows, ExternalFrames, Metadata, RawDoc, RawDocs
from services.tiled.spool import MAX_MERGED_ARRAY_BYTES, Spool

logger = logging.getLogger(__name__)

#: Most documents, bytes of frames and seconds a router holds before it spools them.
MAX_BUFFERED_DOCS = 1000
MAX_BUFFERED_BYTES = MAX_MERGED_ARRAY_BYTES
MAX_BUFFERED_SECONDS = 0.2


READABLE_ROOT_RULE = (
    "the file, resolved (symlinks and '..'), must lie inside one of the readable roots "
    "(the data dir's detector/ and settings tiled.readable_roots)"
)


def resource_file(doc: Doc) -> str:
    """The file a Resource or StreamResource points at, as written in the document.

    A StreamResource names it by ``uri`` (``file://host/path``); a Resource (and a StreamResource
    of the older schema) by ``root`` + ``resource_path``.

    Raises
    ------
    ValueError
        If the document names no local file (another URI scheme, no path at all).
    """
    uri = doc.get("uri")
    if isinstance(uri, str) and uri:
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            raise ValueError(f"uri {uri[:200]!r} is not a file:// URI")
        return unquote(parsed.path)
    resource_path = doc.get("resource_path")
    if not isinstance(resource_path, str) or not resource_path:
        raise ValueError("neither 'uri' nor 'resource_path' names a file")
    root = doc.get("root") or "/"
    if not isinstance(root, str):
        raise ValueError(f"root must be a string, got {type(root).__name__}")
    return os.path.join(root, resource_path)


def refusal(doc: Doc, roots: Sequence[Path]) -> str | None:
    """Why Tiled may not read this Resource / StreamResource's file; None when it may.

    The path is resolved (symlinks, ``..``) before it is compared with ``roots`` (resolved
    directories), so ``<root>/../elsewhere`` and a symlink out of a root are refused.
    """
    try:
        path = resource_file(doc)
    except ValueError as exc:
        return f"no readable local file: {exc}"
    if not os.path.isabs(path):
        return f"path {path[:200]!r} is not absolute; " + READABLE_ROOT_RULE
    resolved = Path(path).resolve()
    if any(resolved.is_relative_to(root) for root in roots):
        return None
    return f"{resolved} is outside every readable root; " + READABLE_ROOT_RULE


class RawRunRouter(RunRouter):
    """Forwards one run's documents to the spool, splitting out in-Event image arrays.

    A Resource or StreamResource whose file Tiled may not read (see :func:`refusal`) is not
    registered: it, its Datums / StreamDatums are dropped, the refusal is counted
    (``on_refused``) and listed in the run's ``beamwatch_refused_resources`` metadata, and the
    rest of the run (scalar columns, in-Event images, other files) is written as usual.
    """

    def __init__(
        self,
        spool: Spool,
        readable_roots: Sequence[Path] | None = None,
        on_refused: Any = None,
        frames_dir: Path | None = None,
        on_frame_error: Any = None,
    ) -> None:
        self._spool = spool
        self._frames_dir = frames_dir
        self._on_frame_error = on_frame_error
        #: frame arrays on disk per (stream, key), None where frames go through Tiled's API
        self._frame_files: dict[tuple[str, str], FrameFile | None] = {}
        #: frames on disk per (stream, key) not advertised in Tiled yet (spooled at flush)
        self._files_unadvertised: dict[tuple[str, str], int] = {}
        self._roots = list(readable_roots) if readable_roots is not None else None
        self._on_refused = on_refused
        self._refused: set[str] = set()  # resource / stream_resource uids
        self._refused_datums: set[str] = set()
        self._refused_report: list[dict[str, Any]] = []
        self._uid = ""
        self._documents = 0
        self._array_keys: dict[str, list[str]] = {}  # descriptor uid -> keys moved out
        self._stream_name: dict[str, str] = {}
        self._rows_written: dict[tuple[str, str], int] = {}
        self._descriptors: dict[str, Doc] = {}
        self._last_row: dict[tuple[str, str], np.ndarray] = {}
        self._bad: dict[tuple[str, int], dict[str, str]] = {}
        self._bad_report: list[dict[str, Any]] = []
        self._missing: dict[str, list[int]] = {}
        #: seq_nums of the Events spooled, per stream: the stop's status says how many rows
        #: each stream's table must hold for the run to be ``complete`` (the applier checks)
        self._rows: dict[str, set[int]] = {}
        self._start_lost = False
        # waiting to be spooled: raw documents, and frames per (stream, key) with the row
        # offset of the first
        self._held: list[RawDoc] = []
        self._held_frames: dict[tuple[str, str], tuple[int, list[np.ndarray]]] = {}
        self._held_bytes = 0
        self._held_since = 0.0

    def _record(self, name: str, doc: Doc) -> RawDoc:
        self._documents += 1
        # rid identifies the record across retries (its documents are normalised once)
        return RawDoc(name, doc, run=self._uid, rid=f"{self._uid}/{self._documents}")

    def _put(self, name: str, doc: Doc) -> None:
        """Spool a document after everything held before it."""
        self.flush()
        self._spool.put(self._record(name, doc))

    def _hold(self, name: str, doc: Doc) -> None:
        """Keep an Event, Datum or StreamDatum for the next flush (see the module docstring)."""
        if not self._held and not self._held_frames:
            self._held_since = time.monotonic()
        self._held.append(self._record(name, doc))
        self._flush_if_full()

    def _frame_file(self, slot: tuple[str, str], frame: np.ndarray) -> FrameFile | None:
        """The frame array of ``slot``, made at its first frame (None: frames go through
        Tiled's API: no ``frames_dir``, or a dtype Zarr files are not used for)."""
        if slot in self._frame_files:
            return self._frame_files[slot]
        frames: FrameFile | None = None
        if self._frames_dir is not None and frame.dtype.kind in FILE_KINDS and frame.size:
            stream, key = slot
            directory = self._frames_dir / self._uid / stream / f"{key}{SUFFIX}"
            frames = FrameFile(directory, frame.shape, frame.dtype)
        self._frame_files[slot] = frames
        return frames

    def _write_frame(self, slot: tuple[str, str], frames: FrameFile, frame: np.ndarray) -> None:
        """Put the frame at its row of the stream's frame array (see the module docstring)."""
        index = self._rows_written.get(slot, 0)
        if frame.shape == frames.frame_shape and np.can_cast(frame.dtype, frames.dtype, "safe"):
            frame = frame.astype(frames.dtype, copy=False)  # as Tiled's API path does
        if not frames.fits(frame):
            # one array holds frames of one shape and dtype: the row keeps a placeholder
            stream, key = slot
            self._bad_report.append(
                {
                    "stream": stream,
                    "seq_num": index + 1,
                    "data_key": key[:200],
                    "problem": f"shape: {frame.shape} {frame.dtype} where the stream's frames "
                    f"are {frames.frame_shape} {frames.dtype}",
                }
            )
            fill = np.nan if frames.dtype.kind == "f" else 0
            frame = np.full(frames.frame_shape, fill, dtype=frames.dtype)
        write_with_retry(frames, index, frame, on_error=self._on_frame_error)
        if not self._held and not self._held_frames and not self._files_unadvertised:
            self._held_since = time.monotonic()
        self._rows_written[slot] = index + 1
        self._files_unadvertised[slot] = index + 1

    def _hold_frame(self, stream: str, key: str, frame: np.ndarray) -> None:
        slot = (stream, key)
        frames = self._frame_file(slot, frame)
        if frames is not None:
            self._write_frame(slot, frames, frame)
            return
        held = self._held_frames.get(slot)
        if held is not None and (
            held[1][0].shape != frame.shape or held[1][0].dtype != frame.dtype
        ):
            self.flush()  # a block holds frames of one shape and dtype
            held = None
        if not self._held and not self._held_frames:
            self._held_since = time.monotonic()
        if held is None:
            self._held_frames[slot] = (self._rows_written.get(slot, 0), [frame])
        else:
            held[1].append(frame)
        self._rows_written[slot] = self._rows_written.get(slot, 0) + 1
        self._held_bytes += frame.nbytes

    def _flush_if_full(self) -> None:
        if (
            len(self._held) >= MAX_BUFFERED_DOCS
            or self._held_bytes >= MAX_BUFFERED_BYTES
            or time.monotonic() - self._held_since >= MAX_BUFFERED_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Spool what is held: each block of frames, then the documents in one record."""
        for (stream, key), written in self._files_unadvertised.items():
            frame_file = self._frame_files[(stream, key)]
            assert frame_file is not None
            self._spool.put(
                ExternalFrames(
                    ("raw", self._uid, stream),
                    key,
                    frame_file.uri,
                    written,
                    frame_file.frame_shape,
                    frame_file.dtype.str,
                    metadata={"source": "event", "data_key": key},
                )
            )
        self._files_unadvertised = {}
        for (stream, key), (offset, frames) in self._held_frames.items():
            block = frames[0][None, ...] if len(frames) == 1 else np.stack(frames)
            self._spool.put(
                ArrayRows(
                    ("raw", self._uid, stream),
                    key,
                    block,
                    offset=offset,
                    metadata={"source": "event", "data_key": key},
                )
            )
        self._held_frames = {}
        self._held_bytes = 0
        if len(self._held) == 1:
            self._spool.put(self._held[0])
        elif self._held:
            self._spool.put(RawDocs(self._uid, tuple(self._held)))
        self._held = []

    def close(self) -> None:
        self.flush()

    def start(self, doc: Doc) -> None:
        self._uid = doc["uid"]
        self._start_lost = bool(doc.get("beamwatch_start_lost"))
        self._put("start", doc)

    def descriptor(self, doc: Doc) -> None:
        keys = [
            k
            for k, v in doc["data_keys"].items()
            if len(v.get("shape") or []) >= 2 and not v.get("external")
        ]
        self._stream_name[doc["uid"]] = doc.get("name", "primary")
        self._descriptors[doc["uid"]] = doc
        if keys:
            self._array_keys[doc["uid"]] = keys
            doc = copy.deepcopy(doc)
            for key in keys:
                doc["data_keys"].pop(key)
                for obj_keys in doc.get("object_keys", {}).values():
                    if key in obj_keys:
                        obj_keys.remove(key)
            doc["data_keys"] = doc["data_keys"] or {}
            doc.setdefault("configuration", {})
        self._put("descriptor", doc)

    def events_lost(self, descriptor: Doc, seq_nums: list[int]) -> None:
        # The raw path cannot rebuild an Event's readings: the run says what is missing.
        self._missing.setdefault(descriptor.get("name", "primary"), []).extend(seq_nums)

    def stream_lost(self, stream: str, seq_nums: list[int]) -> None:
        # the stop counts Events of a stream whose descriptor never came (lost with its
        # Events while the consumer was down): missing, never complete (benchmarks.chaos
        # --no-pause found "raw complete" with 25 of 26 rows lost)
        self._missing.setdefault(stream, []).extend(seq_nums)

    def bad_fields(self, descriptor: Doc, seq_num: int, problems: dict[str, str]) -> None:
        self._bad[(descriptor["uid"], seq_num)] = problems
        stream = descriptor.get("name", "primary")
        for key, problem in problems.items():
            self._bad_report.append(
                {"stream": stream, "seq_num": seq_num, "data_key": key[:200], "problem": problem}
            )

    def event(self, doc: Doc) -> None:
        if self._refused_datums:
            doc = self._without_refused_datums(doc)
        problems = self._bad.pop((doc["descriptor"], int(doc["seq_num"])), {})
        keys = self._array_keys.get(doc["descriptor"])
        if problems:
            doc = self._with_placeholders(doc, problems, keys or [])
        if keys:
            doc = dict(doc)
            doc["data"] = dict(doc["data"])
            doc["timestamps"] = dict(doc["timestamps"])
            stream = self._stream_name[doc["descriptor"]]
            for key in keys:
                if key not in doc["data"]:
                    continue
                value = np.asarray(doc["data"].pop(key))
                self._last_row[(stream, key)] = value
                doc["timestamps"].pop(key, None)
                doc.get("filled", {}).pop(key, None)
                self._hold_frame(stream, key, value)
        stream_name = self._stream_name.get(doc["descriptor"], "primary")
        self._rows.setdefault(stream_name, set()).add(int(doc["seq_num"]))
        self._hold("event", doc)

    def _refuse(self, name: str, doc: Doc) -> bool:
        if self._roots is None:
            return False
        reason = refusal(doc, self._roots)
        if reason is None:
            return False
        self._refused.add(str(doc.get("uid")))
        try:
            path = resource_file(doc)
        except ValueError:
            path = ""
        entry = {
            "document": name,
            "uid": str(doc.get("uid"))[:200],
            "data_key": str(doc.get("data_key", ""))[:200],
            "path": path[:1000],
            "rule": reason,
        }
        self._refused_report.append(entry)
        logger.error("run %s: %s %s refused: %s", self._uid, name, entry["uid"], reason)
        if self._on_refused is not None and not REPLAYING.get():  # counted once, not on replay
            self._on_refused(name)
        return True

    def resource(self, doc: Doc) -> None:
        if not self._refuse("resource", doc):
            self._put("resource", doc)

    def datum(self, doc: Doc) -> None:
        if doc.get("resource") in self._refused:
            # its Resource was refused: the Events' references to it are taken out too
            self._refused_datums.add(str(doc.get("datum_id")))
            return
        self._hold("datum", doc)

    def stream_resource(self, doc: Doc) -> None:
        if not self._refuse("stream_resource", doc):
            self._put("stream_resource", doc)

    def stream_datum(self, doc: Doc) -> None:
        if doc.get("stream_resource") in self._refused:
            return
        self._hold("stream_datum", doc)

    def stop(self, doc: Doc | None) -> None:
        # Without the stop (closed after the idle timeout) nothing counts the Events after the
        # last one seen; from a stand-in start (the start was lost) nothing says what the run
        # was: neither is ever complete.
        stop_lost = doc is None
        if doc is None:
            doc = _synthetic_stop(self._uid)
        self._put("stop", doc)  # after everything held
        whole = not self._missing and not stop_lost and not self._start_lost
        status: dict[str, Any] = {
            "beamwatch_status": RawStatus.COMPLETE if whole else RawStatus.INCOMPLETE,
            "beamwatch_missing_seq_nums": self._missing,
            "beamwatch_stop_lost": stop_lost,
            "beamwatch_start_lost": self._start_lost,
        }
        if whole:
            # checked against Tiled when the status is written (services.tiled.applier)
            status[RAW_ROWS] = {stream: len(seq) for stream, seq in self._rows.items()}
        if self._bad_report:
            status["beamwatch_bad_fields"] = self._bad_report
        if self._refused_report:
            status["beamwatch_refused_resources"] = self._refused_report
        self._spool.put(Metadata(tuple(raw_path(self._uid)), status))

    def _without_refused_datums(self, doc: Doc) -> Doc:
        """The Event without its references to Datums of refused Resources."""
        refused = [
            k for k, v in doc["data"].items() if isinstance(v, str) and v in self._refused_datums
        ]
        if not refused:
            return doc
        data = doc["data"]
        doc = dict(doc)
        doc["data"] = {k: v for k, v in data.items() if k not in refused}
        doc["timestamps"] = {
            k: v for k, v in (doc.get("timestamps") or {}).items() if k not in refused
        }
        if "filled" in doc:
            doc["filled"] = {k: v for k, v in doc["filled"].items() if k not in refused}
        for key in refused:
            self._refused_datums.discard(str(data[key]))
        return doc

    def _with_placeholders(self, doc: Doc, problems: dict[str, str], array_keys: list[str]) -> Doc:
        """Stand-ins for dropped fields, so rows stay aligned and say "unknown".

        A dropped scalar becomes NaN (None for non-numbers) in the row; a dropped image
        becomes a frame of NaN (0 for integer dtypes) in the raw array, and its seq_num is
        listed in the run's ``beamwatch_bad_fields`` metadata either way.
        """
        desc = self._descriptors.get(doc["descriptor"], {})
        data_keys = desc.get("data_keys", {})
        stream = self._stream_name.get(doc["descriptor"], "primary")
        doc = dict(doc)
        doc["data"] = dict(doc["data"])
        doc["timestamps"] = dict(doc.get("timestamps") or {})
        for key in problems:
            info = data_keys.get(key)
            if not isinstance(info, dict):
                continue
            if key in array_keys:
                placeholder = self._placeholder_frame(stream, key, info)
                if placeholder is not None:
                    doc["data"][key] = placeholder
                continue
            if info.get("external"):
                continue
            numeric = info.get("dtype") in ("number", "integer", "boolean")
            doc["data"][key] = float("nan") if numeric else None
            doc["timestamps"][key] = doc.get("time")
        return doc

    def _placeholder_frame(self, stream: str, key: str, info: Doc) -> np.ndarray | None:
        last = self._last_row.get((stream, key))
        if last is not None:
            shape, dtype = last.shape, last.dtype
        else:
            shape = tuple(int(n) for n in info.get("shape") or [])
            if not shape or any(n <= 0 for n in shape):
                return None
            dtype = np.dtype("float64")
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        return np.full(shape, fill, dtype=dtype)


#: key marking the stop the raw path writes for a run whose stop was lost
STAND_IN_STOP_KEY = "beamwatch_stop_lost"


def _synthetic_stop(run_uid: str) -> dict[str, Any]:
    import uuid

    return {
        "uid": str(uuid.uuid4()),
        "run_start": run_uid,
        "time": time.time(),
        "exit_status": "fail",
        "reason": "beamwatch: stop document lost on the bus (run idle past the timeout)",
        "num_events": {},
        # a stand-in, not the RunEngine's stop: its (empty) num_events counts nothing, so a
        # consumer that looks here for a lost stop must not take it (services.runtime.consumer)
        STAND_IN_STOP_KEY: True,
    }
