"""Every raw row and frame exactly once when Tiled answers 500 to writes it has committed.

A real Tiled server; the fault is injected in the client's HTTP layer *after* the server has
answered: the request was applied, the client sees HTTP 500 (or gives up waiting: a request
past the client's timeout) and the spool retries it. This is what Tiled + DuckDB do under
concurrent appends ("No active transaction" after the commit).
"""

from __future__ import annotations

import copy
import json
import threading

import httpx
import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_plans.plans import xanes_scan_plan
from services.core.metrics import Metrics
from services.runs.ingest import RawRunRouter
from services.runs.routing import RunDispatcher
from services.tiled.applier import is_transient
from tests.conftest import both_backends
from tests.services.faults import CommittedButFailed, started_spool
from tests.sim import N_ENERGIES, energies, small_txm


def _appends(request: httpx.Request) -> bool:
    path = request.url.path
    return request.method == "PATCH" and "/table/partition/" in path and "/primary/" in path


def _data_sources(request: httpx.Request) -> bool:
    path = request.url.path
    return request.method == "PUT" and "/data_source/" in path and "/primary/" in path


def _raw_spool(client, spool_dir, **options):
    """A started spool writing to ``client`` as the consumers do (short back-off), its
    metrics, and a raw dispatcher feeding it (``frames_dir`` goes to the router)."""
    frames_dir = options.pop("frames_dir", None)
    metrics = Metrics("raw")
    spool = started_spool(client, spool_dir, metrics, **options)
    dispatcher = RunDispatcher([lambda start: RawRunRouter(spool, frames_dir=frames_dir)], metrics)
    return spool, dispatcher, metrics


def _raw_run_through_faults(
    tiled_server, tmp_path, matches, times, source="stream", batched=False, timeout=False
):
    """A raw run written row by row (an idle consumer: the router's documents are spooled
    one by one and the spool merges nothing) or ``batched`` (the router holds a run's
    documents, the spool merges a backlog), with HTTP 500s (or timeouts) after commit."""
    client = tiled_server.client()
    fault = CommittedButFailed(matches, times, timeout=timeout)
    client.context.http_client.event_hooks["response"].append(fault)
    spool, dispatcher, metrics = _raw_spool(
        client, tmp_path / "spool", max_batch=256 if batched else 1
    )
    txm = small_txm(tiled_server.settings.detector_dir, source, seed=7)
    RE = RunEngine({})
    if batched:
        RE.subscribe(dispatcher)
    else:  # as the consumer does when nothing else is queued
        RE.subscribe(lambda name, doc: (dispatcher(name, doc), dispatcher.flush()))
    (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=1))
    assert spool.wait_empty(120)
    spool.stop()
    retries = metrics.registry.get_sample_value(
        "beamwatch_tiled_write_retries_total", {"service": "raw"}
    )
    client.context.close()
    return uid, txm, fault, retries


