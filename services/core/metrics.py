"""Prometheus metrics of a beamwatch process, served over HTTP on 127.0.0.1."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)


class Metrics:
    """The metrics every beamwatch consumer exposes; one registry per process (or per test)."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "beamwatch_messages_received",
            "Bus messages received, by document name.",
            ["service", "document"],
            registry=r,
        )
        self.messages_malformed = Counter(
            "beamwatch_messages_malformed",
            "Bus messages dropped because they could not be decoded or validated.",
            ["service", "reason"],
            registry=r,
        )
        self.messages_lost = Counter(
            "beamwatch_messages_lost",
            "Documents detected as lost on the bus (seq_num gaps, missing start/stop, ...).",
            ["service", "kind"],
            registry=r,
        )
        self.messages_duplicated = Counter(
            "beamwatch_messages_duplicated",
            "Documents received twice (or after they were given up as lost) and dropped.",
            ["service", "kind"],
            registry=r,
        )
        self.messages_recovered = Counter(
            "beamwatch_messages_recovered",
            "Lost documents or frames recovered from the detector file or Tiled.",
            ["service", "kind"],
            registry=r,
        )
        self.event_fields_dropped = Counter(
            "beamwatch_event_fields_dropped",
            "Event fields dropped (the rest of the Event kept), by problem: undecodable, "
            "unknown key, type, dtype, shape.",
            ["service", "problem"],
            registry=r,
        )
        self.frames_processed = Counter(
            "beamwatch_frames_processed",
            "Frames processed, by pipeline.",
            ["service", "pipeline"],
            registry=r,
        )
        self.frames_unusable = Counter(
            "beamwatch_frames_unusable",
            "Frames a pipeline left out because a reading it needs (energy, angle) is unknown; "
            "the run says incomplete and names them.",
            ["service", "pipeline"],
            registry=r,
        )
        self.recoveries = Counter(
            "beamwatch_recoveries",
            "Runs whose lost documents were rebuilt at the stop (from raw/ in Tiled or the "
            "detector file); a run where nothing was lost never enters recovery.",
            ["service"],
            registry=r,
        )
        self.processing_latency = Histogram(
            "beamwatch_processing_latency_seconds",
            "Time from receiving a frame's document to its results being queued for Tiled.",
            ["service", "pipeline"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.queue_depth = Gauge(
            "beamwatch_queue_depth",
            "Items waiting: writes in the spool for Tiled (service=<role>), documents between "
            "the bus and the dispatch thread (<role>-bus), after-scan stages (<role>-after-scan).",
            ["service"],
            registry=r,
        )
        self.queue_bytes = Gauge(
            "beamwatch_queue_bytes",
            "About how many bytes of documents wait in a consumer's bus queue.",
            ["service"],
            registry=r,
        )
        self.backpressure_seconds = Counter(
            "beamwatch_backpressure_seconds",
            "Time the bus thread waited for room in the full bus queue (0MQ buffers meanwhile, "
            "then drops: see beamwatch_messages_lost_total).",
            ["service"],
            registry=r,
        )
        self.spool_runs_retrying = Gauge(
            "beamwatch_spool_runs_retrying",
            "Runs whose next write to Tiled failed and waits for its retry (their later writes "
            "wait with it; other runs' writes go on).",
            ["service"],
            registry=r,
        )
        self.tiled_write_retries = Counter(
            "beamwatch_tiled_write_retries",
            "Tiled writes retried after a failure.",
            ["service"],
            registry=r,
        )
        self.writes_rejected = Counter(
            "beamwatch_writes_rejected",
            "Writes Tiled will not accept, kept in the spool's rejected/ directory, by op.",
            ["service", "op"],
            registry=r,
        )
        self.spool_errors = Counter(
            "beamwatch_spool_errors",
            "Errors of the spool itself (write: a record could not be put on disk; worker; "
            "frame_file: a frame of an Event could not be written to its file).",
            ["service", "where"],
            registry=r,
        )
        self.resources_refused = Counter(
            "beamwatch_resources_refused",
            "Resources / StreamResources not registered in Tiled because their file lies "
            "outside every readable root (listed in the run's beamwatch_refused_resources).",
            ["service", "kind"],
            registry=r,
        )
        self.start_options_rejected = Counter(
            "beamwatch_start_options_rejected",
            "Start-document options a pipeline refused (e.g. lcf_references naming a file "
            "that is not there); the run is analysed without them and says why.",
            ["service", "option"],
            registry=r,
        )
        self.pipeline_errors = Counter(
            "beamwatch_pipeline_errors",
            "Pipelines that failed on a run.",
            ["service", "pipeline"],
            registry=r,
        )
        self.after_scan_timeouts = Counter(
            "beamwatch_after_scan_timeouts",
            "After-scan stages whose child process was killed for running past its time "
            "limit (limit=total) or for sending no write for after_scan_timeout.idle_s "
            "(limit=idle).",
            ["service", "limit"],
            registry=r,
        )
        # JetStream bus (bus.mode: nats)
        self.runs_claimed = Counter(
            "beamwatch_runs_claimed",
            "Runs this process took from the stream: first (a new run) or again (taken over "
            "from a process that died, or resumed after a restart).",
            ["service", "delivery"],
            registry=r,
        )
        self.runs_given_up = Counter(
            "beamwatch_runs_given_up",
            "Runs handed out more than nats.max_run_deliveries times (each worker that took "
            "them died or stalled): marked failed and not handed out again.",
            ["service"],
            registry=r,
        )
        self.runs_owned = Gauge(
            "beamwatch_runs_owned",
            "Runs this process holds (claimed, not yet all in Tiled).",
            ["service"],
            registry=r,
        )

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on host:port (port 0 picks a free port); return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(server.server_address[1])
        logger.info("metrics for %s on http://%s:%d/metrics", self.service, host, bound)
        return bound
