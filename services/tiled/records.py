"""Typed write records: what the routers put in the spool and the applier writes to Tiled.

Every write to Tiled is one of the frozen dataclasses below. On disk a record is msgpack (never
pickle; arrays with the ndarray extension of :mod:`services.core.serialization`): a map of its
fields plus ``op`` (which record) and ``v`` (:data:`RECORD_VERSION`). Records written before the
version field existed are maps of the same fields without ``v``; :func:`from_wire` reads them
too (version 0).

Paths are tuples of Tiled keys from the root (``("analysis", run_uid, "xanes")``); a record's
:attr:`run` is the run it belongs to (the spool orders writes per run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from services.core import serialization

#: Version of the on-disk form written by :func:`to_wire`.
RECORD_VERSION = 1


class MalformedRecord(serialization.MalformedMessage):
    """Bytes that are not a write record of a version this code can read."""


def _run_of_path(path: tuple[str, ...]) -> str | None:
    if len(path) >= 2 and path[0] in ("raw", "analysis"):
        return str(path[1])
    return None


@dataclass(frozen=True)
class RawDoc:
    """A Bluesky document for the raw ``TiledWriter`` (``raw/<run>``)."""

    op: ClassVar[str] = "raw_doc"
    name: str
    doc: dict[str, Any]
    #: the run the document belongs to
    run: str
    #: identifies the record across retries: its documents are normalised once
    rid: str | None = None

    @property
    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class Container:
    """Create the container at ``path`` if missing; merge ``metadata`` into it."""

    op: ClassVar[str] = "container"
    path: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> str | None:
        return _run_of_path(self.path)

    @property
    def label(self) -> str:
        return self.path[-1] if self.path else ""


@dataclass(frozen=True)
class Metadata:
    """Merge ``metadata`` into the node at ``path``.

    ``notice`` marks the consumer's own report of a rejected write: such a record, if rejected
    in turn, is not reported again.
    """

    op: ClassVar[str] = "metadata"
    path: tuple[str, ...]
    metadata: dict[str, Any]
    notice: bool = False

    @property
    def run(self) -> str | None:
        return _run_of_path(self.path)

    @property
    def label(self) -> str:
        return self.path[-1] if self.path else ""


@dataclass(frozen=True, eq=False)
class ArrayWrite:
    """Write (or replace) the whole array ``key`` under ``path``."""

    op: ClassVar[str] = "array"
    path: tuple[str, ...]
    key: str
    array: np.ndarray
    dims: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> str | None:
        return _run_of_path(self.path)

    @property
    def label(self) -> str:
        return self.key


@dataclass(frozen=True, eq=False)
class ArrayRows:
    """Write ``array`` at ``offset`` along ``axis`` of the growing array ``key``, extending it."""

    op: ClassVar[str] = "array_rows"
    path: tuple[str, ...]
    key: str
    array: np.ndarray
    offset: int
    axis: int = 0
    dims: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> str | None:
        return _run_of_path(self.path)

    @property
    def label(self) -> str:
        return self.key


@dataclass(frozen=True)
class ArrayFile:
    """Write (or replace) the whole array ``key`` under ``path`` from the npy file ``file``.

    A large array is not packed into the record (packing and unpacking tens of MB holds the
    GIL of the consumer, whose dispatch thread serves live frames meanwhile): the spool keeps
    it as an npy file beside its records, named after the record (``file`` is that name, in
    the spool's ``arrays/`` directory), and the applier writes it to Tiled slab by slab.
    """

    op: ClassVar[str] = "array_file"
    path: tuple[str, ...]
    key: str
    file: str
    dims: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> str | None:
        return _run_of_path(self.path)

    @property
    def label(self) -> str:
        return self.key


@dataclass(frozen=True)
class ExternalFrames:
    """Advertise the first ``frames`` frames of the frame array ``key`` under ``path``, written
    by the consumer to the Zarr directory ``uri`` (:mod:`services.tiled.frame_files`);
    registers the array node as external data the first time. The advertised shape only grows
    (frames before it are on disk), so re-applying an older record changes nothing."""

    op: ClassVar[str] = "external_frames"
    path: tuple[str, ...]
    key: str
    uri: str
    frames: int
    frame_shape: tuple[int, ...]
    dtype: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> str | None:
        return _run_of_path(self.path)

    @property
    def label(self) -> str:
        return self.key


@dataclass(frozen=True)
class TableRows:
    """Append ``rows`` (columns of equal length) to the appendable table ``key`` at row
    ``offset`` (-1: offset unknown, plain append)."""

    op: ClassVar[str] = "table_rows"
    path: tuple[str, ...]
    key: str
    rows: dict[str, list[Any]]
    offset: int = -1

    @property
    def run(self) -> str | None:
        return _run_of_path(self.path)

    @property
    def label(self) -> str:
        return self.key

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.rows.values()), []))


@dataclass(frozen=True)
class RawDocs:
    """Several :class:`RawDoc` records of one run, written as one batch (their Event rows one
    table append per stream): spooled by the raw router for what it held back, or made by the
    spool merging a run's queued raw documents."""

    op: ClassVar[str] = "raw_docs"
    run: str
    records: tuple[RawDoc, ...]

    @property
    def label(self) -> str:
        return f"{len(self.records)} documents"


Record = (
    RawDoc
    | RawDocs
    | Container
    | Metadata
    | ArrayWrite
    | ArrayFile
    | ArrayRows
    | TableRows
    | ExternalFrames
)

RECORD_TYPES: dict[str, type[Record]] = {
    cls.op: cls
    for cls in (
        RawDoc,
        RawDocs,
        Container,
        Metadata,
        ArrayWrite,
        ArrayFile,
        ArrayRows,
        TableRows,
        ExternalFrames,
    )
}


def to_wire(record: Record) -> dict[str, Any]:
    """The record as a msgpack-safe map: its fields, ``op`` and ``v``."""
    out: dict[str, Any] = {"v": RECORD_VERSION, "op": record.op}
    for f in dataclasses.fields(record):
        out[f.name] = getattr(record, f.name)
    if isinstance(record, RawDocs):
        out["records"] = [to_wire(one) for one in record.records]
    return out


def dumps(record: Record) -> bytes:
    return serialization.dumps(to_wire(record))


def loads(payload: bytes) -> Record:
    """A record from :func:`dumps` bytes (or a version-0 record); :class:`MalformedRecord` else."""
    return from_wire(serialization.loads(payload))


def from_wire(obj: Any) -> Record:
    """The record a decoded map describes; reads every version up to :data:`RECORD_VERSION`.

    Raises
    ------
    MalformedRecord
        Not a map, an unknown ``op``, a newer version, or fields that do not fit the op.
    """
    if not isinstance(obj, dict):
        raise MalformedRecord(f"a write record is a map, got {type(obj).__name__}")
    version = obj.get("v", 0)
    if not isinstance(version, int) or not 0 <= version <= RECORD_VERSION:
        raise MalformedRecord(
            f"write record version {version!r} is not one this code reads (<= {RECORD_VERSION})"
        )
    op = obj.get("op")
    cls = RECORD_TYPES.get(op) if isinstance(op, str) else None
    if cls is None:
        raise MalformedRecord(f"unknown write record op {op!r}")
    values = {k: v for k, v in obj.items() if k not in ("v", "op")}
    if version == 0:
        values = _from_version_0(cls, values)
    if "path" in values:
        values["path"] = tuple(str(p) for p in values["path"] or ())
    if "frame_shape" in values and isinstance(values["frame_shape"], list):
        values["frame_shape"] = tuple(values["frame_shape"])
    for key in ("metadata",):
        if key in values and values[key] is None:
            values[key] = {}
    if cls is RawDocs:
        parts = values.get("records")
        if not isinstance(parts, list | tuple):
            raise MalformedRecord("raw_docs record: records is not a list")
        inner = tuple(from_wire(part) for part in parts)
        if not all(isinstance(one, RawDoc) for one in inner):
            raise MalformedRecord("raw_docs record: records holds other records than raw_doc")
        values["records"] = inner
    try:
        return cls(**values)
    except TypeError as exc:
        raise MalformedRecord(f"{op} record: {exc}") from exc


def _from_version_0(cls: type[Record], values: dict[str, Any]) -> dict[str, Any]:
    """Version 0: the dicts of before the version field; the same fields, but raw documents
    of the offline import had no ``run`` (taken from the document)."""
    if cls is RawDoc and not values.get("run"):
        doc = values.get("doc") or {}
        run = doc.get("uid") if values.get("name") == "start" else doc.get("run_start")
        values["run"] = str(run or "")
    return values
