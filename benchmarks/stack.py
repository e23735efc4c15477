"""What ``beamwatch up`` starts, on ephemeral ports in a scratch data dir, for the benchmarks.

The children are the real ones (``tiled serve config``, ``bluesky-0MQ-proxy``,
``beamwatch consume raw|analysis``), started and restarted by the real
:class:`~services.runtime.supervisor.Supervisor`. Ports are free ones, so a benchmark runs
beside a ``beamwatch up`` or a test session on the same machine. The children's logs go to
``DIR/logs/``. ``workers=N`` (JetStream bus) adds N ``beamwatch worker --bus nats://...``
processes under the same supervisor, as a second analysis node would run them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.ports import free_port
from services.bus.subscriber import PING_NAME, wait_until_delivered
from services.core import serialization
from services.core.settings import BeamwatchSettings, load_settings
from services.runtime.supervisor import ChildSpec, Supervisor, child_specs, wait_for_tiled

PING = PING_NAME.decode()
#: child names of ``beamwatch up`` (see ``services.runtime.supervisor.child_specs``)
ALL_CHILDREN = ("tiled", "proxy", "consumer-raw", "consumer-analysis", "web")
#: What ``up`` adds on the JetStream bus (``nats.bridges`` 2, the default).
NATS_CHILDREN = ("nats", "bridge", "bridge-2")


def write_config(data_dir: Path, **extra: Any) -> Path:
    """A settings YAML with every port free; ``extra`` is merged in at the top level."""
    config: dict[str, Any] = {
        "tiled": {"port": free_port()},
        "bus": {
            "in_address": f"tcp://127.0.0.1:{free_port()}",
            "out_address": f"tcp://127.0.0.1:{free_port()}",
            "feedback_address": f"tcp://127.0.0.1:{free_port()}",
        },
        "metrics": {
            "raw_port": free_port(),
            "analysis_port": free_port(),
            "supervisor_port": free_port(),
        },
        "web": {"port": free_port()},
        # bus.mode nats: the embedded server and the bridge's metrics on free ports too
        "nats": {"port": free_port(), "bridge_metrics_port": free_port()},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "beamwatch.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def worker_specs(
    settings: BeamwatchSettings, config_file: Path, n: int, role: str = "analysis"
) -> list[ChildSpec]:
    """``n`` processes of ``beamwatch worker --bus <nats url> --role <role>``, named
    ``worker-1`` ... ``worker-n``, each as on a machine of its own: its own data dir (spool,
    journals: ``DATA/worker-i``) and drift-feedback port, the Tiled URL and API key from the
    environment (as ``secrets.env`` gives them on an analysis node), its log in
    ``DATA/logs/worker-i.log``."""
    env = dict(
        os.environ,
        BEAMWATCH_TILED__URL=settings.tiled_url,
        BEAMWATCH_TILED__API_KEY=settings.resolved_api_key(),
    )
    specs = []
    for i in range(1, n + 1):
        name = f"worker-{i}"
        argv = [
            sys.executable,
            "-m",
            "services.cli",
            "--config",
            str(config_file),
            "--data-dir",
            str(settings.data_dir / name),
            "worker",
            "--bus",
            settings.nats_url,
            "--role",
            role,
        ]
        own_env = dict(env, BEAMWATCH_BUS__FEEDBACK_ADDRESS=f"tcp://127.0.0.1:{free_port()}")
        specs.append(ChildSpec(name, argv, own_env, settings.data_dir / "logs" / f"{name}.log"))
    return specs


@dataclass
class Stack:
    settings: BeamwatchSettings
    config_file: Path
    supervisor: Supervisor
    roles: tuple[str, ...]
    #: one connection for every metrics read: a new ``httpx.get`` per read made a TLS context
    #: each time (about 30 ms of CPU on a loaded machine), and the publisher of
    #: ``benchmarks.ingest_rates``, which reads the consumer's count every 100 events to keep
    #: pace, spent most of its time there (py-spy, 2026-11-30): the benchmark, not the
    #: consumer, bounded case c
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=2))

    def metrics_url(self, role: str) -> str:
        """Metrics of a consumer role (``raw``, ``analysis``) or of the ``bridge``."""
        m = self.settings.metrics
        ports = {
            "raw": m.raw_port,
            "analysis": m.analysis_port,
            "bridge": self.settings.nats.bridge_metrics_port,
            "bridge-2": self.settings.nats.bridge_metrics_port + 1,  # bridge --instance 2
        }
        port = ports[role]
        return f"http://{m.host}:{port}/metrics"

    def metric(self, role: str, name: str, **labels: str) -> float:
        """Sum of a consumer's samples ``name`` matching ``labels`` (NaN if it cannot answer)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.http.get(self.metrics_url(role)).text
        except httpx.HTTPError:
            return float("nan")
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def client(self) -> Any:
        from tiled.client import from_uri

        return from_uri(self.settings.tiled_url, api_key=self.settings.resolved_api_key())

    @contextlib.contextmanager
    def publisher(self, timeout: float = 60.0) -> Iterator[Any]:
        """bluesky's 0MQ ``Publisher`` (msgpack), once every consumer has heard a ping of
        this publisher (the counts of earlier publishers' pings do not say that this one's
        path through the proxy is live yet)."""
        from bluesky.callbacks.zmq import Publisher

        pub = Publisher(self.settings.bus.in_address, serializer=serialization.dumps)
        try:
            wait_until_delivered(
                lambda: pub(PING, {}),
                lambda: [
                    self.metric(role, "beamwatch_messages_received_total", document=PING)
                    for role in self.roles
                ],
                timeout,
            )
            yield pub
        finally:
            pub.close()


@contextlib.contextmanager
def running_stack(
    data_dir: Path, children: tuple[str, ...] = ALL_CHILDREN, workers: int = 0, **config: Any
) -> Iterator[Stack]:
    """Start ``children`` of ``beamwatch up``, and ``workers`` analysis workers of the
    JetStream bus (:func:`worker_specs`), under a supervisor that restarts them."""
    config_file = write_config(data_dir, **config)
    settings = load_settings(config_file, data_dir=str(data_dir))
    specs = [s for s in child_specs(settings, config_file) if s.name in children]
    if workers:
        if settings.bus.mode != "nats":
            raise ValueError(f"workers need bus.mode nats, not {settings.bus.mode!r}")
        specs += worker_specs(settings, config_file, workers)
    for spec in specs:
        if spec.log_file is None:
            spec.log_file = settings.data_dir / "logs" / f"{spec.name}.log"
    supervisor = Supervisor(specs)
    stop = threading.Event()
    roles = tuple(r for r in ("raw", "analysis") if f"consumer-{r}" in children)
    supervisor.start()

    def watch() -> None:
        while not stop.wait(0.2):
            supervisor.check()

    watcher = threading.Thread(target=watch, name="supervisor", daemon=True)
    watcher.start()
    stack: Stack | None = None
    try:
        if "tiled" in children:
            wait_for_tiled(settings.tiled_url, timeout=300)
        stack = Stack(settings, config_file, supervisor, roles)
        deadline = time.monotonic() + 300
        for role in roles:
            while _down(stack.metrics_url(role)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"consumer {role} did not serve metrics")
                time.sleep(0.2)
        yield stack
    finally:
        if stack is not None:
            stack.http.close()
        stop.set()
        watcher.join(timeout=5)
        supervisor.stop()


def _down(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code != 200
    except httpx.HTTPError:
        return True
