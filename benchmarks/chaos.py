"""Scans through ``beamwatch up`` while children are killed: ``python -m benchmarks.chaos``.

Starts what ``beamwatch up`` starts (the embedded Tiled server, the bluesky 0MQ proxy, the raw
and analysis consumers; not the live page) under the real supervisor, which restarts a child
that dies. A real RunEngine publishes ``--scans`` small scans to the bus, XANES and tomography
mixed (frames in HDF5 files, as StreamResource/StreamDatum or Resource/Datum, or inside the
Events), while a seeded RNG SIGKILLs a random child (raw consumer, analysis consumer or Tiled)
at random moments. Then it waits for every run to settle and counts, against what was
published:

- raw rows: ``raw/<uid>/<stream>/internal`` seq_nums, per stream;
- raw frames: the image array of every stream (shape, and a read of all of it);
- analysis rows: ``analysis/<uid>/frames/frame_stats`` (one per frame of every stream) and,
  for XANES runs, ``analysis/<uid>/xanes/frames`` (one per energy),

as lost / duplicated / unreadable (goal 0 / 0 / 0), and prints each run's final statuses.

0MQ PUB/SUB keeps nothing for a subscriber that is down: documents published while a consumer
restarts (or in flight when it was killed) never reach it. By default the RunEngine therefore
waits, before publishing a document, until every consumer is up and hears the bus again (the
``--no-pause`` run shows what a beamline without a durable bus loses); documents in flight at
the moment of a kill can still be lost, and such losses are counted apart.

``--bus nats`` runs ``beamwatch up``'s default bus instead: the proxy feeds the bridge, which
stores every document once in the embedded JetStream server, and both consumers read the stream
durably (issue 15). The bridge and ``nats-server`` are killed too. Only the bridge listens to
the 0MQ proxy, so the RunEngine waits for it alone; a consumer that is down resumes from its
last ack. Goal: nothing lost or doubled and every run ``complete`` in every part.

``--workers N`` (``--bus nats`` only) adds N ``beamwatch worker --bus nats://... --role
analysis`` processes, as a second analysis node runs them (their own data dirs; Tiled's URL and
key from the environment), under the same supervisor: they share the analysis runs with
``up``'s analysis consumer, are among the children killed, and are restarted after a kill as
``up`` restarts its children. Which analysis process took and finished (released) each run is
read from their logs (``took run`` / ``run done and released``, INFO) and printed per run,
with runs taken, runs finished, kills and restarts per analysis process.

Then (``--rates``, default all four cases) the raw path's ingest rates of issue 14 point 3 are
measured on a fresh stack of the same bus, nothing killed (:mod:`benchmarks.ingest_rates`, its
default sizes), and printed beside their goals.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("benchmarks.chaos")

TARGETS = ("consumer-raw", "consumer-analysis", "tiled")
#: with ``--bus nats`` the JetStream server and the bridge are killed too (the proxy is the
#: RunEngine side's, not beamwatch's)
NATS_TARGETS = (*TARGETS, "bridge", "bridge-2", "nats")
#: the children that must hear the 0MQ proxy before the RunEngine publishes on (``pause``):
#: with 0MQ every consumer; with JetStream one of the two redundant bridges (each stores every
#: document; the consumers read the stream durably and resume from their last ack)
LISTENERS = {"zmq": ("consumer-raw", "consumer-analysis"), "nats": ("bridge", "bridge-2")}
#: whether one listener that hears the proxy is enough (redundant bridges) or all must
ANY_LISTENER = {"zmq": False, "nats": True}
FINAL = ("complete", "incomplete", "failed", "interrupted")
ANALYSIS_CONSUMER = "consumer-analysis"
#: a document published this long before a consumer was killed may have been in flight
IN_FLIGHT_SECONDS = 1.0


@dataclass
class Published:
    """What the RunEngine sent, per run: events per stream, image keys, publish times."""

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    streams: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)  # descriptor

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        now = time.monotonic()
        if name == "start":
            self.runs[doc["uid"]] = {"plan": doc.get("plan_name"), "events": {}, "times": {}}
            self.runs[doc["uid"]]["times"][("doc", "start")] = now
        elif name == "descriptor":
            self.runs[doc["run_start"]]["times"][("doc", doc["uid"])] = now
            keys = [
                k
                for k, v in doc["data_keys"].items()
                if len(v.get("shape") or []) >= 2 or v.get("external")
            ]
            self.streams[doc["uid"]] = (doc["run_start"], doc.get("name", "primary"), keys)
        elif name == "event":
            run_uid, stream, _keys = self.streams[doc["descriptor"]]
            run = self.runs[run_uid]
            run["events"].setdefault(stream, []).append(int(doc["seq_num"]))
            run["times"][(stream, int(doc["seq_num"]))] = now


@dataclass
class Kill:
    child: str
    pid: int
    at: float
    back: float = float("inf")  # when it was up again (consumers: hearing the bus)


class Killer(threading.Thread):
    """SIGKILLs a random child of the supervisor every ``interval`` (uniform) seconds."""

    def __init__(
        self,
        stack: Any,
        rng: random.Random,
        interval: tuple[float, float],
        targets: tuple[str, ...] = TARGETS,
    ) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.stack, self.rng, self.interval = stack, rng, interval
        self.targets = targets
        self.kills: list[Kill] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(*self.interval)):
            child = self.rng.choice(self.targets)
            proc = _proc(self.stack.supervisor, child)
            if proc is None or proc.poll() is not None:
                continue  # still down from an earlier kill
            os.kill(proc.pid, signal.SIGKILL)
            self.kills.append(Kill(child, proc.pid, time.monotonic()))
            logger.warning("chaos: killed %s (pid %d)", child, proc.pid)


def _proc(supervisor: Any, name: str) -> Any:
    for child in supervisor._children:  # noqa: SLF001 - the benchmark reads its own supervisor
        if child.spec.name == name:
            return child.proc
    return None


def _listener_role(child: str) -> str:
    """The metrics role of a child that listens to the proxy: ``raw``, ``analysis``,
    ``bridge``, ``bridge-2``."""
    return child.removeprefix("consumer-")


def _consumer_hears(stack: Any, pub: Any, role: str) -> bool:
    before = stack.metric(role, "beamwatch_messages_received_total", document="beamwatch_ping")
    pub("beamwatch_ping", {})
    return bool(before > 0)


class PausingPublisher:
    """Publishes a document once every consumer runs and hears the bus (``pause``)."""

    def __init__(
        self,
        stack: Any,
        pub: Any,
        killer: Killer,
        published: Published,
        pause: bool,
        exposure: float = 0.0,
        listeners: tuple[str, ...] = LISTENERS["zmq"],
        any_listener: bool = False,
    ):
        self.stack, self.pub, self.killer = stack, pub, killer
        self.published, self.pause, self.exposure = published, pause, exposure
        self.listeners = listeners
        self.any_listener = any_listener

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "event" and self.exposure:
            time.sleep(self.exposure)  # the detector's exposure: scans last a while
        if self.pause:
            self._wait_for_consumers()
        self.published(name, doc)
        self.pub(name, doc)

    def _wait_for_consumers(self) -> None:
        """Block while a killed listener of the proxy is down: until its new process hears it."""
        deadline = time.monotonic() + 300
        down = [
            kill
            for kill in self.killer.kills
            if kill.child in self.listeners and kill.back == float("inf")
        ]
        if self.any_listener and len({kill.child for kill in down}) < len(self.listeners):
            # another bridge hears the proxy: publish on; note the ones that are back
            for kill in down:
                if self._back(kill):
                    kill.back = time.monotonic()
            return
        for kill in down:
            while time.monotonic() < deadline and not self._back(kill):
                time.sleep(0.1)
            kill.back = time.monotonic()
            if self.any_listener:
                return  # one bridge is enough

    def _back(self, kill: Any) -> bool:
        """Whether the killed listener's new process runs and hears the proxy."""
        proc = _proc(self.stack.supervisor, kill.child)
        alive = proc is not None and proc.pid != kill.pid and proc.poll() is None
        return alive and _consumer_hears(self.stack, self.pub, _listener_role(kill.child))


