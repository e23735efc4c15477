"""Raw-path ingest rates at beamline speed: ``python -m benchmarks.ingest_rates``.

Starts what ``beamwatch up`` starts for the raw path, as real processes under the real
supervisor (the embedded Tiled server, the bluesky 0MQ proxy, ``beamwatch consume raw``, and
with ``--bus nats`` the embedded ``nats-server`` and the bridge) in a scratch data dir on free
ports, and publishes runs with bluesky's 0MQ ``Publisher`` (the msgpack
serializer of the README). Documents are made by ``event_model.compose_run``, as a RunEngine
makes them, so the publisher is faster than every goal and the consumer is what is measured.

Cases (issue 14, point 3), each printed beside its goal:

a. a scalar and a 64 x 64 frame inside every Event: events/s reaching ``raw/`` (>= 500/s);
b. 512 x 512 frames inside Events (>= 100/s);
c. frames as file references (``Resource``/``Datum`` into an HDF5 file; >= 2000/s);
d. a scalar and a 64 x 64 frame at 20 Hz for 600 events: seconds from the stop document to the
   last row and frame in ``raw/`` (<= 2 s).

Events/s is the number of events over the time from the run's first document on the bus to
the moment every row (table ``raw/<uid>/primary/internal``) and every frame (the image array's
first axis) is readable from Tiled. Each run is also checked: seq_nums 1..N exactly once,
frames equal to what was published. Sizes are options (``--quick`` for a smoke run).

``--bus`` (default ``both``): ``zmq``, the raw consumer subscribes to the proxy; ``nats``, the
bridge copies the proxy into the JetStream stream and the raw consumer reads the run from it
(the default ``bus.mode`` of ``beamwatch up``); ``both`` runs the cases on each, one stack
after the other, and prints JetStream's numbers beside 0MQ's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("benchmarks.ingest_rates")

IMAGE_KEY = "img"
#: events the publisher may be ahead of what the consumer has received
IN_FLIGHT = 400
DATASET = "/entry/data/data"


@dataclass
class CaseResult:
    case: str
    events: int
    frame_shape: tuple[int, ...]
    publish_seconds: float
    seconds: float  # first document to everything in raw/ (d: stop to everything in raw/)
    value: float  # events/s (a-c) or seconds after the stop (d)
    goal: str
    met: bool
    checks: list[str] = field(default_factory=list)
    bus: str = "zmq"


def frame_for(i: int, shape: tuple[int, ...]) -> np.ndarray:
    """The frame of event ``i`` (1-based): every pixel ``i`` (uint16), so it can be checked."""
    return np.full(shape, i % 65536, dtype=np.uint16)


def _descriptor_keys(shape: tuple[int, ...], external: bool) -> dict[str, Any]:
    image: dict[str, Any] = {
        "source": "benchmark",
        "dtype": "array",
        "shape": list(shape),
        "dtype_numpy": "<u2",
    }
    if external:
        image["external"] = "FILESTORE:"
    return {
        "det": {"source": "benchmark", "dtype": "number", "shape": []},
        IMAGE_KEY: image,
    }


def publish_run(
    pub: Callable[[str, dict[str, Any]], None],
    n: int,
    shape: tuple[int, ...],
    *,
    rate_hz: float | None = None,
    h5_path: Path | None = None,
    plan_name: str = "ingest_benchmark",
    received: Callable[[], float] | None = None,
    stall_timeout: float = 120.0,
) -> tuple[str, float, float]:
    """Publish one run of ``n`` events; return (uid, time of the start, time of the stop).

    ``received`` (events the consumer has taken off the bus so far in this run) keeps the
    publisher at most :data:`IN_FLIGHT` events ahead: 0MQ drops what does not fit in a
    socket's queue (1000 messages) when the proxy or the consumer is starved of CPU for a
    moment, which a burst of thousands of events at full speed does on a busy machine.
    A consumer that takes no event for ``stall_timeout`` s raises :class:`TimeoutError`
    (the run's documents were lost on the way) instead of waiting for good.
    """
    from event_model import compose_run

    run = compose_run(metadata={"plan_name": plan_name, "beamwatch_pipelines": []})
    t_start = time.monotonic()
    pub("start", run.start_doc)
    external = h5_path is not None
    desc = run.compose_descriptor(name="primary", data_keys=_descriptor_keys(shape, external))
    pub("descriptor", desc.descriptor_doc)
    datum_of: Callable[[int], str] | None = None
    if h5_path is not None:
        res = run.compose_resource(
            spec="AD_HDF5_SWMR_STREAM",
            root="/",
            resource_path=str(h5_path.resolve()).lstrip("/"),
            resource_kwargs={"dataset": DATASET, "join_method": "stack"},
        )
        pub("resource", res.resource_doc)

        def datum_of(i: int) -> str:
            datum = res.compose_datum(datum_kwargs={"frame": i - 1})
            pub("datum", datum)
            return str(datum["datum_id"])

    period = 1.0 / rate_hz if rate_hz else 0.0
    for i in range(1, n + 1):
        if period:
            delay = t_start + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the publisher's own pace (a 20 Hz scan)
        if received is not None and i % 100 == 0:
            _wait_for_consumer(received, i, stall_timeout)
        now = time.time()
        image: Any = datum_of(i) if datum_of is not None else frame_for(i, shape)
        event = desc.compose_event(
            data={"det": float(i), IMAGE_KEY: image},
            timestamps={"det": now, IMAGE_KEY: now},
            filled={IMAGE_KEY: False} if external else {},
            validate=False,
        )
        pub("event", event)
    stop = run.compose_stop()
    t_stop = time.monotonic()
    pub("stop", stop)
    return str(run.start_doc["uid"]), t_start, t_stop


def _wait_for_consumer(received: Callable[[], float], sent: int, stall_timeout: float) -> None:
    """Wait until the consumer is at most :data:`IN_FLIGHT` events behind ``sent``."""
    last = received()
    stalled_since = time.monotonic()
    while not sent - last <= IN_FLIGHT:  # NaN (metrics not answering) waits too
        if time.monotonic() - stalled_since > stall_timeout:
            raise TimeoutError(
                f"the consumer took {last:.0f} of the {sent} events published and none for "
                f"{stall_timeout:.0f} s: the run's documents were lost on the way"
            )
        time.sleep(0.005)
        now = received()
        if not math.isnan(now) and now != last:  # progress (NaN: metrics not answering)
            last, stalled_since = now, time.monotonic()


def write_h5(path: Path, n: int, shape: tuple[int, ...]) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", libver="latest") as fh:
        dset = fh.create_dataset(DATASET, shape=(n, *shape), chunks=(1, *shape), dtype="<u2")
        for i in range(1, n + 1):
            dset[i - 1] = frame_for(i, shape)


def counts_in_raw(client: Any, uid: str) -> tuple[int, int]:
    """(rows, frames) of ``raw/<uid>/primary`` readable from Tiled now; 0 for what is missing."""
    try:
        stream = client["raw"][uid]["primary"]
    except KeyError:
        return 0, 0
    frames = 0
    if IMAGE_KEY in stream.base:
        frames = int(stream.base[IMAGE_KEY].shape[0])
    rows = 0
    if "internal" in stream.base:
        rows = len(stream.base["internal"].read(["seq_num"]))
    return rows, frames


def wait_all_in_raw(
    client: Any, uid: str, n: int, timeout: float, poll: float, frames_first: bool = True
) -> float:
    """Poll until ``n`` rows and ``n`` frames are in; return the monotonic time then."""
    deadline = time.monotonic() + timeout
    rows = frames = 0
    while time.monotonic() < deadline:
        try:
            rows, frames = counts_in_raw(client, uid)
        except Exception as exc:  # noqa: BLE001 - a node still being created; poll again
            logger.debug("poll: %s", exc)
        if rows >= n and frames >= n:
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"run {uid}: {rows} rows / {frames} frames of {n} after {timeout:.0f} s")


def check_run(client: Any, uid: str, n: int, shape: tuple[int, ...]) -> list[str]:
    """What is wrong with ``raw/<uid>`` (empty when every row and frame is there once)."""
    problems = []
    stream = client["raw"][uid]["primary"].base
    seq = sorted(int(s) for s in stream["internal"].read(["seq_num"])["seq_num"])
    if seq != list(range(1, n + 1)):
        dup = len(seq) - len(set(seq))
        problems.append(f"seq_nums: {len(seq)} rows, {dup} duplicated, expected 1..{n}")
    images = stream[IMAGE_KEY]
    if tuple(images.shape) != (n, *shape):
        problems.append(f"image array shape {tuple(images.shape)}, expected {(n, *shape)}")
    else:
        for i in sorted({1, n // 2 + 1, n}):
            got = np.asarray(images[i - 1])
            if not np.array_equal(got, frame_for(i, shape)):
                problems.append(f"frame {i} differs from what was published")
    return problems


def run_case(
    stack: Any,
    client: Any,
    case: str,
    n: int,
    shape: tuple[int, ...],
    timeout: float,
    rate_hz: float | None = None,
    bus: str = "zmq",
) -> CaseResult:
    h5_path = None
    if case == "c":
        h5_path = stack.settings.detector_dir / f"bench_{n}.h5"
        write_h5(h5_path, n, shape)

    def events_received() -> float:
        return stack.metric("raw", "beamwatch_messages_received_total", document="event")

    # The publisher keeps pace with the first 0MQ subscriber after the proxy: the raw consumer,
    # or on the JetStream path the bridge (the stream holds what the consumer has not taken).
    paced_by = "bridge" if bus == "nats" else "raw"

    def events_off_0mq() -> float:
        return stack.metric(paced_by, "beamwatch_messages_received_total", document="event")

    before = events_received()
    paced_before = events_off_0mq()
    with stack.publisher() as pub:
        uid, t_start, t_stop = publish_run(
            pub,
            n,
            shape,
            rate_hz=rate_hz,
            h5_path=h5_path,
            received=lambda: events_off_0mq() - paced_before,
        )
    publish_seconds = t_stop - t_start
    poll = 0.05 if rate_hz else 0.25
    try:
        t_done = wait_all_in_raw(client, uid, n, timeout, poll)
    except TimeoutError as exc:
        got = events_received() - before
        lost = stack.metric("raw", "beamwatch_messages_lost_total", kind="event")
        raise TimeoutError(
            f"{exc}; the raw consumer received {got:.0f} of {n} events "
            f"(lost on the bus so far: {lost:.0f})"
        ) from exc
    checks = check_run(client, uid, n, shape)
    if case == "d":
        after_stop = max(t_done - t_stop, 0.0)
        return CaseResult(
            case,
            n,
            shape,
            publish_seconds,
            after_stop,
            after_stop,
            "<= 2 s after the stop",
            after_stop <= 2.0 and not checks,
            checks,
            bus,
        )
    goal = {"a": 500.0, "b": 100.0, "c": 2000.0}[case]
    seconds = t_done - t_start
    rate = n / seconds
    return CaseResult(
        case,
        n,
        shape,
        publish_seconds,
        seconds,
        rate,
        f">= {goal:.0f} events/s",
        rate >= goal and not checks,
        checks,
        bus,
    )


CASE_TITLES = {
    "a": "scalar + 64x64 frame in Events",
    "b": "512x512 frames in Events",
    "c": "frames as file references (Resource/Datum)",
    "d": "20 Hz, 64x64 frame in Events: stop -> all in raw/",
}


BUS_TITLES = {
    "zmq": "0MQ: raw consumer on the proxy (bus.mode zmq)",
    "nats": "JetStream: proxy -> bridge -> stream -> raw consumer (bus.mode nats)",
}


def format_results(results: list[CaseResult]) -> str:
    buses = list(dict.fromkeys(r.bus for r in results))
    lines = []
    for bus in buses:
        if len(buses) > 1 or bus != "zmq":
            lines.append(BUS_TITLES[bus])
        lines.append(f"{'case':<52} {'events':>7} {'measured':>16}  {'goal':<24} met")
        for r in results:
            if r.bus != bus:
                continue
            measured = f"{r.value:.2f} s" if r.case == "d" else f"{r.value:.0f} events/s"
            title = f"{r.case}. {CASE_TITLES[r.case]}"
            lines.append(
                f"{title:<52} {r.events:>7} {measured:>16}  {r.goal:<24} {'yes' if r.met else 'NO'}"
            )
            for problem in r.checks:
                lines.append(f"    ! {problem}")
    lines += format_ratios(results)
    return "\n".join(lines)


def format_ratios(results: list[CaseResult]) -> list[str]:
    """JetStream beside 0MQ, case by case (both measured in this run)."""
    zmq = {r.case: r for r in results if r.bus == "zmq"}
    nats = {r.case: r for r in results if r.bus == "nats"}
    cases = sorted(set(zmq) & set(nats))
    if not cases:
        return []
    lines = ["JetStream vs 0MQ (same run)"]
    for case in cases:
        z, n = zmq[case], nats[case]
        if case == "d":
            lines.append(
                f"  {case}. stop -> all in raw/: {n.value:.2f} s vs {z.value:.2f} s "
                f"({n.value - z.value:+.2f} s)"
            )
        else:
            lines.append(
                f"  {case}. {n.value:.0f} vs {z.value:.0f} events/s: x{n.value / z.value:.2f}"
            )
    return lines


def run_bus(
    bus: str,
    data_dir: Path,
    args: argparse.Namespace,
    sizes: dict[str, int],
    shapes: dict[str, tuple[int, ...]],
) -> list[CaseResult]:
    """Every case of ``args.cases`` on a fresh stack of ``bus`` mode (``zmq`` or ``nats``)."""
    from benchmarks.stack import NATS_CHILDREN, running_stack

    children: tuple[str, ...] = ("tiled", "proxy", "consumer-raw")
    if bus == "nats":
        children += NATS_CHILDREN
    results = []
    with running_stack(data_dir, children, bus={"mode": bus}) as stack:
        client = stack.client()
        try:
            # Warm-up: the first run after a start pays the server's lazy imports.
            run_case(stack, client, "a", 5, shapes["a"], args.timeout, bus=bus)
            for case in sorted(set(args.cases)):
                rate = args.rate_d if case == "d" else None
                result = run_case(
                    stack, client, case, sizes[case], shapes[case], args.timeout, rate, bus
                )
                logger.warning("%s case %s: %s", bus, case, result)
                results.append(result)
        finally:
            client.context.close()
    return results


def main(argv: list[str] | None = None) -> int:
    from services.core.logs import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="abcd", help="which cases to run (default abcd)")
    parser.add_argument("--events-a", type=int, default=2000)
    parser.add_argument("--events-b", type=int, default=300)
    parser.add_argument("--events-c", type=int, default=4000)
    parser.add_argument("--events-d", type=int, default=600)
    parser.add_argument("--rate-d", type=float, default=20.0, help="Hz of case d (default 20)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--json", type=Path, default=None, help="also save the results here")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--bus",
        choices=("zmq", "nats", "both"),
        default="both",
        help="the consumer on the 0MQ proxy, on the JetStream stream through the bridge, or "
        "both one after the other (default; prints the ratios)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keep the data dir and logs here (a new dir)"
    )
    args = parser.parse_args(argv)
    sizes = {"a": args.events_a, "b": args.events_b, "c": args.events_c, "d": args.events_d}
    if args.quick:
        sizes = {"a": 100, "b": 20, "c": 200, "d": 40}
    shapes = {"a": (64, 64), "b": (512, 512), "c": (64, 64), "d": (64, 64)}
    if any(n < 1 for n in sizes.values()) or set(args.cases) - set(CASE_TITLES):
        parser.error("sizes must be >= 1 and --cases letters among abcd")
    configure_logging(args.log_level, service="benchmark")
    load_before = os.getloadavg()[0]
    results: list[CaseResult] = []
    buses = ("zmq", "nats") if args.bus == "both" else (args.bus,)
    with tempfile.TemporaryDirectory(prefix="beamwatch-rates-") as tmp:
        for bus in buses:
            data_dir = (args.data_dir or Path(tmp) / "data") / bus
            results += run_bus(bus, data_dir, args, sizes, shapes)
    print(
        f"{os.cpu_count()} cores, load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (other jobs share the machine)"
    )
    print(format_results(results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    # a goal missed on a busy machine is a number to read; wrong data is a failure
    return 1 if any(r.checks for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
