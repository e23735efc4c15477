"""After-scan stages in a child process, so that live frames keep the consumer to themselves.

A tomogram's after-scan stage (reconstruction, crack map, quantification, particles, figures)
run on a thread of the analysis consumer shared its GIL and both cores with the live frames of
the next scan: XANES p95 207 to 602 ms per frame instead of 18 ms (issue 14, point 7). Here
it runs in a process of its own, started with ``spawn`` (no copy of the consumer's threads,
locks or sockets), one per stage, with its numeric threads limited (``threads``) so that a
core stays for the live frames.

The hand-over is by file, in a stage directory under ``work_dir`` (inside the data dir):

- inputs: npy files the parent writes (``stage_dir``) and a small dict of parameters;
- results: every write of the stage (the :class:`~services.analysis.results.ResultWriter` calls
  of the pipeline) is sent to the parent over a local pipe as a small message, in order, and
  the parent puts it in its spool; an array of :data:`INLINE_ARRAY_BYTES` or more travels as an
  npy file the child saved, which the spool takes over (moved, never unpacked in the parent).

What is sent over the pipe is pickled, between this process and its own child only (never
anything from the network). The child's Python errors come back as a message and fail the
stage with them; a child that dies (SIGKILL, out of memory) fails the stages of the run it had
not finished, with the exit signal in the error. It is not retried: a stage that ran out of
memory would run out again, and its run's journal lets an operator replay it. A child that
runs past its time limit (``after_scan_timeout``: a base plus a time per million voxels, as
its volume is large), or that sends nothing for ``after_scan_timeout.idle_s`` when that is set,
is taken for hung: killed, its stages failed with :class:`StageTimeout` (which run, how long,
which limit) and counted in ``beamwatch_after_scan_timeouts_total``. While the
consumer stops, :meth:`ChildStages.close` kills the children and their stages end with
:class:`~services.analysis.results.RecoveryInterrupted`: the run is left open and the next
process replays it. A child also dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and a
watchdog thread that sees the parent gone), so a consumer killed by SIGKILL leaves no orphan.
The stage directory is removed when the stage ends, and stale ones at start.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.analysis.results import RecoveryInterrupted, ResultWriter
from services.core.layout import Status
from services.core.metrics import Metrics
from services.core.settings import AfterScanTimeout

logger = logging.getLogger(__name__)

#: An array this large or larger goes from the child to the spool as an npy file.
INLINE_ARRAY_BYTES = 1 << 20
#: The writer methods a child may call (anything else in a message is refused).
WRITER_METHODS = frozenset({"container", "metadata", "array", "rows", "table_rows"})
#: Statuses that end a stage.
FINAL_STATUSES = frozenset({Status.COMPLETE, Status.INCOMPLETE, Status.FAILED})
#: Environment variables that size the thread pools of numeric libraries at their load.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def default_threads() -> int:
    """Numeric threads of a stage's child: every core but one (which the live frames keep)."""
    return max(1, (os.cpu_count() or 2) - 1)


class StageChildDied(RuntimeError):
    """The child process of an after-scan stage ended without finishing it."""


class StageChildError(RuntimeError):
    """The after-scan stage raised in its child process (the message names the error)."""


class StageTimeout(RuntimeError):
    """The after-scan stage ran past its time limit, or its child sent nothing for
    ``after_scan_timeout.idle_s``: the child was killed (the message says which run, how
    long and which limit)."""


@dataclass(frozen=True)
class FileArray:
    """An array the child saved as an npy file (its name in the stage directory)."""

    name: str