# ---- the scans ---------------------------------------------------------------------------------
def xanes_scan(
    detector_dir: Path,
    seed: int,
    n_energies: int,
    source: str,
    shape: tuple[int, int] = (64, 64),
    n_particles: int = 3,
) -> tuple[Any, Any]:
    from bluesky_plans.devices import SimTXM
    from bluesky_plans.plans import xanes_scan_plan
    from synthetic.txm import TxmScene, default_energies

    scene = TxmScene.random(
        seed, shape=shape, n_particles=n_particles, n_scans=1, n_frames=n_energies
    )
    txm = SimTXM(scene, detector_dir, frame_source=source, seed=seed)
    energies = list(default_energies(n_energies))
    return xanes_scan_plan(txm, energies, n_flats=1, md={"chaos_seed": seed}), txm


def tomo_scan(
    detector_dir: Path,
    seed: int,
    n_angles: int,
    source: str,
    shape: tuple[int, int, int] = (4, 48, 48),
    cache_dir: Path | None = None,
) -> tuple[Any, Any]:
    """A tomography plan of a cathode phantom. With ``cache_dir``, the simulated frames are
    kept there (one ``.npz`` per seed, angles and shape) and read back on the next call: a
    512^3 phantom's 181 projections take tens of minutes to simulate on 2 cores."""
    from bluesky_plans.devices import SimTomoStation
    from bluesky_plans.plans import tomo_scan_plan

    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    cached = None
    if cache_dir is not None:
        cached = (
            Path(cache_dir) / f"tomo_seed{seed}_angles{n_angles}_{'x'.join(map(str, shape))}.npz"
        )
    if cached is not None and cached.exists():
        with np.load(cached) as saved:
            projections, flat, dark = saved["projections"], saved["flat"], saved["dark"]
    else:
        from synthetic.cathode import make_cathode_volume
        from synthetic.scan import simulate_scan

        volume = make_cathode_volume(shape, seed=seed)
        frames = simulate_scan(volume.attenuation, angles, seed=seed + 1)
        projections, flat, dark = frames.projections, frames.flat, frames.dark
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".part.npz")
            np.savez(partial, projections=projections, flat=flat, dark=dark)
            partial.replace(cached)
    station = SimTomoStation.from_frames(
        angles, projections, flat, dark, detector_dir, frame_source=source
    )
    plan = tomo_scan_plan(station, list(angles), n_darks=1, n_flats=1, md={"chaos_seed": seed})
    return plan, station