def _check_run_exactly_once(tiled_client, uid, txm):
    run = tiled_client["raw"][uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    table = run["primary"].base["internal"].read()
    assert sorted(table["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
    np.testing.assert_allclose(np.sort(table["energy"].to_numpy()), energies())
    flats = run["flat"].base["internal"].read()["seq_num"].tolist()
    assert sorted(flats) == list(range(1, len(flats) + 1))
    images = run["primary"]["txm_cam_image"]
    assert images.shape[0] == N_ENERGIES
    with __import__("h5py").File(txm.camera.path, "r", swmr=True) as fh:
        np.testing.assert_array_equal(images.read(), fh["/entry/data/data"][()])


@both_backends
def test_appends_answered_500_after_commit_are_not_doubled(tiled_server, tiled_client, tmp_path):
    uid, txm, fault, retries = _raw_run_through_faults(tiled_server, tmp_path, _appends, 3)
    assert len(fault.injected) == 3 and retries >= 3
    _check_run_exactly_once(tiled_client, uid, txm)


def test_stream_datums_answered_500_after_commit_keep_the_array_shape(
    tiled_server, tiled_client, tmp_path
):
    uid, txm, fault, retries = _raw_run_through_faults(tiled_server, tmp_path, _data_sources, 3)
    assert len(fault.injected) == 3 and retries >= 3
    _check_run_exactly_once(tiled_client, uid, txm)


@pytest.mark.parametrize("timeout", [False, True], ids=["http500", "timeout"])
def test_batched_rows_and_frames_failing_after_commit_are_not_doubled(
    tiled_server, tiled_client, tmp_path, timeout
):
    hit: set[str] = set()

    def first_append_and_first_frames(request: httpx.Request) -> bool:
        # a block of frames is written by PUT (a new array) or PATCH (rows at an offset)
        frames = request.method in ("PUT", "PATCH") and "/array/full/" in request.url.path
        kind = "rows" if _appends(request) else "frames" if frames else None
        if kind is None or kind in hit:
            return False
        hit.add(kind)
        return True

    uid, _txm, fault, _retries = _raw_run_through_faults(
        tiled_server,
        tmp_path,
        first_append_and_first_frames,
        2,
        source="event",
        batched=True,
        timeout=timeout,
    )
    assert len(fault.injected) == 2
    assert any("/table/" in f for f in fault.injected)
    assert any("/array/" in f for f in fault.injected)
    run = tiled_client["raw"][uid]
    table = run["primary"].base["internal"].read()
    assert sorted(table["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
    images = run["primary"]["txm_cam_image"].read()
    assert images.shape[0] == N_ENERGIES


def test_no_request_waits_past_the_timeout():
    """A server that accepts the connection and never answers: the client gives up after its
    timeout (a transient error: the spool retries), instead of waiting for minutes."""
    import socket
    import time

    from services.tiled.applier import connect

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(httpx.TimeoutException) as caught:
            connect(url, "key", timeout=0.5)
        waited = time.monotonic() - t0
    assert is_transient(caught.value)
    assert waited < 10  # two attempts of 0.5 s (the client's one retry); it was 120 s each


class FailingForRun:
    """Answers HTTP 500 to every request about one run while ``active`` (after the server has
    handled it, as ``CommittedButFailed``): that run's writes keep failing."""

    def __init__(self):
        self.uid = ""
        self.active = threading.Event()
        self.injected = 0

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        if not self.active.is_set() or not self.uid:
            return
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b""
        if self.uid in request.url.path or self.uid.encode() in body:
            self.injected += 1
            response.status_code = 500


def test_a_run_whose_writes_keep_failing_holds_back_only_itself(
    tiled_server, tiled_client, tmp_path
):
    from services.tiled.applier import connect
    from tests.conftest import wait_until

    client = connect(tiled_server.url, tiled_server.api_key)  # as the consumers connect
    fault = FailingForRun()
    fault.active.set()
    client.context.http_client.event_hooks["response"].append(fault)
    # failing, not refused for good: it must wait, not be dropped
    spool, dispatcher, metrics = _raw_spool(client, tmp_path / "spool", max_server_errors=100_000)
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: setattr(fault, "uid", fault.uid or doc["uid"]), "start")
    RE.subscribe(dispatcher)
    try:
        txm_a = small_txm(tiled_server.settings.detector_dir, "stream", seed=21)
        (uid_a,) = RE(xanes_scan_plan(txm_a, energies(), n_flats=1))
        assert fault.uid == uid_a
        txm_b = small_txm(tiled_server.settings.detector_dir, "stream", seed=22)
        (uid_b,) = RE(xanes_scan_plan(txm_b, energies(), n_flats=1))
        wait_until(lambda: spool.pending(uid_b) == 0, timeout=120, interval=0.1)
        _check_run_exactly_once(tiled_client, uid_b, txm_b)  # B landed whole while A failed
        assert spool.pending(uid_a) > 0 and fault.injected > 0
        assert uid_a not in tiled_client["raw"] or "stop" not in tiled_client["raw"][uid_a].metadata
        fault.active.clear()
        assert spool.wait_empty(120)
    finally:
        spool.stop(drain_timeout=0)
        client.context.close()
    _check_run_exactly_once(tiled_client, uid_a, txm_a)
    for uid in (uid_a, uid_b):  # rows in seq_num order, each once
        table = tiled_client["raw"][uid]["primary"].base["internal"].read()
        assert table["seq_num"].tolist() == list(range(1, N_ENERGIES + 1))


async def _read_body(receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _forward(upstream: str, scope, body: bytes) -> tuple[int, list, bytes]:
    """Send a request received by a test proxy on to the real server; its answer."""
    query = scope["query_string"].decode()
    # the Host header goes along: Tiled's answers link to the proxy, not around it
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    async with httpx.AsyncClient(base_url=upstream, timeout=60) as client:
        target = scope["path"] + (f"?{query}" if query else "")
        request = client.build_request(scope["method"], target, headers=headers, content=body)
        response = await client.send(request, stream=True)
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
    out = [
        (k, v)
        for k, v in response.headers.raw
        if k.lower() not in (b"content-length", b"transfer-encoding", b"connection")
    ]
    out.append((b"content-length", str(len(raw)).encode()))
    return response.status_code, out, raw


async def _respond(send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _ProxyServer:
    """A uvicorn server on a free loopback port, running an ASGI ``app`` in a thread."""

    def __init__(self, app) -> None:
        from tests.conftest import free_port

        self.url = f"http://127.0.0.1:{free_port()}"
        self._app = app
        self._server = None
        self._thread = None

    def start(self) -> None:
        import uvicorn

        from tests.conftest import wait_until

        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            interface="asgi3",
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_until(lambda: self._server.started, timeout=30, interval=0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)


class HangingProxy:
    """A reverse proxy in front of the real Tiled server that gives no answer to any request
    about one run (``uid`` in its path or body) until :meth:`release`: a server stuck on that
    run's writes. Held requests are then answered 503 without being forwarded (the server
    never saw them); later ones go through. Other requests are forwarded as they come."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._server = _ProxyServer(self.app)
        self.url = self._server.url
        self.uid = ""
        self.held = 0  # requests being held now
        self.first_held = threading.Event()
        self._released = threading.Event()

    async def app(self, scope, receive, send) -> None:
        import asyncio

        body = await _read_body(receive)
        path = scope["path"]
        if self.uid and (self.uid in path or self.uid.encode() in body):
            if not self._released.is_set():
                self.held += 1
                self.first_held.set()
                while not self._released.is_set():
                    await asyncio.sleep(0.05)
                self.held -= 1
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b"held by the test"})
                return
        await _respond(send, *await _forward(self.upstream, scope, body))

    def __enter__(self) -> HangingProxy:
        self._server.start()
        return self

    def release(self) -> None:
        self._released.set()

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.stop()


def test_a_hanging_request_holds_only_its_own_runs_lane(tiled_server, tiled_client, tmp_path):
    """Run A's first write hangs at the server (no answer, and the client's timeout is far
    off); run B is written whole meanwhile, by another of the spool's workers. With one
    worker B waited for A's timeout. Then A's writes go through, and both runs are in once."""
    from services.tiled.applier import connect
    from tests.conftest import wait_until

    with HangingProxy(tiled_server.url) as proxy:
        client = connect(proxy.url, tiled_server.api_key, timeout=300.0)
        spool, dispatcher, metrics = _raw_spool(client, tmp_path / "spool", workers=2)
        RE = RunEngine({})
        RE.subscribe(lambda name, doc: setattr(proxy, "uid", proxy.uid or doc["uid"]), "start")
        RE.subscribe(dispatcher)
        try:
            txm_a = small_txm(tiled_server.settings.detector_dir, "stream", seed=23)
            (uid_a,) = RE(xanes_scan_plan(txm_a, energies(), n_flats=1))
            assert proxy.uid == uid_a
            assert proxy.first_held.wait(20)
            txm_b = small_txm(tiled_server.settings.detector_dir, "stream", seed=24)
            (uid_b,) = RE(xanes_scan_plan(txm_b, energies(), n_flats=1))
            wait_until(lambda: spool.pending(uid_b) == 0, timeout=200, interval=0.1)
            # B is in while A's first request is still waiting for its answer
            assert proxy.held == 1
            _check_run_exactly_once(tiled_client, uid_b, txm_b)
            assert uid_a not in tiled_client["raw"]
            proxy.release()
            assert spool.wait_empty(120)
        finally:
            spool.stop(drain_timeout=0)
            client.context.close()
    _check_run_exactly_once(tiled_client, uid_a, txm_a)
    for uid in (uid_a, uid_b):
        table = tiled_client["raw"][uid]["primary"].base["internal"].read()
        assert table["seq_num"].tolist() == list(range(1, N_ENERGIES + 1))


def _frames_node_created(request: httpx.Request) -> bool:
    # the array node of the frames, registered as external data (the request's body names it)
    return (
        request.method == "POST"
        and request.url.path.endswith("/primary")
        and (b"application/x-zarr" in request.content)
    )


@pytest.mark.parametrize("timeout", [False, True], ids=["http500", "timeout"])
def test_frames_in_files_failing_after_commit_and_replayed_are_exactly_once(
    tiled_server, tiled_client, tmp_path, timeout
):
    """Frames of Events written to the consumer's own files (``frames_dir``) and registered
    in Tiled as external data: the node's creation and the first growths answered 500 (or
    timed out) after the server applied them, then the consumer "crashes" half-way and a fresh
    router, spool and applier replay the run's journal and go on. Every frame once, the
    advertised shape always within what is on disk, the data equal to what was published."""
    frames_dir = tiled_server.settings.detector_dir / "raw_frames"  # Tiled reads it
    documents: list[tuple[str, dict]] = []
    txm = small_txm(tiled_server.settings.detector_dir, "event", seed=3)
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: documents.append((name, copy.deepcopy(doc))))
    (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=1))
    primary = next(d["uid"] for n, d in documents if n == "descriptor" and d["name"] == "primary")
    published = np.stack(
        [
            np.asarray(d["data"]["txm_cam_image"])
            for n, d in documents
            if n == "event" and d["descriptor"] == primary
        ]
    )
    advertised: list[tuple[int, int]] = []  # (frames advertised, frames on disk then)

    def watch(response: httpx.Response) -> None:
        request = response.request
        if request.method == "PUT" and "/data_source/raw/" in request.url.path:
            shape = json.loads(request.content)["data_source"]["structure"]["shape"]
            run, stream, key = request.url.path.split("/data_source/raw/")[1].split("/")
            array_dir = frames_dir / run / stream / f"{key}.zarr"
            advertised.append((shape[0], len(list(array_dir.glob("*.0.0")))))

    def process(docs: list[tuple[str, dict]], spool_dir, faults) -> None:
        client = tiled_server.client()
        client.context.http_client.event_hooks["response"] += [faults, watch]
        spool, dispatcher, _ = _raw_spool(client, spool_dir, frames_dir=frames_dir)
        for name, doc in docs:
            dispatcher(name, doc)
            dispatcher.flush()  # the consumer idle: every Event's frame advertised alone
            assert spool.wait_empty(120)  # and Tiled keeping up (no merged growths)
        spool.stop()
        client.context.close()

    hit: list[str] = []

    def creation_and_first_growths(request: httpx.Request) -> bool:
        path = request.url.path
        if request.method == "POST" and b"application/x-zarr" in request.content:
            hit.append("node")
            return True
        if request.method == "PUT" and "/data_source/" in path and "txm_cam_image" in path:
            hit.append("grow")
            return hit.count("grow") <= 2
        return False

    first = CommittedButFailed(creation_and_first_growths, 3, timeout=timeout)
    half = next(i for i, (n, d) in enumerate(documents) if n == "event" and d["seq_num"] == 5)
    process(documents[:half], tmp_path / "spool1", first)
    assert len(first.injected) == 3
    # the restarted consumer replays the journal (documents[:half]) and goes on
    process(documents, tmp_path / "spool2", CommittedButFailed(lambda r: False, 0))
    run = tiled_client["raw"][uid]
    images = run["primary"]["txm_cam_image"]
    assert images.shape == published.shape
    np.testing.assert_array_equal(images.read(), published)
    table = run["primary"].base["internal"].read()
    assert sorted(table["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
    node = tiled_client.include_data_sources()["raw"][uid]["primary"]["txm_cam_image"]
    (data_source,) = node.data_sources()
    assert data_source.mimetype == "application/x-zarr"
    assert len(data_source.assets) == 1  # one array on disk, however often it was replayed
    assert advertised and all(shown <= on_disk for shown, on_disk in advertised)
    assert max(shown for shown, _ in advertised) == N_ENERGIES


class LateCommitProxy:
    """A reverse proxy in front of the real Tiled server that holds the first write of one
    run matching ``matches`` past the client's timeout and only then forwards it: the server
    applies it after the client gave up waiting (a request queued behind a locked database).

    The held write is released by the next request about the same run, which is forwarded
    and answered *first* (a retry's re-read then sees the table without the held rows, and
    they commit right after it), or after ``hold`` seconds. ``log`` says what came when."""

    def __init__(self, upstream: str, matches, hold: float) -> None:
        import asyncio

        self.upstream = upstream
        self.matches = matches
        self.hold = hold
        self._server = _ProxyServer(self.app)
        self.url = self._server.url
        self.uid = ""
        self.log: list[str] = []
        self._holding = False
        self._held_once = False
        self._release = asyncio.Event()

    async def app(self, scope, receive, send) -> None:
        import asyncio

        body = await _read_body(receive)
        method, path = scope["method"], scope["path"]
        about_run = bool(self.uid) and (self.uid in path or self.uid.encode() in body)
        if about_run and not self._held_once and self.matches(method, path):
            self._held_once = self._holding = True
            self.log.append(f"held {method} {path}")
            try:
                await asyncio.wait_for(self._release.wait(), self.hold)
            except TimeoutError:
                pass
            status, headers, raw = await _forward(self.upstream, scope, body)
            self._holding = False
            self.log.append(f"committed {method} {path}: {status}")
            await _respond(send, status, headers, raw)
            return
        answer = await _forward(self.upstream, scope, body)
        if about_run and self._holding:
            self.log.append(f"while held: {method} {path}")
            self._release.set()
        await _respond(send, *answer)

    def __enter__(self) -> LateCommitProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


def _append_of(table: str):
    return lambda method, path: (
        method == "PATCH" and "/table/partition/" in path and path.endswith(table)
    )


@both_backends
def test_a_raw_append_committed_after_the_clients_timeout_is_not_doubled(
    tiled_server, tiled_client, tmp_path
):
    """The first table append of a raw run reaches Tiled only after the client's timeout
    (2 s) has passed: the spool retries, and its re-read of the table must not come before the
    late append has ended, or the retry appends the rows a second time. Nothing else of the
    run is sent while the append is in flight; every row once."""
    from services.tiled.applier import connect

    with LateCommitProxy(tiled_server.url, _append_of("/primary/internal"), hold=8.0) as proxy:
        client = connect(proxy.url, tiled_server.api_key, timeout=2.0)
        spool, dispatcher, metrics = _raw_spool(client, tmp_path / "spool", max_batch=1)
        txm = small_txm(tiled_server.settings.detector_dir, "stream", seed=31)
        RE = RunEngine({})
        RE.subscribe(lambda name, doc: setattr(proxy, "uid", proxy.uid or doc["uid"]), "start")
        RE.subscribe(lambda name, doc: (dispatcher(name, doc), dispatcher.flush()))
        try:
            (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=1))
            assert spool.wait_empty(120)
        finally:
            spool.stop(drain_timeout=0)
            client.context.close()
    retries = metrics.registry.get_sample_value(
        "beamwatch_tiled_write_retries_total", {"service": "raw"}
    )
    table = tiled_client["raw"][uid]["primary"].base["internal"].read()
    assert table["seq_num"].tolist() == list(range(1, N_ENERGIES + 1)), proxy.log
    _check_run_exactly_once(tiled_client, uid, txm)
    assert retries >= 1  # the client did give up waiting
    # and sent nothing more of the run until the late append had ended
    assert proxy.log[0].startswith("held PATCH") and proxy.log[1].startswith("committed")


def test_an_analysis_append_committed_after_the_clients_timeout_is_not_doubled(
    tiled_server, tiled_client, tmp_path
):
    """The same for a table of analysis results (rows at offsets): the late append must not
    double its rows, nor make the next rows look written (a length counted with a late
    duplicate in it made the applier skip the rows after it)."""
    import uuid

    from services.tiled.applier import connect
    from services.tiled.records import Container, TableRows

    uid = str(uuid.uuid4())
    path = ("analysis", uid, "xanes")
    blocks = [list(range(0, 3)), list(range(3, 5)), list(range(5, 9))]
    with LateCommitProxy(tiled_server.url, _append_of("/xanes/frames"), hold=8.0) as proxy:
        proxy.uid = uid
        client = connect(proxy.url, tiled_server.api_key, timeout=2.0)
        spool = started_spool(client, tmp_path / "spool", Metrics("analysis"), max_batch=1)
        try:
            spool.put(Container(path, {"status": "running"}))
            for block in blocks:
                rows = {"seq_num": block, "energy": [8300.0 + i for i in block]}
                spool.put(TableRows(path, "frames", rows, offset=block[0]))
            assert spool.wait_empty(120)
        finally:
            spool.stop(drain_timeout=0)
            client.context.close()
    table = tiled_client["analysis"][uid]["xanes"]["frames"].read()
    assert table["seq_num"].tolist() == list(range(9))
    held = next(i for i, line in enumerate(proxy.log) if line.startswith("held PATCH"))
    assert proxy.log[held + 1].startswith("committed")
