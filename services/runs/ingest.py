"""The raw-data path: every run's documents into Tiled under ``raw/<run uid>`` (TiledWriter).

Documents are spooled before they are written, so a Tiled outage delays them but loses none.
2-D arrays inside Event documents, which ``TiledWriter`` cannot store, are taken out of the
documents and written as growing arrays ``raw/<uid>/<stream>/<data key>`` with the client.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np

from services.runs.routing import Doc, RunRouter
from services.tiled.spool import Spool

logger = logging.getLogger(__name__)


class RawRunRouter(RunRouter):
    """Forwards one run's documents to the spool, splitting out in-Event image arrays."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._uid = ""
        self._array_keys: dict[str, list[str]] = {}  # descriptor uid -> keys moved out
        self._stream_name: dict[str, str] = {}
        self._rows_written: dict[tuple[str, str], int] = {}

    def _put(self, name: str, doc: Doc) -> None:
        self._spool.put({"op": "raw_doc", "name": name, "doc": doc})

    def start(self, doc: Doc) -> None:
        self._uid = doc["uid"]
        self._put("start", doc)

    def descriptor(self, doc: Doc) -> None:
        keys = [
            k
            for k, v in doc["data_keys"].items()
            if len(v.get("shape") or []) >= 2 and not v.get("external")
        ]
        self._stream_name[doc["uid"]] = doc.get("name", "primary")
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

    def event(self, doc: Doc) -> None:
        keys = self._array_keys.get(doc["descriptor"])
        if keys:
            doc = dict(doc)
            doc["data"] = dict(doc["data"])
            doc["timestamps"] = dict(doc["timestamps"])
            stream = self._stream_name[doc["descriptor"]]
            for key in keys:
                value = np.asarray(doc["data"].pop(key))
                doc["timestamps"].pop(key, None)
                doc.get("filled", {}).pop(key, None)
                slot = (stream, key)
                offset = self._rows_written.get(slot, 0)
                self._spool.put(
                    {
                        "op": "array_rows",
                        "path": ["raw", self._uid, stream],
                        "key": key,
                        "array": value[None, ...],
                        "offset": offset,
                        "metadata": {"source": "event", "data_key": key},
                    }
                )
                self._rows_written[slot] = offset + 1
        self._put("event", doc)

    def resource(self, doc: Doc) -> None:
        self._put("resource", doc)

    def datum(self, doc: Doc) -> None:
        self._put("datum", doc)

    def stream_resource(self, doc: Doc) -> None:
        self._put("stream_resource", doc)

    def stream_datum(self, doc: Doc) -> None:
        self._put("stream_datum", doc)

    def stop(self, doc: Doc | None) -> None:
        if doc is None:
            doc = _synthetic_stop(self._uid)
        self._put("stop", doc)


def _synthetic_stop(run_uid: str) -> dict[str, Any]:
    import time
    import uuid

    return {
        "uid": str(uuid.uuid4()),
        "run_start": run_uid,
        "time": time.time(),
        "exit_status": "fail",
        "reason": "beamwatch: stop document lost on the bus (run idle past the timeout)",
        "num_events": {},
    }
