"""All beamwatch settings: one pydantic-settings model (env prefix ``BEAMWATCH_``, YAML file)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

API_KEY_FILENAME = "tiled_api_key"


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


class BeamwatchSettings(BaseSettings):
    """Effective settings: defaults < YAML file < environment (``BEAMWATCH_TILED__PORT=...``)."""

    model_config = SettingsConfigDict(
        env_prefix="BEAMWATCH_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Path("beamwatch-data")
    tiled: TiledSettings = TiledSettings()
    bus: BusSettings = BusSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    dask: DaskSettings = DaskSettings()
    #: Seconds after which a run with no documents and no stop is declared to have lost its stop.
    run_idle_timeout: float = Field(600.0, gt=0)
    #: how long a seq_num gap (or a stop before its last events) is waited for before the
    #: missing events are declared lost and recovered from Tiled / the detector file
    reorder_timeout: float = Field(2.0, gt=0)
    #: Longest backoff between Tiled write retries (seconds).
    retry_max_backoff: float = Field(5.0, gt=0)
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
        data["spool_dir"] = str(self.spool_dir)
        return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> BeamwatchSettings:
    """Build settings from an optional YAML file; environment variables win over the file.

    Raises
    ------
    ValueError
        If the file is missing, is not YAML, or its top level is not a mapping.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text())
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path}: top level must be a mapping")
        file_values = loaded
    env_settings = BeamwatchSettings()
    env_set = _env_overrides()
    merged = _deep_merge(file_values, env_set)
    merged = _deep_merge(merged, {k: v for k, v in overrides.items() if v is not None})
    if not merged:
        return env_settings
    return BeamwatchSettings(**merged)


def _env_overrides() -> dict[str, Any]:
    """The BEAMWATCH_* environment variables as a nested dict (so they win over the YAML)."""
    out: dict[str, Any] = {}
    for name, value in os.environ.items():
        if not name.startswith("BEAMWATCH_"):
            continue
        keys = name[len("BEAMWATCH_") :].lower().split("__")
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
