"""``beamwatch up`` as a user runs it: child processes, an external publisher, metrics, shutdown."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import UpProcess, wait_until

HERE = Path(__file__).parent


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all((k, labels[k]) in lab for k in labels)
    )


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


@pytest.fixture
def up(tmp_path):
    proc = UpProcess(tmp_path)
    info = {
        "proc": proc.proc,
        "ports": proc.ports,
        "data": proc.data,
        "log": proc.log,
        "tiled": proc.tiled,
        "in": proc.in_address,
        "metrics": proc.metrics,
    }
    try:
        yield info
    finally:
        proc.stop()


def test_up_ingests_an_external_run_rejects_pickles_restarts_children_and_stops_cleanly(up):
    from tiled.client import from_uri

    key = (up["data"] / "tiled_api_key").read_text().strip()
    assert oct((up["data"] / "tiled_api_key").stat().st_mode & 0o777) == "0o600"
    client = from_uri(up["tiled"], api_key=key)

    # 1. An external user's RunEngine publishes with msgpack; the run appears under raw/<uid>.
    pub = subprocess.Popen(
        [sys.executable, str(HERE / "external_publisher.py"), up["in"]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: all(
            value(scrape(u), "beamwatch_messages_received_total", document="beamwatch_ping") > 0
            for u in up["metrics"].values()
        ),
        timeout=60,
    )
    pub.stdin.write("go\n")
    pub.stdin.flush()
    uid = pub.stdout.readline().strip()
    assert pub.wait(60) == 0 and uid
    pub.stdin.close()
    pub.stdout.close()
    wait_until(lambda: client["raw"][uid]["primary"]["img"].shape[0] == 3, timeout=90)
    assert client["raw"][uid].metadata["start"]["sample"] == "external user"
    wait_until(
        lambda: client["analysis"][uid]["frames"].metadata["status"] == "complete", timeout=60
    )
    raw_runs = set(client["raw"])

    # 2. A pickled payload changes nothing but the malformed counter.
    before = {role: scrape(u) for role, u in up["metrics"].items()}
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.connect(up["in"])
    evil = b" start " + pickle.dumps({"uid": "pickled-run", "time": 0.0})
    try:
        wait_until(
            lambda: (
                sock.send(evil)
                or value(
                    scrape(up["metrics"]["raw"]),
                    "beamwatch_messages_malformed_total",
                    reason="pickle",
                )
                > 0
            ),
            timeout=30,
        )
    finally:
        sock.close(0)
    after = {role: scrape(u) for role, u in up["metrics"].items()}
    for role in ("raw", "analysis"):
        for name in ("beamwatch_messages_received_total", "beamwatch_messages_lost_total"):
            assert value(after[role], name, document="start") == value(
                before[role], name, document="start"
            )
        assert value(after[role], "beamwatch_frames_processed_total") == value(
            before[role], "beamwatch_frames_processed_total"
        )
    assert set(client["raw"]) == raw_runs
    assert value(after["analysis"], "beamwatch_frames_processed_total", pipeline="frames") == 3
    assert value(after["analysis"], "beamwatch_processing_latency_seconds_count") == 3
    client.context.close()

    # 3. A child that dies is reported and restarted.
    kids = children_of(up["proc"].pid)
    assert len(kids) == 5  # tiled, proxy, two consumers, live page
    analysis_pid = next(p for p in kids if b"analysis" in Path(f"/proc/{p}/cmdline").read_bytes())
    os.kill(analysis_pid, signal.SIGKILL)
    wait_until(lambda: len(set(children_of(up["proc"].pid)) - set(kids)) == 1, timeout=30)
    wait_until(
        lambda: (
            "consumer-analysis" in up["log"].read_text() and "restarting" in up["log"].read_text()
        )
    )
    children = scrape(f"http://127.0.0.1:{up['ports']['supervisor']}/metrics")
    assert value(children, "beamwatch_child_restarts_total", child="consumer-analysis") == 1
    assert value(children, "beamwatch_child_up", child="tiled") == 1

    # 4. SIGTERM stops everything: exit 0, no orphans.
    all_kids = set(children_of(up["proc"].pid)) | set(kids)
    up["proc"].send_signal(signal.SIGTERM)
    assert up["proc"].wait(60) == 0
    assert not [p for p in all_kids if alive(p)]
