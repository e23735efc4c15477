"""Where analysis results go: the spooled result writer and the pipeline protocol.

Results go under ``analysis/<run uid>/<pipeline>/`` through the spool.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from services.core.layout import ROW_INDEX, Status, analysis_path
from services.runs.frames import Frame
from services.runs.routing import Doc
from services.tiled.records import (
    ArrayFile,
    ArrayRows,
    ArrayWrite,
    Container,
    Metadata,
    TableRows,
)
from services.tiled.spool import Spool


class RecoveryInterrupted(RuntimeError):
    """The consumer is stopping while a run's lost frames wait for Tiled, or while its
    after-scan stage runs in a child process: the run is left open (its journal is replayed
    by the next process), not finished as incomplete or failed."""


class ResultWriter:
    """Spooled writes under ``analysis/<run uid>/<pipeline>``."""

    def __init__(self, spool: Spool, run_uid: str, pipeline: str) -> None:
        self._spool = spool
        self.run_uid = run_uid
        self.pipeline = pipeline
        self.path = tuple(analysis_path(run_uid, pipeline))
        self._rows: dict[str, int] = {}
        self._table_rows: dict[str, int] = {}
        #: how the run's results end, set by the router before ``on_stop``: ``complete`` only
        #: when every frame is in and used, else ``incomplete`` with what is missing. A
        #: pipeline that declares a stage final itself (the crack map, before the particle
        #: stage) writes :meth:`final` instead of a status of its own.
        self.final_status: dict[str, Any] = {"status": Status.COMPLETE}

    def sibling(self, pipeline: str) -> ResultWriter:
        """A writer for another pipeline container of the same run (a second stage): its
        results end as this run's do."""
        other = ResultWriter(self._spool, self.run_uid, pipeline)
        other.final_status = self.final_status
        return other

    def final(self) -> dict[str, Any]:
        """The metadata that ends a stage: status and, when not complete, what is missing."""
        return dict(self.final_status)

    def container(self, metadata: dict[str, Any], sub: list[str] | None = None) -> None:
        self._spool.put(Container((*self.path, *(sub or [])), metadata))

    def metadata(self, metadata: dict[str, Any]) -> None:
        self._spool.put(Metadata(self.path, metadata))

    def array(
        self,
        key: str,
        array: np.ndarray,
        *,
        dims: list[str] | None = None,
        sub: list[str] | None = None,
        **md: Any,
    ) -> None:
        """Write (or replace) a whole array, optionally in a sub-container."""
        self._spool.put(
            ArrayWrite((*self.path, *(sub or [])), key, np.asarray(array), dims=dims, metadata=md)
        )

    def array_file(
        self,
        key: str,
        file: str,
        *,
        dims: list[str] | None = None,
        sub: list[str] | None = None,
        **md: Any,
    ) -> None:
        """Write (or replace) a whole array from the npy file ``file`` (an absolute path),
        which the spool takes over: the array is never unpacked in this process."""
        self._spool.put(ArrayFile((*self.path, *(sub or [])), key, file, dims=dims, metadata=md))

    def rows(
        self, key: str, rows: np.ndarray, *, axis: int = 0, dims: list[str] | None = None
    ) -> int:
        """Append ``rows`` along ``axis`` of a growing array; return the offset written at."""
        offset = self._rows.get(key, 0)
        rows = np.asarray(rows)
        self._spool.put(ArrayRows(self.path, key, rows, offset=offset, axis=axis, dims=dims))
        self._rows[key] = offset + rows.shape[axis]
        return offset

    def table_rows(
        self, key: str, columns: dict[str, list[Any]], *, by_seq_num: bool = False
    ) -> None:
        """Append rows (columns of equal length) to an appendable table.

        The table's rows read back in append order on every table storage
        (:mod:`services.tiled.tables`): a first column ``row_index`` (:data:`ROW_INDEX`) holds
        each row's place, from the row offset that keys the append (a retry or a replay after
        a restart writes the same indices). ``by_seq_num``: each row has a ``seq_num`` of its
        own, by which the table is ordered instead (no ``row_index``).
        """
        n = len(next(iter(columns.values())))
        offset = self._table_rows.get(key, 0)
        if by_seq_num:
            if "seq_num" not in columns:
                raise ValueError(f"{key}: by_seq_num needs a seq_num column, got {list(columns)}")
        else:
            if ROW_INDEX in columns:
                raise ValueError(f"{key}: {ROW_INDEX!r} is the writer's column, not the caller's")
            columns = {ROW_INDEX: list(range(offset, offset + n)), **columns}
        self._spool.put(TableRows(self.path, key, columns, offset=offset))
        self._table_rows[key] = offset + n


class PipelineRun(Protocol):
    """One pipeline's state for one run."""

    name: str
    version: str
    parameters: dict[str, Any]

    def on_frame(self, frame: Frame, out: ResultWriter) -> None: ...
    def on_stop(self, stop: Doc | None, out: ResultWriter) -> None: ...
