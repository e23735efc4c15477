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
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

NDARRAY_EXT_CODE = 1
_ALLOWED_KINDS = frozenset("biufc")  # bool, int, uint, float, complex: no object arrays


class MalformedMessage(ValueError):
    """A bus message that is not a well-formed beamwatch/Bluesky document."""


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
    doc = loads(payload)
    if not isinstance(doc, dict):
        raise MalformedMessage(f"{name} payload decodes to {type(doc).__name__}, expected a map")
    return name, doc


def format_bus_message(name: str, doc: dict[str, Any], prefix: bytes = b"") -> bytes:
    """Build a bus message the way ``bluesky.callbacks.zmq.Publisher`` does, with msgpack."""
    return b" ".join([prefix, name.encode(), dumps(doc)])
