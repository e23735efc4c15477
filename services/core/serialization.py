"""Safe wire format for Bluesky documents on the 0MQ bus: msgpack with an ndarray extension.

Never pickle. Any Bluesky user can configure a ``Publisher`` with this serializer without
installing beamwatch (see README, "Publishing to beamwatch")::

    import msgpack, numpy as np

    def default(obj):
        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            header = [arr.dtype.str, list(arr.shape), arr.tobytes()]
            return msgpack.ExtType(1, msgpack.packb(header))
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"cannot serialize {type(obj)!r}")

    serializer = lambda doc: msgpack.packb(doc, default=default)

What arrives from the bus is decoded by :func:`parse_bus_message`, which also accepts what
Bluesky users already send:

* ``msgpack`` + ``msgpack_numpy`` (bluesky-kafka, NSLS-II): arrays arrive as maps
  ``{b"nd": True, b"type", b"kind", b"shape", b"data"}`` and numpy scalars as
  ``{b"nd": False, ...}``; only numeric and bool dtypes are decoded, never its object
  (pickle) or structured kinds;
* JSON (``Publisher(serializer=lambda d: json.dumps(d).encode())``), payloads starting ``{``.

An array that cannot be decoded does not cost the document: it becomes an
:class:`UndecodableField` that says why, and the Event's other fields go on (see
``services.runs.routing``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

NDARRAY_EXT_CODE = 1
_ALLOWED_KINDS = frozenset("biufc")  # bool, int, uint, float, complex: no object arrays


class MalformedMessage(ValueError):
    """A bus message that is not a well-formed beamwatch/Bluesky document."""


@dataclass(frozen=True)
class UndecodableField:
    """Stands in for one value of a document that could not be decoded; ``reason`` says why."""

    reason: str


def _key(obj: dict[Any, Any], name: str) -> Any:
    if name in obj:
        return obj[name]
    return obj.get(name.encode())


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _is_msgpack_numpy(obj: dict[Any, Any]) -> bool:
    nd = _key(obj, "nd")
    return isinstance(nd, bool) and _key(obj, "type") is not None and _key(obj, "data") is not None


def _decode_msgpack_numpy(obj: dict[Any, Any]) -> Any:
    """A ``msgpack_numpy`` array or scalar map as numpy, numeric and bool dtypes only."""
    kind = _key(obj, "kind")
    if kind not in (None, b"", ""):
        return UndecodableField(
            f"msgpack_numpy array of kind {_text(kind)!r} refused (object/pickle or structured);"
            " only numeric and bool dtypes are accepted"
        )
    type_ = _key(obj, "type")
    raw = _key(obj, "data")
    try:
        dtype = np.dtype(_text(type_))
    except Exception as exc:  # noqa: BLE001 - any bad dtype string
        return UndecodableField(f"msgpack_numpy dtype {type_!r} is not a numpy dtype: {exc}")
    if dtype.kind not in _ALLOWED_KINDS:
        return UndecodableField(f"msgpack_numpy dtype {dtype.str!r} is not numeric or bool")
    if not isinstance(raw, bytes | bytearray):
        return UndecodableField("msgpack_numpy data is not a byte string")
    if _key(obj, "nd") is False:
        if len(raw) != dtype.itemsize:
            return UndecodableField(
                f"msgpack_numpy scalar has {len(raw)} bytes, expected {dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype)[0].item()
    return _array_from_bytes(dtype, _key(obj, "shape"), bytes(raw), "msgpack_numpy array")


def _array_from_bytes(dtype: np.dtype, shape: Any, raw: bytes, what: str) -> Any:
    if not isinstance(shape, list | tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return UndecodableField(f"{what} shape {shape!r} is not a list of sizes")
    count = int(np.prod(shape)) if shape else 1
    if count * dtype.itemsize != len(raw):
        return UndecodableField(
            f"{what} has {len(raw)} bytes, expected {count * dtype.itemsize} "
            f"for shape {list(shape)} and dtype {dtype.str}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _lenient_ext_hook(code: int, data: bytes) -> Any:
    try:
        return _ext_hook(code, data)
    except MalformedMessage as exc:
        return UndecodableField(str(exc))


def _lenient_object_hook(obj: dict[Any, Any]) -> Any:
    if _is_msgpack_numpy(obj):
        return _decode_msgpack_numpy(obj)
    return obj


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"cannot serialize ndarray of dtype {arr.dtype}")
        payload = msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()])
        return msgpack.ExtType(NDARRAY_EXT_CODE, payload)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot serialize object of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != NDARRAY_EXT_CODE:
        raise MalformedMessage(
            f"unknown msgpack extension type {code}; expected {NDARRAY_EXT_CODE}"
        )
    try:
        dtype_str, shape, raw = msgpack.unpackb(data)
        dtype = np.dtype(dtype_str)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a malformed message
        raise MalformedMessage(f"bad ndarray extension payload: {exc}") from exc
    if dtype.kind not in _ALLOWED_KINDS:
        raise MalformedMessage(f"ndarray dtype {dtype_str!r} is not allowed")
    count = int(np.prod(shape)) if shape else 1
    if count * dtype.itemsize != len(raw):
        raise MalformedMessage(
            f"ndarray payload has {len(raw)} bytes, expected {count * dtype.itemsize} "
            f"for shape {shape} and dtype {dtype_str}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def dumps(doc: Any) -> bytes:
    """Serialize a document (dicts, lists, scalars, numpy arrays) to msgpack bytes."""
    return msgpack.packb(doc, default=_default, use_bin_type=True)


def loads(payload: bytes) -> Any:
    """Deserialize msgpack bytes made by :func:`dumps`; :class:`MalformedMessage` otherwise."""
    try:
        return msgpack.unpackb(payload, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except MalformedMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types
        raise MalformedMessage(
            f"payload is not valid msgpack: {type(exc).__name__}: {exc}"
        ) from exc


def loads_bus_payload(payload: bytes) -> Any:
    """Decode a payload from the bus: msgpack (our extension or ``msgpack_numpy`` maps) or JSON.

    A single array that cannot be decoded becomes an :class:`UndecodableField`; only a payload
    that is not msgpack or JSON at all raises :class:`MalformedMessage`.
    """
    if payload[:1] == b"{":
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise MalformedMessage(f"payload is not valid JSON: {exc}") from exc
    try:
        return msgpack.unpackb(
            payload,
            ext_hook=_lenient_ext_hook,
            object_hook=_lenient_object_hook,
            raw=False,
            strict_map_key=False,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types
        raise MalformedMessage(
            f"payload is not valid msgpack or JSON: {type(exc).__name__}: {exc}"
        ) from exc


DOCUMENT_NAMES = frozenset(
    {
        "start",
        "descriptor",
        "event",
        "event_page",
        "resource",
        "datum",
        "datum_page",
        "stream_resource",
        "stream_datum",
        "stop",
    }
)


def parse_bus_message(message: bytes) -> tuple[str, dict[str, Any]]:
    """Split a Bluesky 0MQ message ``prefix b' ' name b' ' payload`` into (name, doc).

    Raises
    ------
    MalformedMessage
        If the frame does not have three parts, the name is unknown, or the payload is not a
        msgpack map.
    """
    parts = message.split(b" ", 2)
    if len(parts) != 3:
        raise MalformedMessage("message does not split into prefix, name and payload on b' '")
    _prefix, raw_name, payload = parts
    try:
        name = raw_name.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedMessage("document name is not ASCII") from exc
    if name not in DOCUMENT_NAMES:
        raise MalformedMessage(f"unknown document name {name[:40]!r}")
    doc = loads_bus_payload(payload)
    if not isinstance(doc, dict):
        raise MalformedMessage(f"{name} payload decodes to {type(doc).__name__}, expected a map")
    return name, doc


def format_bus_message(name: str, doc: dict[str, Any], prefix: bytes = b"") -> bytes:
    """Build a bus message the way ``bluesky.callbacks.zmq.Publisher`` does, with msgpack."""
    return b" ".join([prefix, name.encode(), dumps(doc)])
