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
from tests.conftest import UpProcess, wait_until
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

    def _is_kill_point(self, name: str, doc: dict) -> bool:
        if self.kill_before == "start":
            return name == "start"
        return name == "descriptor" and doc.get("name") == "primary"

    def __call__(self, name: str, doc: dict) -> None:
        if self.state == "before" and self._is_kill_point(name, doc):
            if self.kill_before == "descriptor":
                # the flats are through the consumer: only what follows is lost
                uid = doc["run_start"]
                wait_until(lambda: self._flat_rows(uid) == FLAT_FRAMES, timeout=120)
            self.killed_pid = _child(self.up, "analysis")
            os.kill(self.killed_pid, signal.SIGKILL)
            wait_until(lambda: not alive(self.killed_pid), timeout=30)
            self.state = "down"
        elif self.state == "down" and self.primary_sent >= LOST_EVENTS:
            wait_until(lambda: _child(self.up, "analysis") not in (None, self.killed_pid), 60)
            wait_until(lambda: _pinged(self.up, self.pub, "analysis"), timeout=120, interval=0.1)
            self.state = "back"
        if name == "descriptor" and doc.get("name") == "primary":
            self.primary = doc["uid"]
        if name == "event" and doc["descriptor"] == self.primary:
            self.primary_sent += 1
        self.pub(name, doc)

    def _flat_rows(self, uid: str) -> int:
        try:
            return len(self.client["analysis"][uid]["frames"]["frame_stats"].read())
        except KeyError:
            return 0


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
