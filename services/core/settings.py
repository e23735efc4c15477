"""All beamwatch settings: one pydantic-settings model (env prefix ``BEAMWATCH_``, YAML file)."""

from __future__ import annotations

import os
import re
import secrets
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

API_KEY_FILENAME = "tiled_api_key"
#: The YAML file :func:`load_settings` is reading (the settings sources are built per class).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("beamwatch_config_file", default=None)


class TiledSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    #: External server: when set, ``up`` does not start a Tiled server and uses this URL.
    url: str | None = None
    #: SQLAlchemy URI of the catalog; default SQLite under the data dir.
    catalog_uri: str | None = None
    #: Streaming cache: "memory" for the embedded default, or redis://host:port.
    cache_uri: str = "memory"
    #: Directories, besides the data dir's ``detector/``, whose detector files Tiled may serve
    #: (the embedded server's ``readable_storage``). A Resource / StreamResource whose file,
    #: resolved (symlinks, ``..``), lies outside all of them is refused at ingestion. In the
    #: environment a JSON list; in YAML a list or one string of paths joined by ``os.pathsep``.
    readable_roots: list[Path] = Field(default_factory=list)
    #: Longest wait (seconds) for any answer of Tiled to a consumer's request, whole requests
    #: included: a request that gets no answer in that time is abandoned and retried (every
    #: write is idempotent, so one the server did commit is not doubled).
    request_timeout: float = Field(20.0, gt=0)
    #: Longest wait (seconds) of ``up`` and the demo for the Tiled server they started to answer
    #: its first request; on a loaded machine its start can take minutes.
    start_timeout: float = Field(300.0, gt=0)

    @field_validator("readable_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return yaml.safe_load(text)
            return [part for part in text.split(os.pathsep) if part]
        return value


class BusSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    in_address: str = "tcp://127.0.0.1:5577"
    out_address: str = "tcp://127.0.0.1:5578"
    #: Where the XANES consumer publishes the live drift (JSON) for alignment feedback.
    feedback_address: str = "tcp://127.0.0.1:5579"
    #: Receive high-water mark of consumers (messages held before 0MQ drops).
    rcvhwm: int = Field(100_000, ge=0)
    #: ``nats``: a bridge copies the proxy's documents into a NATS JetStream stream and the
    #: consumers read it durably (acked, resumed after a crash, runs shared by workers);
    #: ``zmq``: the consumers subscribe to the proxy directly (loss detection and recovery).
    mode: Literal["zmq", "nats"] = "nats"
    #: An existing NATS server or cluster (``nats://host:4222``); unset: ``up`` starts one.
    nats_url: str | None = None


class NatsSettings(BaseModel):
    """The JetStream bus (``bus.mode: nats``); see ``services/bus/jetstream.py``."""

    model_config = ConfigDict(extra="forbid")

    #: The embedded server ``up`` starts when ``bus.nats_url`` is unset (storage under
    #: ``<data dir>/nats``).
    host: str = "127.0.0.1"
    port: int = Field(4223, ge=0, le=65535)
    #: Largest message the embedded server accepts (an Event carrying a frame), bytes.
    max_payload: int = Field(16 * 1024 * 1024, gt=0)
    stream: str = Field("BEAMWATCH", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: Subjects are ``<subject_prefix>.<beamline>.<run uid>.<document name>``.
    subject_prefix: str = Field("beamwatch.docs", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    beamline: str = Field("local", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: Copies of the stream in a NATS cluster (1 for the embedded server).
    replicas: int = Field(1, ge=1, le=5)
    #: Seconds a re-published document (same message id) is dropped as a duplicate.
    duplicate_window: float = Field(120.0, gt=0)
    #: How long the stream keeps documents (seconds); runs older than this cannot be replayed.
    max_age: float = Field(7 * 24 * 3600.0, gt=0)
    #: Seconds before an unacknowledged document (or run claim) goes to another consumer; a
    #: worker that dies hands its runs on after this time. Must exceed the longest stall of a
    #: live worker (its claims are kept alive every ack_wait / 3).
    ack_wait: float = Field(30.0, gt=0)
    #: Documents a consumer may hold unacknowledged.
    max_ack_pending: int = Field(1024, gt=0)
    #: Runs one worker (consumer process) works on at a time.
    max_runs: int = Field(4, gt=0)
    #: A run whose claim comes back more often than this (every worker that took it died or
    #: stalled, e.g. a document that crashes the process) is given up: marked ``failed`` in
    #: Tiled, counted in ``beamwatch_runs_given_up_total``, never handed out again. A clean
    #: stop of a consumer mid-run also hands its runs on, so keep room for restarts.
    #: 0: hand a run on for ever.
    max_run_deliveries: int = Field(5, ge=0)
    #: Claim no new run while this many after-scan stages (a run's analysis after its stop)
    #: are queued or running in this process; 0: no limit. A run counts against ``max_runs``
    #: only until its stop is read, so without this limit the first worker takes a whole
    #: queue of finished runs and the others idle. A limit delays new runs (their live
    #: results too) while the stages run, when no other worker is there to take them.
    max_after_scan: int = Field(0, ge=0)
    #: Prefix of the durable consumer names (several beamwatch instances on one stream).
    durable_prefix: str = Field("beamwatch", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    #: ``zmq``: the bridge reads the 0MQ proxy. ``nats``: Bluesky already publishes to NATS
    #: (``bluesky-nats``): the bridge reads ``source_subject`` durably and copies each
    #: document into the stream under beamwatch's subjects.
    source: Literal["zmq", "nats"] = "zmq"
    source_subject: str = "events.volatile.>"
    #: Bridges ``up`` runs on the 0MQ proxy (source ``zmq``), each publishing every document
    #: (the duplicate window keeps one copy): a bridge SIGKILLed or restarting loses what its
    #: socket held, the others still store it. 1: a single bridge (what the proxy sends while
    #: it is down is lost). With source ``nats`` one bridge reads the source durably.
    bridges: int = Field(2, ge=1, le=8)
    #: Metrics of the bridge on ``metrics.host``; 0: not served. Bridge N (``beamwatch bridge
    #: --instance N``) serves on this port + N - 1.
    bridge_metrics_port: int = Field(9103, ge=0, le=65535)


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    raw_port: int = Field(9101, ge=0, le=65535)
    analysis_port: int = Field(9102, ge=0, le=65535)
    supervisor_port: int = Field(9100, ge=0, le=65535)


class WebSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The live page (``beamwatch up`` serves it; it reads only from Tiled).
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    #: Seconds between polls of Tiled on top of its websocket notifications.
    poll_seconds: float = Field(2.0, gt=0)


class DaskSettings(BaseModel):
    """Slab-by-slab processing of tomograms too large for memory, on a Dask cluster."""

    model_config = ConfigDict(extra="forbid")

    #: An existing scheduler (``tcp://host:8786``, e.g. started by dask-jobqueue or on
    #: Kubernetes); None = a LocalCluster of worker processes on this machine.
    scheduler_address: str | None = None
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    #: Memory cap of each local worker process (MB); slab sizes are chosen to stay under it.
    memory_limit_mb: float = Field(2048.0, gt=0)
    #: A tomogram whose float32 volume is larger than this (MB) goes slab by slab through
    #: the cluster; smaller ones stay on the in-memory path.
    threshold_mb: float = Field(4096.0, ge=0)
    #: Intermediate volumes (chunked Zarr); default ``<data dir>/slabs``.
    work_dir: Path | None = None
    #: Slices of context of the particle instances on each side of a slab.
    particle_halo: int = Field(24, ge=1)
    #: Core slices (detector rows) per slab of every stage; None = the most that fit under
    #: ``memory_limit_mb`` (services.slabs.tomo.slab_slices).
    slab_slices: int | None = Field(None, ge=1)


class AfterScanTimeout(BaseModel):
    """How long a tomogram's after-scan stage may run in its child process before the child
    is killed and the stage fails (``services.analysis.child_stage``).

    The time limit grows with the volume: ``base_s`` plus ``per_mvoxel_s`` per million voxels
    (rows x columns x columns of the projections). Measured on 2 shared cores (README, issue
    13/14): a 512^3 stage (134 Mvoxels) took 10 to 30 min (crack map 484 s and particle stage
    1188 s at a load of 11); the default gives it 1800 + 40 x 134 = 7168 s (about 2 h), and a
    64 x 256 x 256 one (4.2 Mvoxels) 1968 s. ``idle_s``, when set, also ends a stage whose child
    sent no write for that long once the stage started (after the child's imports). The crack
    map writes a slice at a time, but the reconstruction and the particle stage write only at
    their ends (a 512^3 particle stage: about 20 min without a write), so keep it well above
    the longest silent step of your volumes.
    """

    model_config = ConfigDict(extra="forbid")

    base_s: float = Field(1800.0, gt=0)
    per_mvoxel_s: float = Field(40.0, ge=0)
    idle_s: float | None = Field(None, gt=0)

    def limit(self, voxels: int | None) -> float:
        """Seconds a stage of ``voxels`` voxels may run (``base_s`` when the size is unknown)."""
        return self.base_s + self.per_mvoxel_s * max(0, voxels or 0) / 1e6


class BeamwatchSettings(BaseSettings):
    """Effective settings: defaults < YAML file < environment (``BEAMWATCH_TILED__PORT=...``)."""

    model_config = SettingsConfigDict(
        env_prefix="BEAMWATCH_", env_nested_delimiter="__", extra="forbid"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments (command line) > environment > the YAML file of
        :func:`load_settings` > defaults."""
        return init_settings, env_settings, _YamlFileSource(settings_cls, _CONFIG_FILE.get())

    data_dir: Path = Path("beamwatch-data")
    tiled: TiledSettings = TiledSettings()
    bus: BusSettings = BusSettings()
    nats: NatsSettings = NatsSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    dask: DaskSettings = DaskSettings()
    #: Seconds after which a run with no documents and no stop is declared to have lost its stop.
    run_idle_timeout: float = Field(600.0, gt=0)
    #: how long a seq_num gap (or a stop before its last events) is waited for before the
    #: missing events are declared lost and recovered from Tiled / the detector file
    reorder_timeout: float = Field(2.0, gt=0)
    #: how long the analysis consumer waits, at a run's stop, for ``raw/`` in Tiled to hold
    #: the run's documents it lost (Tiled restarting, the raw consumer behind) before it calls
    #: the frames it cannot rebuild missing (the run ``incomplete``)
    recovery_timeout: float = Field(120.0, gt=0)
    #: Documents a consumer holds between its bus thread and its dispatch thread, and about how
    #: many MB of arrays they may hold. When full, the bus thread waits (back-pressure): 0MQ
    #: then buffers up to ``bus.rcvhwm`` messages and drops beyond, counted as bus losses.
    dispatch_queue_documents: int = Field(1000, ge=1)
    dispatch_queue_mb: float = Field(256.0, gt=0)
    #: Longest backoff between Tiled write retries (seconds).
    retry_max_backoff: float = Field(5.0, gt=0)
    #: The raw consumer writes the frames inside Events to its own Zarr arrays under
    #: ``<data_dir>/raw_frames`` and registers them in Tiled as external data (as a detector
    #: file), instead of sending every frame through Tiled's HTTP API (issue 14: 512 x 512
    #: frames at 100 events/s). Used with the embedded Tiled server (which reads that
    #: directory), or with ``tiled.url`` when the directory lies inside ``tiled.readable_roots``
    #: (that server must read it); otherwise frames go through the API.
    raw_frame_files: bool = True
    #: Threads of a consumer writing to Tiled, each applying a different run's writes: a
    #: request that hangs until ``tiled.request_timeout`` holds only its own run.
    spool_workers: int = Field(4, ge=1)
    #: A tomogram's in-memory after-scan stage (reconstruction, crack and particle maps,
    #: figures) runs in a child process of the analysis consumer, so that the live frames of
    #: other runs keep its GIL (issue 14, point 7); False runs it on a thread of the consumer.
    after_scan_child: bool = True
    #: After-scan stages (maps, reconstructions, recovering lost frames) a consumer runs at
    #: once, each on a thread off the dispatch thread. With 2, a tomogram's long stage does not
    #: hold back the end of the next run; on a node with one core, 1 keeps a worker to that
    #: core (``benchmarks.worker_scaling --cpus-per-worker``).
    after_scan_workers: int = Field(2, ge=1)
    #: Numeric threads (torch, BLAS, OpenMP) of that child; None = every core but one.
    after_scan_threads: int | None = Field(None, ge=1)
    #: When that child is deemed hung: killed, its stages ``failed`` (``StageTimeout: ...``),
    #: counted in ``beamwatch_after_scan_timeouts_total``; the consumer goes on.
    after_scan_timeout: AfterScanTimeout = AfterScanTimeout()
    log_level: str = "INFO"

    # ---- derived paths -------------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def tiled_dir(self) -> Path:
        return self.data_dir / "tiled"

    @property
    def detector_dir(self) -> Path:
        return self.data_dir / "detector"

    @property
    def raw_frames_dir(self) -> Path:
        """Where the raw consumer writes the frames of Events (see ``raw_frame_files``)."""
        return self.data_dir / "raw_frames"

    @property
    def raw_frames_readable(self) -> Path | None:
        """``raw_frames_dir`` (resolved) when Tiled reads the raw consumer's frame files there,
        else None (frames go through Tiled's API)."""
        if not self.raw_frame_files:
            return None
        frames = self.raw_frames_dir.resolve()
        if self.tiled.url is None or any(frames.is_relative_to(r) for r in self.readable_roots):
            return frames
        return None

    @property
    def slab_work_dir(self) -> Path:
        return self.dask.work_dir if self.dask.work_dir is not None else self.data_dir / "slabs"

    @property
    def readable_roots(self) -> list[Path]:
        """Resolved directories Tiled may read detector files from: ``detector/`` first."""
        roots = [self.detector_dir.resolve()]
        for root in self.tiled.readable_roots:
            resolved = Path(root).expanduser().resolve()
            if resolved not in roots:
                roots.append(resolved)
        return roots

    @property
    def nats_url(self) -> str:
        """The JetStream server: ``bus.nats_url``, else the embedded one."""
        return self.bus.nats_url or f"nats://{self.nats.host}:{self.nats.port}"

    @property
    def tiled_url(self) -> str:
        if self.tiled.url:
            return self.tiled.url.rstrip("/")
        return f"http://{self.tiled.host}:{self.tiled.port}"

    @property
    def web_url(self) -> str:
        return f"http://{self.web.host}:{self.web.port}"

    def resolved_api_key(self) -> str:
        """The Tiled API key: from config/env, else generated once into the data dir (0600)."""
        if self.tiled.api_key is not None:
            return self.tiled.api_key.get_secret_value()
        path = self.data_dir / API_KEY_FILENAME
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        return key

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if data["tiled"].get("api_key"):
            data["tiled"]["api_key"] = "**********"
        if data["bus"].get("nats_url"):  # nats://user:password@host, comma-separated
            data["bus"]["nats_url"] = re.sub(
                r"//[^@/,]*@", "//**********@", data["bus"]["nats_url"]
            )
        data["spool_dir"] = str(self.spool_dir)
        return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> BeamwatchSettings:
    """Build settings: defaults < YAML file < environment < ``overrides`` (command line).

    The file is read by pydantic-settings' ``YamlConfigSettingsSource`` (see
    :meth:`BeamwatchSettings.settings_customise_sources`).

    Raises
    ------
    ValueError
        If the file is missing, is not YAML, its top level is not a mapping, or a value is
        unknown or invalid (pydantic's ``ValidationError`` names the setting).
    """
    if config_file is not None and not Path(config_file).is_file():
        raise ValueError(f"config file {config_file} does not exist")
    token = _CONFIG_FILE.set(Path(config_file) if config_file is not None else None)
    try:
        return BeamwatchSettings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _CONFIG_FILE.reset(token)


class _YamlFileSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, with errors that name the file and what is wrong."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            loaded = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {file_path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ValueError(
                f"config file {file_path}: top level must be a mapping, "
                f"got a {type(loaded).__name__}"
            )
        return loaded
