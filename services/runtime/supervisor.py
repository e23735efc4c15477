"""``beamwatch up``: start Tiled, the 0MQ proxy and the consumers as child processes.

A child that dies is reported and restarted (after 1 s, a delay that doubles while it keeps
dying within a minute of its start, up to 30 s); SIGINT/SIGTERM stop every child (SIGTERM,
then SIGKILL after a grace period), so no process outlives the supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.bus.nats_server import nats_command
from services.core.settings import BeamwatchSettings
from services.tiled.server import tiled_command

logger = logging.getLogger(__name__)


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    log_file: Path | None = None


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = 0.0
    #: deaths in a row, each after less than ``stable_after`` seconds up: the restart delay
    #: grows with them, and a child that ran long enough starts again at once
    quick_deaths: int = 0


def child_specs(settings: BeamwatchSettings, config_file: Path | None) -> list[ChildSpec]:
    """What ``up`` runs: the embedded Tiled server (unless an external URL is set), the proxy,
    with ``bus.mode: nats`` the embedded JetStream server (unless ``bus.nats_url`` is set) and
    ``nats.bridges`` bridges, the two consumer roles and the live page."""
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    specs: list[ChildSpec] = []
    if not settings.tiled.url:
        argv, env = tiled_command(settings)
        specs.append(ChildSpec("tiled", argv, env, logs / "tiled.log"))
    bindir = Path(sys.executable).parent
    specs.append(
        ChildSpec(
            "proxy",
            [
                str(bindir / "bluesky-0MQ-proxy"),
                "--in-address",
                settings.bus.in_address,
                "--out-address",
                settings.bus.out_address,
            ],
            log_file=logs / "proxy.log",
        )
    )
    base = [sys.executable, "-m", "services.cli"]
    if config_file is not None:
        base += ["--config", str(config_file)]
    base += ["--data-dir", str(settings.data_dir)]
    if settings.bus.mode == "nats":
        if not settings.bus.nats_url:
            specs.append(ChildSpec("nats", nats_command(settings), log_file=logs / "nats.log"))
        bridges = settings.nats.bridges if settings.nats.source == "zmq" else 1
        for n in range(1, bridges + 1):
            name = "bridge" if n == 1 else f"bridge-{n}"
            argv = [*base, "bridge"] + (["--instance", str(n)] if n > 1 else [])
            specs.append(ChildSpec(name, argv, log_file=logs / f"{name}.log"))
    for role in ("raw", "analysis"):
        specs.append(ChildSpec(f"consumer-{role}", [*base, "consume", role]))
    specs.append(ChildSpec("web", [*base, "web"], log_file=logs / "web.log"))
    return specs


def wait_for_tiled(url: str, timeout: float = 90.0) -> None:
    """Block until the Tiled server answers; raise TimeoutError otherwise. Logs every 30 s
    while it waits, so a slow start on a loaded machine is visible."""
    start = time.monotonic()
    deadline = start + timeout
    next_note = start + 30.0
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        if time.monotonic() >= next_note:
            logger.info(
                "still waiting for Tiled at %s (%.0f s of %.0f s)",
                url,
                time.monotonic() - start,
                timeout,
            )
            next_note += 30.0
        time.sleep(0.2)
    raise TimeoutError(f"Tiled at {url} did not answer within {timeout:.0f} s ({last})")


class SupervisorMetrics:
    """``beamwatch_child_up{child}`` and ``beamwatch_child_restarts_total{child}``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.up = Gauge(
            "beamwatch_child_up", "1 while the child runs.", ["child"], registry=self.registry
        )
        self.restarts = Counter(
            "beamwatch_child_restarts",
            "Children restarted after dying.",
            ["child"],
            registry=self.registry,
        )

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics for the supervisor on http://%s:%d/metrics", host, port)


class Supervisor:
    """Starts children, restarts the ones that die, stops them all on request."""

    def __init__(
        self, specs: list[ChildSpec], *, grace: float = 10.0, stable_after: float = 60.0
    ) -> None:
        self._children = [_Child(s) for s in specs]
        self._grace = grace
        self._stable_after = stable_after
        self._stopping = threading.Event()
        self.metrics = SupervisorMetrics()

    @property
    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.proc.pid for c in self._children if c.proc is not None}

    def start(self, names: list[str] | None = None) -> None:
        for child in self._children:
            if names is None or child.spec.name in names:
                self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        out = open(spec.log_file, "ab") if spec.log_file else None  # noqa: SIM115
        if spec.log_file is not None:
            os.chmod(spec.log_file, 0o600)  # the Tiled banner contains the API key
        child.proc = subprocess.Popen(
            spec.argv,
            env=spec.env,
            stdout=out if out else None,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
        )
        if out:
            out.close()
        child.started = time.monotonic()
        self.metrics.up.labels(spec.name).set(1)
        logger.info("started %s (pid %d)", spec.name, child.proc.pid)

    def check(self) -> None:
        """Report and restart children that exited."""
        now = time.monotonic()
        for child in self._children:
            proc = child.proc
            if proc is None or proc.poll() is None or self._stopping.is_set():
                continue
            if child.next_start == 0.0:
                self.metrics.up.labels(child.spec.name).set(0)
                if now - child.started >= self._stable_after:
                    child.quick_deaths = 0  # it ran well: no penalty for earlier crashes
                delay = self.restart_delay(child.quick_deaths)
                child.quick_deaths += 1
                logger.error(
                    "%s (pid %d) exited with code %s; restarting in %.0f s",
                    child.spec.name,
                    proc.pid,
                    proc.returncode,
                    delay,
                )
                child.next_start = now + delay
            elif now >= child.next_start:
                child.restarts += 1
                self.metrics.restarts.labels(child.spec.name).inc()
                child.next_start = 0.0
                self._spawn(child)

    @staticmethod
    def restart_delay(quick_deaths: int) -> float:
        """Seconds before a restart after ``quick_deaths`` short-lived runs in a row."""
        return min(2.0**quick_deaths, 30.0)

    def run(self, poll: float = 0.5) -> None:
        while not self._stopping.wait(poll):
            self.check()

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        """Stop children in reverse start order (consumers, proxy, then Tiled, so consumers can
        flush), killing any that ignore SIGTERM for longer than the grace period."""
        self._stopping.set()
        for child in reversed(self._children):
            proc = child.proc
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(self._grace)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s did not stop in %.0f s; killing it", child.spec.name, self._grace
                )
                proc.kill()
                proc.wait()
        logger.info("all children stopped")


def install_signal_handlers(callback: object) -> None:
    def handler(signum: int, _frame: object) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        callback()  # type: ignore[operator]

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def banner(settings: BeamwatchSettings) -> list[str]:
    m = settings.metrics
    return [
        f"Live page:      {settings.web_url}/",
        f"Tiled:          {settings.tiled_url}/ui/",
        f"API key file:   {settings.data_dir / 'tiled_api_key'}",
        f"Bluesky bus:    publish to {settings.bus.in_address} (msgpack, see README)",
        f"Drift feedback: {settings.bus.feedback_address}",
        *(
            [f"JetStream:      {settings.nats_url} stream {settings.nats.stream}"]
            if settings.bus.mode == "nats"
            else []
        ),
        f"Metrics:        http://{m.host}:{m.raw_port}/metrics (raw), "
        f"http://{m.host}:{m.analysis_port}/metrics (analysis), "
        f"http://{m.host}:{m.supervisor_port}/metrics (children)",
    ]
