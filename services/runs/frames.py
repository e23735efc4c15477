"""Turn a run's documents into frames: image arrays plus the event's readings, in order.

Three frame sources are supported, all yielding the same :class:`Frame`:

* arrays inside Event documents (ophyd.sim detectors, small images);
* ``Resource``/``Datum`` references to an HDF5 file (``datum_kwargs`` ``frame`` or
  ``point_number``, ``resource_kwargs`` ``dataset``/``path``);
* ``StreamResource``/``StreamDatum`` (event-model >= 1.21) read from the growing file with
  h5py in SWMR mode.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any
from urllib.parse import urlparse

import numpy as np

logger = logging.getLogger(__name__)

Doc = dict[str, Any]
DEFAULT_DATASET = "/entry/data/data"


class FrameSourceError(RuntimeError):
    """A frame could not be read from the place its documents point to."""


@dataclass
class Frame:
    run_uid: str
    stream: str
    seq_num: int
    time: float
    readings: dict[str, Any]
    images: dict[str, np.ndarray]
    received: float = field(default_factory=monotonic)
    recovered: bool = False
    #: processed again from the run's journal after a crash (its feedback went out already)
    replayed: bool = False
    #: rebuilt from the detector file while its Event's readings (energy, angle, ...) were
    #: found nowhere: ``readings`` holds none of them, and the frame cannot be placed on a
    #: scan axis (pipelines that need one raise :class:`FrameUnusable` for it)
    readings_lost: bool = False
    #: readings its Event carried but that were dropped as unusable (undecodable, wrong
    #: type): known to have been measured, unknown in value
    dropped_fields: frozenset[str] = frozenset()


class FrameUnusable(Exception):
    """A pipeline cannot use this frame (e.g. a lost Event's energy is unknown, so the frame
    has no place on the energy axis). The router leaves it out of that pipeline's results and
    names it in the pipeline's ``missing_seq_nums``: the run ends ``incomplete``, never
    ``complete``, and the pipeline goes on with the other frames."""


def axis_reading(frame: Frame, key: str) -> float:
    """The reading ``key`` that places ``frame`` on its scan axis (energy, angle).

    Raises
    ------
    FrameUnusable
        The reading is unknown: lost with the frame's Event (``readings_lost``), dropped from
        it as undecodable or of the wrong type (``dropped_fields``), or not a finite number.
        The frame cannot be placed on the axis, so it must not feed results that need one;
        the run names it as missing.
    ValueError
        A frame that came with its Event lacks ``key``: the run's documents name a reading
        they do not record (a configuration error, not a loss).
    """
    if key in frame.dropped_fields:
        raise FrameUnusable(
            f"{frame.stream} seq_num {frame.seq_num}: its {key!r} could not be used "
            "(dropped from its Event, see the run's bad_fields)"
        )
    if key not in frame.readings:
        if frame.readings_lost:
            raise FrameUnusable(
                f"{frame.stream} seq_num {frame.seq_num}: its {key!r} was lost with its Event"
            )
        raise ValueError(f"event seq_num {frame.seq_num} has no reading {key!r}")
    try:
        value = float(frame.readings[key])
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise FrameUnusable(
            f"{frame.stream} seq_num {frame.seq_num}: {key!r} is {frame.readings[key]!r}"
        )
    return value


@dataclass
class _FileRef:
    path: Path
    dataset: str


class Hdf5Reader:
    """Open HDF5 files once, in SWMR read mode, and read single frames as they are written."""

    def __init__(self, wait_timeout: float = 30.0) -> None:
        self._files: dict[Path, Any] = {}
        self._wait_timeout = wait_timeout

    def read(self, ref: _FileRef, index: int) -> np.ndarray:
        import h5py

        deadline = time.monotonic() + self._wait_timeout
        while True:
            try:
                fh = self._files.get(ref.path)
                if fh is None:
                    fh = h5py.File(ref.path, "r", libver="latest", swmr=True)
                    self._files[ref.path] = fh
                if ref.dataset not in fh:
                    raise FrameSourceError(f"{ref.path} has no dataset {ref.dataset}")
                dset = fh[ref.dataset]
                dset.refresh()
                if dset.shape[0] > index:
                    return np.asarray(dset[index])
            except (OSError, KeyError) as exc:
                if time.monotonic() > deadline:
                    raise FrameSourceError(f"cannot read {ref.path}:{ref.dataset}: {exc}") from exc
                self._files.pop(ref.path, None)
            if time.monotonic() > deadline:
                raise FrameSourceError(
                    f"{ref.path}:{ref.dataset} has no frame {index} after {self._wait_timeout} s"
                )
            time.sleep(0.01)

    def close(self) -> None:
        for fh in self._files.values():
            try:
                fh.close()
            except Exception:  # noqa: BLE001
                logger.debug("closing HDF5 file failed", exc_info=True)
        self._files.clear()


def _path_from_uri(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise FrameSourceError(f"unsupported URI scheme {parsed.scheme!r} in {uri}")
    return Path(parsed.path)


class FrameAssembler:
    """Per-run state that pairs Events with their frames, whatever the frame source."""

    def __init__(self, run_uid: str, reader: Hdf5Reader | None = None) -> None:
        self.run_uid = run_uid
        self._reader = reader or Hdf5Reader()
        self._descriptors: dict[str, Doc] = {}
        self._resources: dict[str, Doc] = {}
        self._datums: dict[str, Doc] = {}
        self._stream_resources: dict[str, Doc] = {}
        # descriptor uid -> data_key -> seq_num -> (file ref, index)
        self._stream_index: dict[str, dict[str, dict[int, tuple[_FileRef, int]]]] = {}
        self._pending: list[Doc] = []
        #: Events whose frame cannot be assembled (a lost Datum, an unknown resource), with
        #: why: taken out of the queue so that the frames after them go on
        self.unassembled: list[tuple[Doc, str]] = []

    # ---- documents ---------------------------------------------------------------------------
    @property
    def descriptors(self) -> dict[str, Doc]:
        return self._descriptors

    def descriptor(self, doc: Doc) -> None:
        self._descriptors[doc["uid"]] = doc

    def resource(self, doc: Doc) -> None:
        self._resources[doc["uid"]] = doc

    def datum(self, doc: Doc) -> None:
        self._datums[doc["datum_id"]] = doc

    def stream_resource(self, doc: Doc) -> None:
        self._stream_resources[doc["uid"]] = doc

    def stream_datum(self, doc: Doc) -> list[Frame]:
        sres = self._stream_resources.get(doc["stream_resource"])
        if sres is None:
            raise FrameSourceError(
                f"StreamDatum refers to unknown resource {doc['stream_resource']}"
            )
        ref = _FileRef(
            _path_from_uri(sres["uri"]),
            sres.get("parameters", {}).get("dataset") or DEFAULT_DATASET,
        )
        start, stop = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        seq_nums = doc.get("seq_nums") or {}
        seq_start = int(seq_nums.get("start") or 0) or start + 1
        table = self._stream_index.setdefault(doc["descriptor"], {}).setdefault(
            sres["data_key"], {}
        )
        for offset, index in enumerate(range(start, stop)):
            table[seq_start + offset] = (ref, index)
        return self._flush_pending()

    def event(self, doc: Doc) -> list[Frame]:
        self._pending.append(doc)
        return self._flush_pending()

    def image_keys(self, descriptor_uid: str) -> list[str]:
        desc = self._descriptors[descriptor_uid]
        return [k for k, v in desc["data_keys"].items() if _is_image(v)]

    def frame_for(
        self, descriptor_uid: str, seq_num: int, readings: dict[str, Any]
    ) -> Frame | None:
        """Rebuild a frame whose Event was lost, from the stream index (detector file)."""
        table = self._stream_index.get(descriptor_uid, {})
        images = {}
        for key in self.image_keys(descriptor_uid):
            entry = table.get(key, {}).get(seq_num)
            if entry is None:
                return None
            images[key] = self._reader.read(*entry)
        desc = self._descriptors[descriptor_uid]
        return Frame(
            self.run_uid,
            desc.get("name", "primary"),
            seq_num,
            float(readings.get("time", time.time())),
            readings,
            images,
            recovered=True,
        )

    def close(self) -> None:
        self._reader.close()

    # ---- internals ---------------------------------------------------------------------------
    def drain(self) -> list[Doc]:
        """The Events still waiting for their frame (their StreamDatum never came), forgotten."""
        pending, self._pending = self._pending, []
        return pending

    def _flush_pending(self) -> list[Frame]:
        frames: list[Frame] = []
        while self._pending:
            try:
                frame = self._try_assemble(self._pending[0])
            except FrameSourceError as exc:
                # Never a reason to hold back the frames after it: set it aside.
                self.unassembled.append((self._pending.pop(0), str(exc)))
                continue
            if frame is None:
                break
            self._pending.pop(0)
            frames.append(frame)
        return frames

    def _try_assemble(self, doc: Doc) -> Frame | None:
        desc = self._descriptors.get(doc["descriptor"])
        if desc is None:
            raise FrameSourceError(f"event for unknown descriptor {doc['descriptor']}")
        data_keys = desc["data_keys"]
        readings: dict[str, Any] = {}
        images: dict[str, np.ndarray] = {}
        seq = int(doc["seq_num"])
        for key, info in data_keys.items():
            external = info.get("external")
            if external == "STREAM:" or (external and key not in doc["data"]):
                entry = self._stream_index.get(doc["descriptor"], {}).get(key, {}).get(seq)
                if entry is None:
                    return None  # StreamDatum not here yet
                images[key] = self._reader.read(*entry)
            elif external:
                images[key] = self._read_datum(doc["data"][key])
            elif key in doc["data"]:
                value = doc["data"][key]
                if _is_image(info):
                    images[key] = np.asarray(value)
                else:
                    readings[key] = value
        return Frame(
            self.run_uid, desc.get("name", "primary"), seq, float(doc["time"]), readings, images
        )

    def _read_datum(self, datum_id: str) -> np.ndarray:
        datum = self._datums.get(datum_id)
        if datum is None:
            raise FrameSourceError(f"event refers to unknown datum {datum_id}")
        resource = self._resources.get(datum["resource"])
        if resource is None:
            raise FrameSourceError(f"datum refers to unknown resource {datum['resource']}")
        path = Path(resource.get("root", "/")) / resource["resource_path"]
        dkw = datum.get("datum_kwargs", {})
        if resource.get("spec") == "NPY_SEQ":  # ophyd.sim image detectors: one .npy per frame
            return np.load(f"{path}_{int(dkw['index'])}.npy", allow_pickle=False)
        kwargs = resource.get("resource_kwargs", {})
        dataset = kwargs.get("dataset") or kwargs.get("path") or DEFAULT_DATASET
        index = dkw.get("frame", dkw.get("point_number", dkw.get("index")))
        if index is None:
            raise FrameSourceError(f"datum {datum_id} has no frame/point_number in datum_kwargs")
        return self._reader.read(_FileRef(path, dataset), int(index))


def _is_image(data_key: Doc) -> bool:
    return len(data_key.get("shape") or []) >= 2 or bool(data_key.get("external"))