# ---- counting --------------------------------------------------------------------------------
@dataclass
class Counts:
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    unreadable: int = 0
    lost_in_flight: int = 0  # of ``lost``: published while its consumer was down or dying
    #: rows or frames lost, doubled or unreadable per part of the run (``frames``, ``xanes``):
    #: a part saying ``complete`` must have none
    wrong_by_part: dict[str, int] = field(default_factory=dict)

    def add(self, other: Counts) -> None:
        for name in ("expected", "lost", "duplicated", "unreadable", "lost_in_flight"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _compare(expected: list[Any], got: list[Any]) -> tuple[list[Any], int]:
    """(the expected items missing from ``got``, how many of ``got`` are extra copies)."""
    want, have = collections.Counter(expected), collections.Counter(got)
    missing = list((want - have).elements())
    return missing, sum((have - want).values())


def _in_flight(times: dict[Any, float], item: Any, kills: list[Kill], child: str) -> bool:
    """Was ``item`` (or the start or a descriptor of its run, without which it cannot be
    used) published while ``child`` was down or dying?"""
    for key in [item, *(k for k in times if k[0] == "doc")]:
        t = times.get(key)
        if t is not None and any(
            k.child == child and k.at - IN_FLIGHT_SECONDS <= t <= k.back for k in kills
        ):
            return True
    return False


def count_raw(client: Any, uid: str, run: dict[str, Any], kills: list[Kill]) -> dict[str, Counts]:
    rows, frames = Counts(), Counts()
    for stream, seq_nums in run["events"].items():
        rows.expected += len(seq_nums)
        try:
            node = client["raw"][uid][stream].base
            got = [int(s) for s in node["internal"].read(["seq_num"])["seq_num"]]
        except Exception as exc:  # noqa: BLE001 - missing or unreadable: counted as such
            logger.warning("raw %s/%s rows: %s", uid[:8], stream, exc)
            if isinstance(exc, KeyError):
                rows.lost += len(seq_nums)
            else:
                rows.unreadable += len(seq_nums)
            got = None
        if got is not None:
            missing, extra = _compare(seq_nums, got)
            rows.lost += len(missing)
            rows.duplicated += extra
            rows.lost_in_flight += sum(
                _in_flight(run["times"], (stream, s), kills, "consumer-raw") for s in missing
            )
        image_keys = [k for k in _image_keys(client, uid, stream)]
        for key in image_keys:
            frames.expected += len(seq_nums)
            try:
                array = client["raw"][uid][stream].base[key]
                n = int(array.shape[0])
                array.read()
            except Exception as exc:  # noqa: BLE001
                logger.warning("raw %s/%s/%s frames: %s", uid[:8], stream, key, exc)
                frames.unreadable += len(seq_nums)
                continue
            frames.lost += max(0, len(seq_nums) - n)
            frames.duplicated += max(0, n - len(seq_nums))
    return {"raw rows": rows, "raw frames": frames}


def _image_keys(client: Any, uid: str, stream: str) -> list[str]:
    try:
        node = client["raw"][uid][stream].base
        return [k for k in node if k != "internal"]
    except Exception:  # noqa: BLE001 - the stream never reached raw/
        return []


def count_analysis(
    client: Any,
    uid: str,
    run: dict[str, Any],
    kills: list[Kill],
    processes: tuple[str, ...] = (ANALYSIS_CONSUMER,),
) -> Counts:
    """Analysis rows against what was published; a missing row is in flight if it was
    published while one of the analysis ``processes`` (consumer, workers) was down or dying."""
    counts = Counts()
    expected = [s for seq_nums in run["events"].values() for s in seq_nums]
    tables = [("frames", "frame_stats", expected)]
    if run["plan"] == "xanes_scan_plan":
        tables.append(("xanes", "frames", list(run["events"].get("primary", []))))
    for pipeline, key, want in tables:
        counts.expected += len(want)
        try:
            got = [int(s) for s in client["analysis"][uid][pipeline][key].read()["seq_num"]]
        except Exception as exc:  # noqa: BLE001
            logger.warning("analysis %s/%s/%s: %s", uid[:8], pipeline, key, exc)
            if isinstance(exc, KeyError):
                counts.lost += len(want)
            else:
                counts.unreadable += len(want)
            counts.wrong_by_part[pipeline] = len(want)
            continue
        missing, extra = _compare(want, got)
        counts.lost += len(missing)
        counts.duplicated += extra
        counts.wrong_by_part[pipeline] = len(missing) + extra
        # a seq_num repeats across streams; in flight if any of its events was
        counts.lost_in_flight += sum(
            any(
                _in_flight(run["times"], (st, s), kills, proc)
                for st in run["events"]
                for proc in processes
            )
            for s in missing
        )
    return counts


def statuses(client: Any, uid: str) -> dict[str, str]:
    out = {}
    try:
        md = client["raw"][uid].metadata
        out["raw"] = str(md.get("beamwatch_status", "no stop" if "stop" not in md else "?"))
    except Exception:  # noqa: BLE001
        out["raw"] = "missing"
    try:
        analysis = client["analysis"][uid]
        for name in analysis:
            out[name] = str(analysis[name].metadata.get("status", "?"))
    except Exception:  # noqa: BLE001
        out["analysis"] = "missing"
    return out


def settled(client: Any, uids: list[str]) -> bool:
    for uid in uids:
        st = statuses(client, uid)
        if st.get("raw") not in FINAL or not all(v in FINAL for k, v in st.items() if k != "raw"):
            return False
        if len(st) < 2:
            return False
    return True


# ---- who did the analysis --------------------------------------------------------------------
#: a process of the analysis role starting (``beamwatch consume analysis`` / ``worker``)
_STARTED = re.compile(r"analysis (consumer reading|worker sharing the runs of) ")
_RUN_EVENT = re.compile(
    r"\[run (?P<uid>[^\]]+)\]: analysis: (?:took run \(delivery (?P<delivery>\d+)"
    r"|(?P<released>run done and released))"
)


@dataclass
class AnalysisLog:
    """What one analysis process's log says: per run uid (first 8 characters), the
    incarnations (1 = as first started, 2 = after its first restart, ...) that took it, with
    JetStream's delivery count, and the ones that released it (every write in Tiled)."""

    taken: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    released: dict[str, list[int]] = field(default_factory=dict)


def read_analysis_log(path: Path) -> AnalysisLog:
    log = AnalysisLog()
    if not path.exists():
        return log
    incarnation = 0
    with path.open(errors="replace") as lines:
        for line in lines:
            if _STARTED.search(line):
                incarnation += 1
            elif m := _RUN_EVENT.search(line):
                uid = m["uid"]
                if m["released"]:
                    log.released.setdefault(uid, []).append(incarnation)
                else:
                    log.taken.setdefault(uid, []).append((incarnation, int(m["delivery"])))
    return log


def analysis_by_run(logs: dict[str, AnalysisLog], uid: str) -> dict[str, list[str]]:
    """``{"taken": ["worker-1#1 (delivery 1)", ...], "finished": ["consumer-analysis#2"]}``:
    ``name#k`` is the k-th process of that name (k - 1 restarts before it)."""
    short = uid[:8]
    taken = [
        (delivery, f"{name}#{inc} (delivery {delivery})")
        for name, log in logs.items()
        for inc, delivery in log.taken.get(short, [])
    ]
    finished = [
        f"{name}#{inc}" for name, log in logs.items() for inc in log.released.get(short, [])
    ]
    return {"taken": [t for _, t in sorted(taken)], "finished": finished}


# ---- main --------------------------------------------------------------------------------------
def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from bluesky import RunEngine

    from benchmarks.stack import NATS_CHILDREN, running_stack

    rng = random.Random(args.seed)
    children: tuple[str, ...] = ("tiled", "proxy", "consumer-raw", ANALYSIS_CONSUMER)
    targets: tuple[str, ...] = TARGETS
    if args.bus == "nats":
        children += NATS_CHILDREN
        targets = NATS_TARGETS
    workers = tuple(f"worker-{i}" for i in range(1, args.workers + 1))
    targets += workers
    analysis_processes = (ANALYSIS_CONSUMER, *workers)
    # 0MQ: a consumer that is down misses what is published; JetStream keeps it for them
    config = {"run_idle_timeout": args.idle_timeout, "bus": {"mode": args.bus}}
    listeners = LISTENERS[args.bus]
    with running_stack(data_dir, children, workers=args.workers, **config) as stack:
        client = stack.client()
        published = Published()
        killer = Killer(stack, rng, (args.min_interval, args.max_interval), targets)
        uids: list[str] = []
        t0 = time.monotonic()
        with stack.publisher() as pub:
            RE = RunEngine({})
            RE.subscribe(
                PausingPublisher(
                    stack,
                    pub,
                    killer,
                    published,
                    not args.no_pause,
                    args.exposure,
                    listeners,
                    any_listener=ANY_LISTENER[args.bus],
                )
            )
            killer.start()
            for i in range(args.scans):
                kind = rng.choice(("xanes", "tomo"))
                source = rng.choice(("stream", "resource", "event"))
                seed = rng.randrange(1_000_000)
                if kind == "xanes":
                    plan, _dev = xanes_scan(
                        stack.settings.detector_dir, seed, args.energies, source
                    )
                else:
                    plan, _dev = tomo_scan(stack.settings.detector_dir, seed, args.angles, source)
                logger.warning("scan %d: %s (%s, seed %d)", i + 1, kind, source, seed)
                uids += list(RE(plan))  # type: ignore[arg-type]  # uids: not in return_value mode
            killer.stop.set()
            killer.join()
            scans_seconds = time.monotonic() - t0
            # consumers back before settling: the runs they were in the middle of resume
            PausingPublisher(
                stack, pub, killer, published, True, listeners=listeners
            )._wait_for_consumers()
        for kill in killer.kills:  # Tiled's downtime: until it answers again
            if kill.back == float("inf"):
                kill.back = time.monotonic()
        deadline = time.monotonic() + args.settle_timeout
        while time.monotonic() < deadline and not settled(client, uids):
            time.sleep(1.0)
        totals = {name: Counts() for name in ("raw rows", "raw frames", "analysis rows")}
        per_run = []
        for uid in uids:
            run_pub = published.runs[uid]
            raw = count_raw(client, uid, run_pub, killer.kills)
            ana = count_analysis(client, uid, run_pub, killer.kills, analysis_processes)
            totals["raw rows"].add(raw["raw rows"])
            totals["raw frames"].add(raw["raw frames"])
            totals["analysis rows"].add(ana)
            per_run.append(
                {
                    "uid": uid,
                    "plan": run_pub["plan"],
                    "events": sum(len(v) for v in run_pub["events"].values()),
                    "statuses": statuses(client, uid),
                    "lost": {
                        "raw rows": raw["raw rows"].lost,
                        "raw frames": raw["raw frames"].lost,
                        "analysis rows": ana.lost,
                    },
                    "duplicated": raw["raw rows"].duplicated
                    + raw["raw frames"].duplicated
                    + ana.duplicated,
                    "wrong_by_part": {
                        "raw": sum(
                            c.lost + c.duplicated + c.unreadable
                            for c in (raw["raw rows"], raw["raw frames"])
                        ),
                        **ana.wrong_by_part,
                    },
                }
            )
        restarts = {c.spec.name: c.restarts for c in stack.supervisor._children}  # noqa: SLF001
        client.context.close()
        if workers:  # who took and finished each run's analysis, from the processes' logs
            log_dir = stack.settings.data_dir / "logs"
            give_up = time.monotonic() + 30  # a release is logged just after the last write
            while True:
                logs = {n: read_analysis_log(log_dir / f"{n}.log") for n in analysis_processes}
                by_run = {uid: analysis_by_run(logs, uid) for uid in uids}
                if all(b["finished"] for b in by_run.values()) or time.monotonic() > give_up:
                    break
                time.sleep(1.0)
            for entry in per_run:
                entry["analysis_by"] = by_run[entry["uid"]]
    return {
        "load_average": os.getloadavg()[0],
        "seed": args.seed,
        "bus": args.bus,
        "pause": not args.no_pause,
        "scans_seconds": scans_seconds,
        "kills": [(k.child, round(k.at - t0, 1)) for k in killer.kills],
        "restarts": restarts,
        "workers": list(workers),
        "totals": {k: vars(v) for k, v in totals.items()},
        "runs": per_run,
    }


def format_result(result: dict[str, Any]) -> str:
    bus = result.get("bus", "zmq")
    waits_for = "a bridge when both are down" if bus == "nats" else "restarting consumers"
    lines = [
        f"seed {result['seed']}; bus {bus}; publisher "
        f"{'waits for' if result['pause'] else 'ignores'} "
        f"{waits_for}; scans took {result['scans_seconds']:.0f} s "
        f"(load average {result['load_average']:.1f} at the end)",
        "restarts: " + ", ".join(f"{k} {v}" for k, v in result["restarts"].items()),
        "kills: " + ", ".join(f"{c} at {t:.0f} s" for c, t in result["kills"]) or "none",
        f"{'':<14} {'expected':>8} {'lost':>5} {'dup':>5} {'unreadable':>10}"
        f"   (lost of it in flight at a kill)",
    ]
    for name, c in result["totals"].items():
        lines.append(
            f"{name:<14} {c['expected']:>8} {c['lost']:>5} {c['duplicated']:>5} "
            f"{c['unreadable']:>10}   ({c['lost_in_flight']})"
        )
    lines.append("goal: 0 / 0 / 0")
    false_complete = 0
    for r in result["runs"]:
        st = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        lost = r.get("lost", {})
        # every part (raw, each pipeline) that says complete must hold every row and frame
        # of its own, whatever the other parts say
        wrong_parts = [
            part
            for part, n in r.get("wrong_by_part", {}).items()
            if n and r["statuses"].get(part) == "complete"
        ]
        wrong = bool(wrong_parts)
        false_complete += wrong
        losses = ", ".join(f"{k} {v}" for k, v in lost.items() if v)
        by = r.get("analysis_by")
        lines.append(
            f"  {r['uid'][:8]} {r['plan']:<16} {r['events']:>4} events: {st}"
            + (f"; lost {losses}" if losses else "")
            + (f"; duplicated {r['duplicated']}" if r.get("duplicated") else "")
            + (f"; analysis {_who(by)}" if by is not None else "")
            + (f"   <- {', '.join(wrong_parts)} says complete but is not" if wrong else "")
        )
    lines.append(
        f"runs with a part saying complete while its rows are lost or doubled: {false_complete}"
        " (goal 0)"
    )
    whole = sum(
        1
        for r in result["runs"]
        if len(r["statuses"]) > 1 and all(v == "complete" for v in r["statuses"].values())
    )
    lines.append(f"runs complete in every part: {whole} of {len(result['runs'])}")
    if result.get("workers"):
        lines.append(_per_analysis_process(result))
    return "\n".join(lines)


def _who(by: dict[str, list[str]]) -> str:
    """``by worker-1#2`` when one process took and finished the run; else every take (with
    its JetStream delivery count) and who finished it."""
    done = ", ".join(by["finished"]) or "nobody (no release in the logs)"
    if len(by["taken"]) == 1 and by["taken"][0].split(" ")[0] == done:
        return f"by {done}"
    return f"taken by {', '.join(by['taken']) or 'nobody'}, finished by {done}"


def _per_analysis_process(result: dict[str, Any]) -> str:
    """Runs taken / finished, kills and restarts of each analysis process."""
    names = ["consumer-analysis", *result["workers"]]
    kills = collections.Counter(child for child, _t in result["kills"])
    parts = []
    for name in names:
        taken = sum(
            1
            for r in result["runs"]
            for t in r.get("analysis_by", {}).get("taken", [])
            if t.startswith(f"{name}#")
        )
        finished = sum(
            1
            for r in result["runs"]
            for f in r.get("analysis_by", {}).get("finished", [])
            if f.startswith(f"{name}#")
        )
        parts.append(
            f"{name}: took {taken}, finished {finished}, killed {kills[name]}, "
            f"restarted {result['restarts'].get(name, 0)}"
        )
    return "analysis processes (runs taken / finished; a run taken again counts again): " + (
        "; ".join(parts)
    )


def main(argv: list[str] | None = None) -> int:
    from services.core.logs import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (default: random)")
    parser.add_argument("--energies", type=int, default=10, help="per XANES scan")
    parser.add_argument("--angles", type=int, default=24, help="per tomography scan")
    parser.add_argument("--exposure", type=float, default=0.2, help="s per event")
    parser.add_argument("--min-interval", type=float, default=5.0, help="s between kills")
    parser.add_argument("--max-interval", type=float, default=20.0)
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="run_idle_timeout")
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument(
        "--no-pause",
        action="store_true",
        help="publish while the proxy's listeners (consumers; with nats the bridge) are down",
    )
    parser.add_argument(
        "--bus",
        choices=("zmq", "nats"),
        default="zmq",
        help="zmq: consumers on the 0MQ proxy; nats: proxy -> bridge -> JetStream -> "
        "consumers (beamwatch up's default), and the bridge and nats-server are killed too",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="with --bus nats: start N more `beamwatch worker --bus nats://... --role analysis` "
        "processes (as a second analysis node), killed and restarted like the other children; "
        "prints which analysis process finished each run (default 0: none)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="keep data and logs here")
    parser.add_argument(
        "--rates",
        default="abcd",
        help="then the raw path's ingest rates beside issue 14's goals (benchmarks.ingest_rates "
        "cases, default sizes, on a fresh stack of the same bus, nothing killed; '' for none)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.workers and args.bus != "nats":
        parser.error(
            "--workers needs --bus nats: `beamwatch worker` shares the runs of a JetStream bus; "
            "on the 0MQ bus every consumer would get every document, not its share of the runs"
        )
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    print(f"chaos seed: {args.seed}", flush=True)
    configure_logging(args.log_level, service="chaos")
    with tempfile.TemporaryDirectory(prefix="beamwatch-chaos-") as tmp:
        result = run(args, args.data_dir or Path(tmp) / "data")
    print(format_result(result), flush=True)
    rates_wrong = False
    if args.rates:
        rates = _ingest_rates(args.bus, args.rates, args.data_dir)
        result["rates"] = [asdict(r) for r in rates]
        rates_wrong = any(r.checks for r in rates)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    totals = result["totals"].values()
    clean = all(c["lost"] == c["duplicated"] == c["unreadable"] == 0 for c in totals)
    return 0 if clean and not rates_wrong else 1


def _ingest_rates(bus: str, cases: str, data_dir: Path | None) -> list[Any]:
    """The raw path's rates of issue 14 point 3 (:mod:`benchmarks.ingest_rates`, its default
    sizes) on a fresh stack, printed beside their goals."""
    from benchmarks import ingest_rates

    if set(cases) - set(ingest_rates.CASE_TITLES):
        raise SystemExit(f"--rates letters must be among abcd, got {cases!r}")
    sizes = {"a": 2000, "b": 300, "c": 4000, "d": 600}
    shapes: dict[str, tuple[int, ...]] = {
        "a": (64, 64),
        "b": (512, 512),
        "c": (64, 64),
        "d": (64, 64),
    }
    options = argparse.Namespace(cases=cases, timeout=600.0, rate_d=20.0)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="beamwatch-chaos-rates-") as tmp:
        where = (data_dir / "rates") if data_dir is not None else Path(tmp) / "data"
        results = ingest_rates.run_bus(bus, where, options, sizes, shapes)
    print(
        f"ingest rates after the chaos run ({bus}; load average {load_before:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end):"
    )
    print(ingest_rates.format_results(results), flush=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
