"""What one run costs the Tiled server, in requests: counted for real from the server's own
access log while a XANES run goes through the real stack (RunEngine, 0MQ proxy, bridge,
JetStream, the raw and the analysis consumer, a real Tiled server).

The Tiled server bounds how fast workers get through a queue of XANES runs (README, "Worker
scaling"), and most of what a run cost it were metadata reads whose answers the writer knew
already: the same containers looked up again for every array, an existence check (a 404)
before every node created, a status re-read after the node was created with it. These bounds
fail on that code (measured 2026-11-30 with this test: 67 metadata reads under ``analysis/``
and 13 under ``raw/``, of 189 requests; after: 3 and 9, of 116) and keep such reads from
coming back; the reads a correctness rule needs (``services.tiled.applier``) are inside them.
"""

from __future__ import annotations

from bluesky import RunEngine

from benchmarks.tiled_requests import Request, read_log, summary
from bluesky_plans.plans import xanes_scan_plan
from services.runtime.consumer import Consumer
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import N_FLATS
from tests.services.test_jetstream_bus import (
    BridgeThread,
    assert_run_exactly_once,
    ping_until_received,
)
from tests.sim import energies, small_txm

#: At most this many metadata reads (GET /api/v1/metadata/...) under ``analysis/`` for the
#: run below (``frames`` and ``xanes``; 67 before the applier stopped re-reading what it
#: knew, 3 after): the status read before ``complete`` is written (one per pipeline: a
#: rejected write may have been noted by another process) and the ``analysis`` root once per
#: process (twice when two spool lanes race for it); the rest is margin for a retried write.
MAX_ANALYSIS_METADATA_READS = 8
#: ... and under ``raw/`` (bluesky's TiledWriter, made retry-safe by ``raw_writer``; 13
#: before, 9 after: the ``raw`` root, the run's node for its status, each stream's table
#: read back before the run is called complete, and TiledWriter's own look-ups).
MAX_RAW_METADATA_READS = 11


def _under(requests: list[Request], root: str, kind: str) -> list[Request]:
    prefix = f"/api/v1/metadata/{root}"
    return [r for r in requests if r.kind == kind and r.path.startswith(prefix)]


def test_a_xanes_run_costs_tiled_few_metadata_reads(jetstream_settings, tiled_server, tiled_client):
    settings, detector = jetstream_settings
    log = tiled_server.settings.data_dir / "tiled.log"
    bridge = BridgeThread(settings)
    raw, ana = Consumer("raw", settings), Consumer("analysis", settings)
    raw.start()
    ana.start()
    pub = ping_until_received(settings, (raw, ana))
    try:
        start = log.stat().st_size
        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(
            xanes_scan_plan(small_txm(detector, "event", seed=5), energies(), n_flats=N_FLATS)
        )

        # Done when both consumers have released the run: every write of it is in Tiled.
        # (Waited for on the consumers, not by reading Tiled, which would count itself.)
        def released() -> bool:
            consumers = (raw, ana)
            return all(
                uid in c.runs_source.claimed and not c.runs_source.owned_runs for c in consumers
            )

        wait_until(released, 180)
        requests = read_log(log, start, log.stat().st_size)
    finally:
        pub.close()
        raw.stop()
        ana.stop()
        bridge.stop()

    # the run is whole and once, and both pipelines ended complete
    assert_run_exactly_once(tiled_client, uid)
    for pipeline in ("frames", "xanes"):
        assert tiled_client["analysis"][uid][pipeline].metadata["status"] == "complete"

    analysis_reads = _under(requests, "analysis", "metadata read")
    raw_reads = _under(requests, "raw", "metadata read")
    listing = "\n".join(
        [
            f"{len(analysis_reads)} metadata reads under analysis/, {len(raw_reads)} under raw/",
            summary(requests),
            *(f"{r.method} {r.path} {r.status}" for r in requests),
        ]
    )
    assert len(analysis_reads) <= MAX_ANALYSIS_METADATA_READS, listing
    assert len(raw_reads) <= MAX_RAW_METADATA_READS, listing
    # every container, array and table of the run was created without asking first whether
    # it was there (a 404)
    asked = [r for r in analysis_reads if r.status == 404 and f"/analysis/{uid}" in r.path]
    assert not asked, listing
