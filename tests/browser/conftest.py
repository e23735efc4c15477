"""Fixtures of the browser tests: one ``beamwatch up`` for the session, a fresh page per test.

Every scenario sets up what it shows (its own run, its own page), so the scenarios pass in any
order; runs that several tests only read (small finished tomograms and XANES scans) are made
once, by whichever test asks first. The page keeps a history of what it has shown
(``window.bw.state.history``); assertions read it, so "the drift plot gained points while the
scan ran" is checked on what the page displayed, not on timing. Screenshots go to
``test-artifacts/screenshots/`` (or ``$BEAMWATCH_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO, UpProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = (
    Path(os.environ.get("BEAMWATCH_TEST_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
)


def skip_without_browser() -> None:
    """Skip the calling test module (at import) when Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is not installed (/usr/bin/chromium); `make test` installs it "
            "when it runs as root with apt-get (tests/browser/install-chromium.sh)",
            allow_module_level=True,
        )
    pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")


@pytest.fixture(scope="session")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    proc = UpProcess(tmp_path_factory.mktemp("live"), BEAMWATCH_WEB__POLL_SECONDS="0.5")
    yield proc
    proc.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Chromium, closed when the browser tests end: Playwright's sync API keeps its asyncio loop
    marked running in the main thread while it is open, which breaks ``asyncio.run()`` in any
    later test of the session."""
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser: Any, url: str) -> Any:
    """A new page at ``url``; ``page.errors`` collects the page's uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.errors = errors
    pg.goto(url)
    return pg


@pytest.fixture
def page(browser: Any, up: UpProcess) -> Iterator[Any]:
    """A fresh page on the live page of the session's ``up`` (follows the newest run)."""
    pg = open_page(browser, up.web + "/")
    yield pg
    pg.context.close()


@pytest.fixture(scope="session")
def publisher(up: UpProcess) -> Iterator[Any]:
    """A RunEngine publishing to the bus of `up` with the documented msgpack serializer."""
    from bluesky import RunEngine
    from bluesky.callbacks.zmq import Publisher

    from services.bus.subscriber import wait_until_delivered
    from services.core import serialization
    from services.runtime.demo import _pings_seen

    settings = up.settings()
    pub = Publisher(settings.bus.in_address, serializer=serialization.dumps)
    wait_until_delivered(lambda: pub("beamwatch_ping", {}), lambda: _pings_seen(settings))
    RE = RunEngine({})
    RE.subscribe(pub)
    yield RE, settings
    pub.close()


def state(page: Any, expr: str) -> Any:
    return page.evaluate(f"() => {expr}")


def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_page(page: Any, expr: str, timeout_s: float) -> None:
    from playwright import sync_api

    try:
        page.wait_for_function(f"() => {expr}", timeout=timeout_s * 1000, polling=200)
    except sync_api.TimeoutError:
        seen = page.evaluate(
            "() => JSON.stringify({...bw.state, runs: bw.state.runs.map(r => [r.uid, r.status])})"
        )
        shoot(page, "timeout")
        raise AssertionError(
            f"page never showed {expr} within {timeout_s} s; state: {seen}"
        ) from None


@dataclass
class FinishedRun:
    uid: str
    kind: str  # "tomo" | "xanes"
    voxel_size_um: float | None


def _client(up: UpProcess) -> Any:
    from tiled.client import from_uri

    return from_uri(up.tiled, api_key=up.api_key())


def _finish(up: UpProcess, uid: str, frames: int) -> None:
    from services.runtime.demo import wait_for_run

    client = _client(up)
    try:
        statuses = wait_for_run(client, uid, frames, timeout=240)
    finally:
        client.context.close()
    assert set(statuses.values()) == {"complete"}, statuses


@pytest.fixture(scope="session")
def small_tomograms(up: UpProcess, publisher: Any) -> list[FinishedRun]:
    """Two small finished tomograms (crack map and particles), different samples and voxels."""
    from bluesky_plans.devices import SimTomoStation
    from bluesky_plans.plans import tomo_scan_plan
    from synthetic.cathode import CathodeParams, make_cathode_volume
    from synthetic.scan import simulate_scan

    RE, settings = publisher
    runs = []
    angles = np.linspace(0.0, 180.0, 60, endpoint=False)
    for seed, voxel in ((21, 0.5), (22, 0.4)):
        # particles of 16 px in 24 slices: 10-12 whole particles (touching no face of the
        # volume) that the pipeline finds; with the default 24 px the only "whole" particle
        # of seed 21 was a false one in the binder, which the instance acceptance drops
        volume = make_cathode_volume(
            (24, 128, 128), seed=seed, params=CathodeParams(particle_diameter_px=16.0)
        )
        frames = simulate_scan(volume.attenuation, angles, seed=seed + 1)
        station = SimTomoStation.from_frames(
            angles, frames.projections, frames.flat, frames.dark, settings.detector_dir
        )
        (uid,) = RE(tomo_scan_plan(station, list(angles), md={"voxel_size_um": voxel}))
        runs.append(FinishedRun(uid, "tomo", voxel))
    for run in runs:
        _finish(up, run.uid, len(angles))
    return runs


@pytest.fixture(scope="session")
def small_xanes_scans(up: UpProcess, publisher: Any) -> list[FinishedRun]:
    """Two small finished XANES scans (edge-energy maps) of different fields of view."""
    from bluesky_plans.devices import SimTXM
    from bluesky_plans.plans import xanes_scan_plan
    from synthetic.txm import TxmScene, default_energies

    RE, settings = publisher
    runs = []
    n = 12
    for seed in (31, 32):
        scene = TxmScene.random(seed, shape=(128, 128), n_particles=4, n_scans=1, n_frames=n)
        txm = SimTXM(scene, settings.detector_dir, seed=seed)
        (uid,) = RE(xanes_scan_plan(txm, default_energies(n), n_flats=1))
        runs.append(FinishedRun(uid, "xanes", None))
    for run in runs:
        _finish(up, run.uid, n)
    return runs
