"""Documents of a run lost while the analysis consumer was down are rebuilt from ``raw/``.

0MQ keeps nothing for a consumer that is not running. Under ``beamwatch up`` the analysis
consumer is SIGKILLed at a point of a XANES scan, and the documents published until its
restarted process listens again never reach it (the raw consumer gets them all):

* ``descriptor``: the ``primary`` descriptor and the first primary Events (frames inside the
  Events, so no detector file holds them). Found by ``benchmarks.chaos``: the later Events
  were dropped (unknown descriptor), and ``frames`` and ``xanes`` still said ``complete``
  with none of the scan's frames.
* ``start``: the start, the flats and their descriptor, the primary descriptor and its first
  Events (frames in an HDF5 file through StreamResource/StreamDatum). The later documents and
  the stop were dropped (unknown run): the run had no analysis at all.

Either way the run must end ``complete`` with every frame exactly once, rebuilt from what
``raw/`` in Tiled holds (start, descriptors, rows, frames).
"""

from __future__ import annotations

import os
import signal

import pytest
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from tiled.client import from_uri

from bluesky_plans.plans import xanes_scan_plan
from services.core import serialization
from tests.conftest import TiledProcess, UpProcess, wait_until
from tests.services.test_consumer_crash import _child, _pinged
from tests.services.test_ingest_e2e import FLAT_FRAMES, N_FLATS
from tests.services.test_up_e2e import alive, scrape, value
from tests.sim import N_ENERGIES, energies, small_txm

#: primary Events published while the analysis consumer is down
LOST_EVENTS = 2


class KillingGate:
    """Publishes the RunEngine's documents; at ``kill_before`` it SIGKILLs the analysis
    consumer and publishes on while it is down, until ``LOST_EVENTS`` primary Events are out;
    before the next document it waits until the restarted consumer hears the bus."""

    def __init__(self, up: UpProcess, pub: Publisher, kill_before: str, client) -> None:
        self.up, self.pub, self.kill_before, self.client = up, pub, kill_before, client
        self.primary: str | None = None
        self.primary_sent = 0
        self.state = "before"  # -> "down" -> "back"
        self.killed_pid: int | None = None
        self.run_uid = ""

    #: set to the session's Tiled to SIGKILL it just before the stop is published
    tiled_to_kill: TiledProcess | None = None

    def _is_kill_point(self, name: str, doc: dict) -> bool:
        if self.kill_before == "start":
            return name == "start"
        if self.kill_before == "event":
            return name == "event" and doc["descriptor"] == self.primary and doc["seq_num"] == 2
        return name == "descriptor" and doc.get("name") == "primary"

    def __call__(self, name: str, doc: dict) -> None:
        if self.state == "before" and self._is_kill_point(name, doc):
            if self.kill_before in ("descriptor", "event"):
                # what came before is through the consumer: only what follows is lost
                self.run_uid = doc.get("run_start") or self.run_uid
                done = FLAT_FRAMES + (1 if self.kill_before == "event" else 0)
                wait_until(lambda: self._rows(self.run_uid) == done, timeout=120)
            self.killed_pid = _child(self.up, "analysis")
            os.kill(self.killed_pid, signal.SIGKILL)
            wait_until(lambda: not alive(self.killed_pid), timeout=30)
            self.state = "down"
        elif self.state == "down" and self.primary_sent >= LOST_EVENTS:
            wait_until(lambda: _child(self.up, "analysis") not in (None, self.killed_pid), 60)
            wait_until(lambda: _pinged(self.up, self.pub, "analysis"), timeout=120, interval=0.1)
            self.state = "back"
        if name == "stop" and self.tiled_to_kill is not None:
            # the raw path has the whole run; then Tiled dies as the stop goes out
            wait_until(lambda: self._raw_rows(doc["run_start"]) == N_ENERGIES, timeout=120)
            self.tiled_to_kill.proc.kill()  # SIGKILL
            self.tiled_to_kill.proc.wait(30)
        if name == "start":
            self.run_uid = doc["uid"]
        if name == "descriptor" and doc.get("name") == "primary":
            self.primary = doc["uid"]
        if name == "event" and doc["descriptor"] == self.primary:
            self.primary_sent += 1
        self.pub(name, doc)

    def _rows(self, uid: str) -> int:
        try:
            return len(self.client["analysis"][uid]["frames"]["frame_stats"].read())
        except KeyError:
            return 0

    def _raw_rows(self, uid: str) -> int:
        try:
            return len(self.client["raw"][uid]["primary"].base["internal"].read())
        except KeyError:
            return 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("kill_before", "source"), [("descriptor", "event"), ("start", "stream")])