class ChildStages:
    """Runs after-scan stages in spawned child processes, one per stage."""

    def __init__(
        self,
        work_dir: Path,
        *,
        threads: int | None = None,
        log_level: str | int = "INFO",
        timeout: AfterScanTimeout | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.work_dir = Path(work_dir)
        self.threads = threads or default_threads()
        #: when a stage's child is deemed hung (read as each stage starts)
        self.timeout = timeout or AfterScanTimeout()
        self._metrics = metrics
        self._log_level = log_level
        self._lock = threading.Lock()
        self._children: set[Any] = set()
        self._closed = False
        if self.work_dir.is_dir():
            for stale in self.work_dir.iterdir():  # left by a consumer that was killed
                logger.info("removing stale after-scan stage directory %s", stale)
                shutil.rmtree(stale, ignore_errors=True)

    @contextlib.contextmanager
    def stage_dir(self, run_uid: str) -> Iterator[Path]:
        """A directory for one stage's files, removed when the stage ends."""
        path = self.work_dir / f"{run_uid}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Kill the running children (the consumer stops); no stage starts after this."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            logger.warning("stopping: killing after-scan stage child pid %s", child.pid)
            child.kill()
        for child in children:
            child.join(10)

    def running(self) -> int:
        """Children running now."""
        with self._lock:
            return len(self._children)

    def run(
        self,
        target: str,
        *,
        stage_dir: Path,
        params: dict[str, Any],
        out: ResultWriter,
        voxels: int | None = None,
    ) -> None:
        """Run ``target`` (``"module:function"``, called as ``function(stage_dir, params,
        writer)``) in a child process; its writes go to ``out`` (and its siblings) in order.

        ``voxels`` (the volume's size) scales the stage's time limit (:attr:`timeout`).

        Raises
        ------
        StageChildError
            The stage raised in the child.
        StageChildDied
            The child died before the stage of ``out`` was final (the stages it had
            announced and not finished are marked failed first).
        StageTimeout
            The stage ran past its time limit or its child sent nothing for ``idle_s``: the
            child was killed, the other stages it had announced are marked failed first.
        RecoveryInterrupted
            :meth:`close` was called (the consumer stops) before the stage ended.
        """
        timeout = self.timeout
        limit = timeout.limit(voxels)
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        child = context.Process(
            target=_child_main,
            args=(
                target,
                str(stage_dir),
                params,
                send,
                self.threads,
                self._log_level,
                (out.run_uid, out.pipeline, out.final_status),
                os.getpid(),
            ),
            name=f"after-scan-{out.run_uid[:8]}",
        )
        with self._lock:
            if self._closed:
                raise RecoveryInterrupted(out.run_uid)
            child.start()
            self._children.add(child)
        started = time.monotonic()
        send.close()  # the child holds the only sending end: its death ends the pipe
        relay = _Relay(out, stage_dir)
        outcome: tuple[Any, ...] | None = None
        try:
            outcome = _relay_messages(
                receive, child, relay, deadline=started + limit, idle=timeout.idle_s
            )
        finally:
            receive.close()
            if outcome is not None and outcome[0] == "timeout":
                child.kill()
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join(10)
            with self._lock:
                self._children.discard(child)
                closed = self._closed
        if outcome is not None and outcome[0] == "done":
            return
        if outcome is not None and outcome[0] == "timeout":
            kind = str(outcome[1])
            ran = time.monotonic() - started
            if kind == "idle":
                why = (
                    f"sent no write for {timeout.idle_s:g} s "
                    f"(after_scan_timeout.idle_s), {ran:.1f} s after its child started"
                )
            else:
                mvoxels = (voxels or 0) / 1e6
                why = (
                    f"ran {ran:.1f} s, past its time limit of {limit:.1f} s (after_scan_timeout: "
                    f"{timeout.base_s:g} s + {timeout.per_mvoxel_s:g} s per million voxels x "
                    f"{mvoxels:.2f} Mvoxels)"
                )
            error = (
                f"the after-scan stage {out.pipeline!r} of run {out.run_uid} {why}; its child "
                f"process (pid {child.pid}) was killed"
            )
            logger.error("%s", error, extra={"run_uid": out.run_uid})
            if self._metrics is not None:
                self._metrics.after_scan_timeouts.labels(self._metrics.service, kind).inc()
            relay.fail_unfinished(f"{StageTimeout.__name__}: {error}")
            raise StageTimeout(error)
        if outcome is not None and outcome[0] == "error":
            relay.fail_unfinished(f"{StageChildError.__name__}: {outcome[1]}")
            raise StageChildError(outcome[1])
        if closed:
            raise RecoveryInterrupted(out.run_uid)
        error = _death(child)
        logger.error("%s", error, extra={"run_uid": out.run_uid})
        relay.fail_unfinished(f"{StageChildDied.__name__}: {error}")
        if not relay.finished(out.pipeline):
            raise StageChildDied(error)


def _relay_messages(
    receive: Any, child: Any, relay: _Relay, *, deadline: float, idle: float | None
) -> tuple[Any, ...] | None:
    """Apply the child's writes until it says it is done or failed, or until it is gone;
    ``("timeout", "total" | "idle")`` past ``deadline`` (monotonic), or after ``idle`` seconds
    without a message once the stage has started (the child's start-up, spawn and imports,
    took over 3 s at a load of 11: only the deadline bounds it)."""
    last: float | None = None  # the child's last message, from its "started" on
    while True:
        now = time.monotonic()
        if now > deadline:
            return ("timeout", "total")
        if idle is not None and last is not None and now - last > idle:
            return ("timeout", "idle")
        if not receive.poll(0.5):
            if child.is_alive():
                continue
            if not receive.poll(0):  # gone, and nothing left in the pipe
                return None
        try:
            message = receive.recv()
        except (EOFError, OSError):
            return None
        last = time.monotonic()
        if message[0] == "write":
            relay.apply(*message[1:])
        elif message[0] != "started":
            return tuple(message)


def _death(child: Any) -> str:
    code = child.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
        if -code == signal.SIGKILL:
            how += " (out of memory, or killed)"
    else:
        how = f"exited with code {code}"
    return f"the after-scan stage's child process (pid {child.pid}) {how} before the stage ended"


class _Relay:
    """The parent's side: the child's writes applied to the run's result writers."""

    def __init__(self, out: ResultWriter, stage_dir: Path) -> None:
        self._root = out
        self._stage_dir = stage_dir
        self._writers: dict[str, ResultWriter] = {out.pipeline: out}
        self._final: set[str] = set()

    def writer(self, pipeline: str) -> ResultWriter:
        writer = self._writers.get(pipeline)
        if writer is None:
            writer = self._writers[pipeline] = self._root.sibling(pipeline)
        return writer

    def apply(self, pipeline: str, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        if method not in WRITER_METHODS:
            raise ValueError(f"an after-scan child asked for writer method {method!r}")
        writer = self.writer(str(pipeline))
        if method == "array" and isinstance(args[1], FileArray):
            path = (self._stage_dir / Path(args[1].name).name).resolve()
            writer.array_file(args[0], str(path), **kw)
            return
        if method in ("metadata", "container") and args[0].get("status") in FINAL_STATUSES:
            self._final.add(writer.pipeline)
        getattr(writer, method)(*args, **kw)

    def finished(self, pipeline: str) -> bool:
        return pipeline in self._final

    def fail_unfinished(self, error: str) -> None:
        """Every other stage the child had announced but not ended is ``failed`` with
        ``error`` (the root writer's stage is failed by the router, from the exception)."""
        for name, writer in self._writers.items():
            if name not in self._final and name != self._root.pipeline:
                writer.metadata({"status": Status.FAILED, "error": error})


# ---- the child's side --------------------------------------------------------------------------
class ChildWriter:
    """The :class:`ResultWriter` of a stage in its child: every write is a message to the
    parent (large arrays as npy files in the stage directory)."""

    def __init__(
        self,
        send: Callable[[tuple[Any, ...]], None],
        stage_dir: Path,
        run_uid: str,
        pipeline: str,
        final_status: dict[str, Any],
    ) -> None:
        self._send = send
        self._stage_dir = stage_dir
        self.run_uid = run_uid
        self.pipeline = pipeline
        self.final_status = final_status
        self._rows: dict[str, int] = {}
        self._siblings: dict[str, ChildWriter] = {}

    def sibling(self, pipeline: str) -> ChildWriter:
        other = self._siblings.get(pipeline)
        if other is None:
            other = ChildWriter(
                self._send, self._stage_dir, self.run_uid, pipeline, self.final_status
            )
            other._siblings = self._siblings
            self._siblings[pipeline] = other
        return other

    def final(self) -> dict[str, Any]:
        return dict(self.final_status)

    def _write(self, method: str, *args: Any, **kw: Any) -> None:
        self._send(("write", self.pipeline, method, args, kw))

    def container(self, metadata: dict[str, Any], sub: list[str] | None = None) -> None:
        self._write("container", metadata, sub)

    def metadata(self, metadata: dict[str, Any]) -> None:
        self._write("metadata", metadata)

    def array(
        self,
        key: str,
        array: np.ndarray,
        *,
        dims: list[str] | None = None,
        sub: list[str] | None = None,
        **md: Any,
    ) -> None:
        array = np.asarray(array)
        value: np.ndarray | FileArray = array
        if array.nbytes >= INLINE_ARRAY_BYTES and not array.dtype.hasobject:
            name = f"out-{uuid.uuid4().hex}.npy"
            np.save(self._stage_dir / name, np.ascontiguousarray(array), allow_pickle=False)
            value = FileArray(name)
        self._write("array", key, value, dims=dims, sub=sub, **md)

    def rows(
        self, key: str, rows: np.ndarray, *, axis: int = 0, dims: list[str] | None = None
    ) -> int:
        rows = np.asarray(rows)
        offset = self._rows.get(key, 0)
        self._write("rows", key, rows, axis=axis, dims=dims)
        self._rows[key] = offset + rows.shape[axis]
        return offset

    def table_rows(
        self, key: str, columns: dict[str, list[Any]], *, by_seq_num: bool = False
    ) -> None:
        # the parent's writer numbers the rows (row_index), as it keys the appends
        self._write("table_rows", key, columns, by_seq_num=by_seq_num)


def _child_main(
    target: str,
    stage_dir: str,
    params: dict[str, Any],
    send: Any,
    threads: int,
    log_level: str | int,
    writer_of: tuple[str, str, dict[str, Any]],
    parent_pid: int,
) -> None:
    """The child process: limit threads, watch the parent, run ``target``, report."""
    _die_with_parent(parent_pid)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    from services.core.logs import configure_logging

    configure_logging(log_level, service="after-scan")
    _limit_threads(threads)
    run_uid, pipeline, final_status = writer_of
    writer = ChildWriter(send.send, Path(stage_dir), run_uid, pipeline, final_status)
    try:
        module, _, function = target.partition(":")
        stage = getattr(importlib.import_module(module), function)
        send.send(("started",))  # the parent's no-progress clock starts here
        stage(Path(stage_dir), params, writer)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the stage
        logger.error("after-scan stage failed: %s", exc, exc_info=True, extra={"run_uid": run_uid})
        lines = traceback.format_exception(exc)[-5:]
        send.send(("error", f"{type(exc).__name__}: {exc}", lines))
    else:
        send.send(("done",))
    finally:
        send.close()


def _limit_threads(threads: int) -> None:
    """Numeric threads of the libraries already loaded (the variables size later ones)."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only before any parallel work ran
        torch.set_num_interop_threads(threads)


def _die_with_parent(parent_pid: int) -> None:
    """End this process when its parent ends, even by SIGKILL (no orphan stage runs on)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
