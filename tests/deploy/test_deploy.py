"""deploy/ files parse, name existing entry points, and the production Tiled config serves."""

from __future__ import annotations

import configparser
import os
import secrets
import shlex
import socket
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.core.settings import load_settings
from tests.conftest import BIN, REPO, free_port

DEPLOY = REPO / "deploy"


def test_beamwatch_settings_file_is_valid():
    s = load_settings(DEPLOY / "beamwatch.yml")
    assert s.tiled.url == "http://127.0.0.1:8000"
    # The production Tiled lets the live page's origin read from the browser.
    tiled_config = yaml.safe_load((DEPLOY / "tiled" / "config.yml").read_text())
    assert s.web_url in tiled_config["allow_origins"]
    assert s.bus.in_address.startswith("tcp://127.0.0.1:")
    assert s.bus.mode == "nats" and s.nats.replicas == 3


def test_nats_cluster_config_is_accepted_by_the_server(tmp_path):
    """``nats-server -t`` checks the configuration file of deploy/nats/ (no server starts)."""
    from services.bus.nats_server import nats_server_binary

    env = dict(os.environ, NATS_SERVER_NAME="nats-1", BEAMWATCH_NATS_PASSWORD="x")
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    # the store directory of a real node does not exist here
    (tmp_path / "nats.conf").write_text(conf.replace("/var/lib/nats", str(tmp_path / "js")))
    result = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(tmp_path / "nats.conf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "unit", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name
)
def test_systemd_units_name_installed_entry_points(unit):
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(unit)
    argv = shlex.split(parser["Service"]["ExecStart"])
    program = Path(argv[0]).name
    assert (BIN / program).exists(), f"{unit.name}: {program} is not installed by the project"
    if program == "beamwatch":
        from services.cli import build_parser

        args = build_parser().parse_args(argv[1:])
        if args.verb in ("web", "bridge", "worker"):
            assert unit.name == f"beamwatch-{args.verb}.service"
        else:
            assert args.verb == "consume" and args.role in unit.name
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_prometheus_scrapes_the_configured_metrics_ports():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for sc in prom["scrape_configs"] for c in sc["static_configs"] for t in c["targets"]
    }
    s = load_settings(DEPLOY / "beamwatch.yml")
    assert targets == {f"127.0.0.1:{s.metrics.raw_port}", f"127.0.0.1:{s.metrics.analysis_port}"}


def test_tiled_config_validates_against_tiled_schema():
    import jsonschema
    import tiled

    schema_path = Path(tiled.__file__).parent / "config_schemas" / "service_configuration.yml"
    schema = yaml.safe_load(schema_path.read_text())
    config = yaml.safe_load((DEPLOY / "tiled" / "config.yml").read_text())
    jsonschema.validate(config, schema)
    assert config["trees"][0]["args"]["uri"] == "${BEAMWATCH_CATALOG_URI}"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_production_tiled_with_postgresql_and_redis(tmp_path):
    if not _reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    dbname = f"beamwatch_test_{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"CREATE DATABASE {dbname}"],
        capture_output=True,
        text=True,
    )
    if created.returncode != 0:
        pytest.skip(f"cannot create a PostgreSQL database: {created.stderr.strip()}")
    text = (
        (DEPLOY / "tiled" / "config.yml").read_text().replace("/var/lib/beamwatch", str(tmp_path))
    )
    port = free_port()
    text = text.replace("port: 8000", f"port: {port}")
    (tmp_path / "tiled" / "data").mkdir(parents=True)
    (tmp_path / "detector").mkdir()
    config = tmp_path / "config.yml"
    config.write_text(text)
    key = secrets.token_hex(8)
    env = dict(os.environ)
    env.update(
        TILED_SINGLE_USER_API_KEY=key,
        BEAMWATCH_CATALOG_URI=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}",
        BEAMWATCH_REDIS_URI="redis://127.0.0.1:6379",
    )
    log = open(tmp_path / "tiled.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "tiled"), "serve", "config", str(config)], env=env, stdout=log, stderr=log
    )
    try:
        from tiled.client import from_uri

        from services.runtime.supervisor import wait_for_tiled

        wait_for_tiled(f"http://127.0.0.1:{port}", timeout=120)
        client = from_uri(f"http://127.0.0.1:{port}", api_key=key)
        node = client.create_container("analysis").write_array(np.arange(6.0), key="a")
        node.patch(np.array([6.0, 7.0]), offset=(6,), extend=True)
        np.testing.assert_array_equal(client["analysis"]["a"].read(), np.arange(8.0))
        client.context.close()
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-c",
                f"DROP DATABASE IF EXISTS {dbname}",
            ],
            capture_output=True,
        )