def test_a_run_whose_documents_the_analysis_consumer_missed_is_rebuilt_from_raw(
    tmp_path, kill_before, source, embedded_tiled
):
    # the session's embedded Tiled server, which ``up`` writes to (one start for both cases)
    up = UpProcess(tmp_path, embedded_tiled, BEAMWATCH_REORDER_TIMEOUT="1")
    pub = Publisher(up.in_address, serializer=serialization.dumps)
    client = from_uri(up.tiled, api_key=up.api_key())
    try:
        for role in ("raw", "analysis"):
            wait_until(lambda r=role: _pinged(up, pub, r), timeout=60, interval=0.05)
        gate = KillingGate(up, pub, kill_before, client)
        RE = RunEngine({})
        RE.subscribe(gate)
        txm = small_txm(up.detector_dir, source, seed=17)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))
        assert gate.state == "back"  # the documents were published while it was down

        def statuses():
            try:
                analysis = client["analysis"][uid]
                return {name: analysis[name].metadata.get("status") for name in analysis}
            except KeyError:
                return {}

        final = ("complete", "incomplete", "failed", "interrupted")
        wait_until(
            lambda: (
                set(statuses()) >= {"frames", "xanes"}
                and all(s in final for s in statuses().values())
            ),
            timeout=240,
        )
        assert statuses() == {"frames": "complete", "xanes": "complete"}
        stats = client["analysis"][uid]["frames"]["frame_stats"].read()
        assert len(stats) == N_ENERGIES + FLAT_FRAMES
        # flats: 1..N_FLATS at each of the two flat energies, one stream; primary 1..N
        assert sorted(stats["seq_num"].tolist()) == sorted(
            [*range(1, FLAT_FRAMES + 1), *range(1, N_ENERGIES + 1)]
        )
        rows = client["analysis"][uid]["xanes"]["frames"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        assert sorted(rows["energy"].tolist()) == pytest.approx(sorted(energies()))
        # what the new process rebuilt from raw/ is marked so: the whole primary stream (its
        # descriptor was lost), and the flats too when the start was
        rebuilt = N_ENERGIES + (FLAT_FRAMES if kill_before == "start" else 0)
        assert int(stats["recovered"].sum()) == rebuilt
        # the scenario happened: the restarted consumer saw the run's documents go missing
        lost = value(scrape(up.metrics["analysis"]), "beamwatch_messages_lost_total")
        assert lost > 0
    finally:
        client.context.close()
        pub.close()
        up.stop()


# two Tiled starts and a beamwatch up: 5 to 6 minutes on the loaded 2-core machine
@pytest.mark.timeout(900)
def test_events_lost_while_tiled_is_down_at_the_stop_are_recovered_when_it_is_back(
    tmp_path, embedded_tiled
):
    """The analysis consumer missed a primary Event (SIGKILLed), and Tiled is down when the
    run's stop comes, so the lost Event's readings cannot be read from ``raw/`` then. Before,
    the recovery was tried once, at the stop: the frame was rebuilt without its energy and the
    ``xanes`` pipeline failed. Now it waits (``recovery_timeout``) for Tiled to be back."""
    # Tiled's restart takes 1 to 2 minutes on a loaded 2-core machine
    up = UpProcess(
        tmp_path,
        embedded_tiled,
        BEAMWATCH_REORDER_TIMEOUT="1",
        BEAMWATCH_RECOVERY_TIMEOUT="600",
    )
    pub = Publisher(up.in_address, serializer=serialization.dumps)
    client = from_uri(up.tiled, api_key=up.api_key())
    try:
        for role in ("raw", "analysis"):
            wait_until(lambda r=role: _pinged(up, pub, r), timeout=60, interval=0.05)
        gate = KillingGate(up, pub, "event", client)
        gate.tiled_to_kill = embedded_tiled
        RE = RunEngine({})
        RE.subscribe(gate)
        txm = small_txm(up.detector_dir, "stream", seed=19)
        (uid,) = RE(xanes_scan_plan(txm, energies(), n_flats=N_FLATS))
        assert gate.state == "back"
        # the analysis consumer got the stop (and gave up on the lost Event) with Tiled down
        samples = lambda: scrape(up.metrics["analysis"])  # noqa: E731
        wait_until(
            lambda: value(samples(), "beamwatch_messages_received_total", document="stop") >= 1,
            timeout=60,
        )
        wait_until(
            lambda: value(samples(), "beamwatch_messages_lost_total", kind="event") >= 1,
            timeout=60,
        )
        embedded_tiled.start()
        final = ("complete", "incomplete", "failed", "interrupted")

        def statuses():
            try:
                analysis = client["analysis"][uid]
                return {name: analysis[name].metadata.get("status") for name in analysis}
            except KeyError:
                return {}

        wait_until(
            lambda: (
                set(statuses()) >= {"frames", "xanes"}
                and all(s in final for s in statuses().values())
            ),
            timeout=240,
        )
        assert statuses() == {"frames": "complete", "xanes": "complete"}
        rows = client["analysis"][uid]["xanes"]["frames"].read()
        assert sorted(rows["seq_num"].tolist()) == list(range(1, N_ENERGIES + 1))
        assert sorted(rows["energy"].tolist()) == pytest.approx(sorted(energies()))
        assert rows[rows["seq_num"] == 2]["recovered"].tolist() == [True]
    finally:
        if embedded_tiled.proc is None or embedded_tiled.proc.poll() is not None:
            embedded_tiled.start()  # the session's server, for the tests after this one
        client.context.close()
        pub.close()
        up.stop()
