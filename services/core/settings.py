"""All beamwatch settings: one pydantic-settings model (env prefix ``BEAMWATCH_``, YAML file)."""

from __future__ import annotations

import os
import secrets
from contextvars import ContextVar
from pathlib import Path
from typing import Any

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
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    #: Seconds after which a run with no documents and no stop is declared to have lost its stop.
    run_idle_timeout: float = Field(600.0, gt=0)
    #: how long a seq_num gap (or a stop before its last events) is waited for before the
    #: missing events are declared lost and recovered from Tiled / the detector file
    reorder_timeout: float = Field(2.0, gt=0)
    #: Documents a consumer holds between its bus thread and its dispatch thread, and about how
    #: many MB of arrays they may hold. When full, the bus thread waits (back-pressure): 0MQ
    #: then buffers up to ``bus.rcvhwm`` messages and drops beyond, counted as bus losses.
    dispatch_queue_documents: int = Field(1000, ge=1)
    dispatch_queue_mb: float = Field(256.0, gt=0)
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
