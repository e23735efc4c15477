"""deploy/ files parse and name existing entry points (served for real: test_production_backend)."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from services.core.settings import load_settings
from tests.conftest import BIN, REPO

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
        if args.verb == "bridge" and args.instance > 1:  # the redundant bridges
            assert unit.name == f"beamwatch-bridge-{args.instance}.service"
        elif args.verb in ("web", "bridge", "worker"):
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
    assert config["trees"][0]["args"]["uri"] == "${TILED_DEPLOY_CATALOG_URI}"


def test_every_unit_starts_with_the_shared_secrets_file(monkeypatch):
    # All units read /etc/beamwatch/secrets.env; the Tiled-only variables in it must not be
    # taken for beamwatch settings (BEAMWATCH_*), or the consumers would refuse to start.
    for line in (DEPLOY / "secrets.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, value)
    s = load_settings(DEPLOY / "beamwatch.yml")
    assert s.tiled.api_key is not None
    assert s.tiled.api_key.get_secret_value() == os.environ["TILED_SINGLE_USER_API_KEY"]
    config = (DEPLOY / "tiled" / "config.yml").read_text()
    names = {
        line.partition("=")[0]
        for line in (DEPLOY / "secrets.env.example").read_text().splitlines()
        if "=" in line
    }
    for variable in (
        "TILED_DEPLOY_CATALOG_URI",
        "TILED_DEPLOY_TABULAR_URI",
        "TILED_DEPLOY_REDIS_URI",
    ):
        assert f"${{{variable}}}" in config and variable in names
