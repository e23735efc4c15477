"""The live page as a person uses it: `beamwatch up`, real scans on the bus, headless Chromium.

Each scenario publishes its own run and opens its own page (fixtures in ``conftest.py``), so the
scenarios pass in any order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import (
    ARTIFACTS,
    open_page,
    shoot,
    skip_without_browser,
    state,
    wait_page,
)
from tests.conftest import BIN, TiledProcess, free_port, wait_until

skip_without_browser()

N_ENERGIES = 30
Z = 32  # slices of 320 x 320: segmenting one takes longer than a Tiled write, as at a beamline


# the particle table as the page shows it: {stored column: header}, and rows of cell texts
TABLE_SHOWN = """() => {
  const heads = [...document.querySelectorAll('#particles th')];
  return {
    headers: Object.fromEntries(heads.map(th => [th.dataset.column,
                                                 th.textContent.replace(/ [▲▼]$/, '')])),
    columns: heads.map(th => th.dataset.column),
    rows: [...document.querySelectorAll('#particles tr')].slice(1)
      .map(tr => [...tr.children].map(td => td.textContent)),
  };
}"""

LENGTH_COLUMNS = ("equivalent_diameter_px", "centroid_z", "centroid_y", "centroid_x")


def check_particle_table(page, table, voxel: float | None) -> None:
    """The page's particle table holds the stored table's rows, lengths times the voxel size
    (um, um², um³ in the headers) when it is known, as stored (px, px², voxels) when not."""
    shown = page.evaluate(TABLE_SHOWN)
    headers = shown["headers"]
    names = {
        "equivalent_diameter_px": "equivalent diameter",
        "centroid_z": "centroid z",
        "centroid_y": "centroid y",
        "centroid_x": "centroid x",
    }
    unit = "um" if voxel else "px"
    for column, name in names.items():
        assert headers[column] == f"{name} ({unit})", headers
    assert headers["surface_area_px2"] == ("surface area (um²)" if voxel else "surface area (px²)")
    assert headers["volume_voxels"] == ("volume (um³)" if voxel else "volume (voxels)")
    if not voxel:
        assert "um" not in page.inner_text("#particle-table").replace("volume", "")
    scale = voxel or 1.0
    powers = {c: 1 for c in LENGTH_COLUMNS} | {"surface_area_px2": 2, "volume_voxels": 3}
    by_label = {int(row[shown["columns"].index("label")]): row for row in shown["rows"]}
    assert sorted(by_label) == sorted(int(v) for v in table["label"])
    for _, particle in table.iterrows():
        row = by_label[int(particle["label"])]
        for column, power in powers.items():
            want = float(particle[column]) * scale**power
            cell = row[shown["columns"].index(column)]
            if np.isnan(want):
                assert cell == "–", (column, cell)
            else:
                assert float(cell) == pytest.approx(want, abs=6e-4, rel=1e-9), (column, cell, want)


def test_empty_catalog_says_so(browser, tmp_path):
    # its own Tiled and page (no consumers needed): the session's catalog holds other runs
    import httpx

    tiled = TiledProcess(tmp_path)
    tiled.settings.web.port = free_port()  # the origin Tiled's config allows
    tiled.start()
    web = subprocess.Popen(
        [str(BIN / "beamwatch"), "--data-dir", str(tmp_path), "web", "--tiled-url", tiled.url]
        + ["--port", str(tiled.settings.web.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = tiled.settings.web_url
        wait_until(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, timeout=60)
        page = open_page(browser, url + "/")
        try:
            _empty_catalog_says_so(page)
        finally:
            page.context.close()
    finally:
        web.terminate()
        web.wait(15)
        tiled.stop()


def _empty_catalog_says_so(page):
    wait_page(page, "window.bw && bw.state.refreshes > 0", 60)
    assert state(page, "bw.state.connected") is True
    assert state(page, "bw.state.view") == "empty"
    assert "No runs in this catalog yet" in page.inner_text("#main")
    assert page.is_visible("#no-runs")
    shoot(page, "empty-catalog")


def test_xanes_drift_plot_grows_while_the_scan_runs(page, publisher):
    import bluesky.plan_stubs as bps

    from bluesky_plans.devices import SimTXM
    from bluesky_plans.plans import xanes_scan_plan
    from synthetic.txm import TxmScene, default_energies

    RE, settings = publisher
    scene = TxmScene.random(11, shape=(192, 192), n_particles=6, n_scans=1, n_frames=N_ENERGIES)
    txm = SimTXM(scene, settings.detector_dir, seed=4)

    import httpx

    uid_box: list[str] = []

    def analysed() -> int:
        url = f"{settings.tiled_url}/api/v1/metadata/analysis/{uid_box[0]}/xanes/global_shift"
        resp = httpx.get(url, timeout=10)
        return resp.json()["data"]["attributes"]["structure"]["shape"][0] if resp.is_success else 0

    def paced(i: int, _energy: float):
        # An energy move takes 0.3 s, and the scan never runs more than 3 frames ahead of
        # the analysis (on a loaded 2-core machine it would otherwise finish before the first
        # result is written, and there would be no "while the scan runs" to look at).
        yield from bps.sleep(0.3)
        deadline = time.monotonic() + 60
        while uid_box and analysed() < i - 3 and time.monotonic() < deadline:
            yield from bps.sleep(0.2)

    def remember_uid(name: str, doc: dict) -> None:
        if name == "start":
            uid_box.append(doc["uid"])

    token = RE.subscribe(remember_uid, "start")
    try:
        (uid,) = RE(
            xanes_scan_plan(txm, default_energies(N_ENERGIES), before_point=paced, n_flats=1)
        )
    finally:
        RE.unsubscribe(token)
    # The page follows the newest run by itself and ends with every frame and the maps.
    wait_page(page, f"bw.state.selected === '{uid}' && bw.state.drift.points === {N_ENERGIES}", 120)
    wait_page(page, "bw.state.edgeMap === true", 120)
    wait_page(page, "(document.getElementById('plot-spectra').data || []).length > 0", 30)
    history = state(page, f"bw.state.history.drift.filter(h => h.uid === '{uid}')")
    # Shown while the run had no stop document yet: at least two partial drift curves.
    live = sorted({h["points"] for h in history if h["acquiring"] and 0 < h["points"] < N_ENERGIES})
    assert len(live) >= 2, f"the drift plot did not grow during the scan: {history}"
    # The plot itself holds the points (Plotly's data on the div), dy and dx.
    drift_x = state(page, "document.getElementById('plot-drift').data[0].x.length")
    assert drift_x == N_ENERGIES
    n_particles = state(
        page, "document.getElementById('plot-tracks').data.length"
    )  # one track per particle
    assert n_particles >= 3
    frame_traces = state(page, "document.getElementById('plot-frame').data.map(t => t.mode)")
    assert "text" in frame_traces  # particle ids drawn on the latest frame
    colorbar = state(page, "document.getElementById('plot-edge').data[0].colorbar.title.text")
    assert "eV" in colorbar
    # the simulated TXM states its pixel (0.03 um): lengths in um, drift = px x 0.03
    assert state(page, "bw.state.units") == {"length": "um", "scale": 0.03, "window": None}
    titles = state(
        page,
        "['plot-drift', 'plot-tracks', 'plot-edge'].map(id => "
        "document.getElementById(id).layout.yaxis.title.text)",
    )
    assert titles == ["drift (um)", "shift y (um)", "y (um)"]
    shifts = httpx.get(
        f"{settings.tiled_url}/api/v1/array/full/analysis/{uid}/xanes/global_shift",
        params={"format": "application/json"},
        timeout=10,
    ).json()
    shown = state(page, "document.getElementById('plot-drift').data[0].y")
    np.testing.assert_allclose(
        np.asarray(shown, dtype=float), np.asarray(shifts, dtype=float)[:, 0] * 0.03
    )
    assert state(page, "document.getElementById('plot-spectra').data.length") == n_particles
    done = f"li[data-uid='{uid}'][data-status='complete']"
    wait_page(page, f'!!document.querySelector("{done}")', 60)
    assert not page.errors
    shoot(page, "xanes")


def test_crack_view_shows_new_slices(page, up, publisher):
    from bluesky_plans.devices import SimTomoStation
    from bluesky_plans.plans import tomo_scan_plan
    from synthetic.cathode import make_cathode_volume
    from synthetic.scan import simulate_scan

    RE, settings = publisher
    volume = make_cathode_volume((Z, 320, 320), seed=5)
    angles = np.linspace(0.0, 180.0, 90, endpoint=False)
    frames = simulate_scan(volume.attenuation, angles, seed=6)
    station = SimTomoStation.from_frames(
        angles, frames.projections, frames.flat, frames.dark, settings.detector_dir
    )
    (uid,) = RE(tomo_scan_plan(station, list(angles)))
    wait_page(page, f"bw.state.selected === '{uid}' && bw.state.view === 'tomo'", 60)
    wait_page(page, f"bw.state.cracks.total > 0 && bw.state.cracks.slices === {Z}", 240)
    history = state(page, f"bw.state.history.cracks.filter(h => h.uid === '{uid}')")
    growing = sorted({h["slices"] for h in history if 0 < h["slices"] < h["total"]})
    assert growing, f"the crack map never showed a partial volume: {history}"
    # Following the growth, the slider sits on the newest slice, with its overlay drawn.
    wait_page(page, f"bw.state.cracks.shown === {Z - 1}", 30)
    assert state(page, "document.getElementById('plot-slice').data.length") == 2
    wait_page(page, "bw.state.particles.rows > 0", 240)
    shoot(page, "tomography")
    # no voxel size in the start document: every length in px, never a made-up um
    assert state(page, "bw.state.units.length") == "px"
    titles = state(
        page,
        "['plot-slice', 'plot-sizes'].map(id => "
        "document.getElementById(id).layout.xaxis.title.text)",
    )
    assert titles == ["x (px)", "equivalent diameter (px)"]
    assert "voxel size unknown" in state(
        page, "document.getElementById('plot-depth').layout.yaxis.title.text"
    )
    assert state(page, "document.querySelector('#card-damage h3').textContent") == (
        "Damage density (crack share of the 50 x 50 px window) of this slice"
    )
    # the particle table: the stored px / voxel values, px in the headers, no "um"
    from tests.browser.conftest import _client

    client = _client(up)
    try:
        table = client["analysis"][uid]["particles"]["table"].read()
    finally:
        client.context.close()
    check_particle_table(page, table, None)
    # Sorting the particle table by a column, as a user clicks it.
    page.click("th[data-column='equivalent_diameter_px']")
    page.click("th[data-column='equivalent_diameter_px']")
    cells = page.locator("#particles tr td:nth-child(3)").all_inner_texts()
    values = [float(c) for c in cells]
    assert values == sorted(values, reverse=True) and len(values) > 1
    # Moving the slider shows an older slice.
    page.fill("#slice-slider", "3")
    page.dispatch_event("#slice-slider", "input")
    wait_page(page, "bw.state.cracks.shown === 3", 30)
    assert state(page, "bw.state.pinned") is False
    assert not page.errors


def test_failed_analysis_is_shown_with_its_error(page, publisher):
    from bluesky.plans import count
    from ophyd.sim import direct_img

    RE, _settings = publisher
    # A XANES analysis asked for on a run without energies fails with a clear error.
    (uid,) = RE(count([direct_img], num=2), beamwatch_pipelines=["frames", "xanes"])
    wait_page(page, f"bw.state.selected === '{uid}' && bw.state.errors.length > 0", 120)
    box = page.inner_text(".pipeline-error[data-pipeline='xanes']")
    assert "failed" in box and "energy" in box
    assert page.locator(f"li[data-uid='{uid}'][data-status='failed']").count() == 1
    shoot(page, "failed-analysis")


def test_tiled_going_away_and_coming_back(page, up, publisher):
    from bluesky.plans import count
    from ophyd.sim import direct_img

    RE, _settings = publisher
    (uid,) = RE(count([direct_img], num=2), beamwatch_pipelines=["frames", "xanes"])
    page.goto(f"{up.web}/#{uid}")
    wait_page(page, f"bw.state.selected === '{uid}' && bw.state.errors.length > 0", 120)
    tiled_pid = next(
        int(pid)
        for pid in subprocess.run(
            ["pgrep", "-P", str(up.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        if b"tiled\x00serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    os.kill(tiled_pid, signal.SIGKILL)
    wait_page(page, "bw.state.connected === false", 60)
    banner = page.inner_text("#conn")
    assert "not reachable" in banner and "reconnecting" in banner
    # The last data stays on screen.
    assert page.locator(f"li.run[data-uid='{uid}']").count() == 1
    assert uid in page.inner_text("#run-title")
    assert page.is_visible(".pipeline-error")
    shoot(page, "tiled-down")
    # `up` restarts Tiled; the page reconnects by itself.
    wait_page(page, "bw.state.connected === true", 120)
    wait_until(lambda: page.inner_text("#conn") == "Tiled connected", timeout=30)
    assert state(page, "bw.state.selected") == uid
    history = state(page, "bw.state.history.conn")
    assert history[-2:] == [False, True]
    assert not page.errors


def test_a_link_to_a_run_not_listed_yet_waits_for_it(page, up, publisher):
    """A link to a run that Tiled does not list yet (a scan that has just started, a slow
    catalog) waits for that run; it is not replaced by the newest run (the page kept showing
    the previous test's run when the run list lagged behind the link, on a loaded machine)."""
    import uuid

    from bluesky.plans import count
    from ophyd.sim import direct_img

    RE, _settings = publisher
    wanted = str(uuid.uuid4())
    page.goto(f"{up.web}/#{wanted}")
    wait_page(page, f"bw.state.selected === '{wanted}' && bw.state.view === 'waiting'", 60)
    assert f"Waiting for run {wanted}" in page.inner_text("#main")
    (uid,) = RE(count([direct_img], num=1), beamwatch_pipelines=["frames"])
    wait_page(page, f"bw.state.runs.some((r) => r.uid === '{uid}')", 120)
    seen = state(page, "bw.state.refreshes")
    wait_page(page, f"bw.state.refreshes >= {seen + 2}", 60)  # refreshed with the run listed
    assert state(page, "bw.state.selected") == wanted
    assert state(page, "bw.state.view") == "waiting"
    # Following the newest run again shows the run just published.
    page.check("#follow-newest")
    wait_page(page, f"bw.state.selected === '{uid}'", 60)
    assert not page.errors


def figures_in_tiled(up, uid: str) -> list[dict[str, str]]:
    """``{pipeline, name}`` of every figure of a run, as Python reads them from Tiled."""
    from tiled.client import from_uri

    from services.core import layout

    client = from_uri(up.tiled, api_key=up.api_key())
    try:
        run = client[layout.ANALYSIS][uid]
        return [
            {"pipeline": pipeline, "name": name}
            for pipeline in run
            if layout.XANES.figures in run[pipeline]
            for name in sorted(run[pipeline][layout.XANES.figures])
        ]
    finally:
        client.context.close()


def check_figures_card(page, up, uid: str, pipelines: set[str], screenshot: str) -> None:
    """The figures card of run ``uid`` shows every figure the analysis wrote to Tiled, loaded,
    and lists them again only when a pipeline status changes (not on every refresh)."""
    expected = figures_in_tiled(up, uid)
    assert pipelines <= {f["pipeline"] for f in expected}, expected
    page.goto(f"{up.web}/#{uid}")
    wait_page(page, f"bw.state.selected === '{uid}' && bw.state.figures.length > 0", 120)
    key = lambda f: (f["pipeline"], f["name"])  # noqa: E731
    assert sorted(state(page, "bw.state.figures"), key=key) == sorted(expected, key=key)
    wait_page(page, "[...document.querySelectorAll('#figures img')].every(i => i.complete)", 60)
    shown = state(
        page,
        """[...document.querySelectorAll('#figures figure')].map(f => ({
            pipeline: f.dataset.pipeline, name: f.dataset.name,
            caption: f.querySelector('figcaption').textContent,
            width: f.querySelector('img').naturalWidth})) """,
    )
    assert sorted(
        ({"pipeline": f["pipeline"], "name": f["name"]} for f in shown), key=key
    ) == sorted(expected, key=key)
    assert all(f["name"] in f["caption"] and f["width"] > 0 for f in shown), shown
    # The run is finished: later refreshes (polled every 0.5 s) do not list the figures again.
    listings = state(page, "bw.state.figureListings")
    refreshes = state(page, "bw.state.refreshes")
    wait_page(page, f"bw.state.refreshes >= {refreshes + 3}", 60)
    assert state(page, "bw.state.figureListings") == listings
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#card-figures").screenshot(path=str(ARTIFACTS / f"{screenshot}.png"))
    assert not page.errors


def test_report_live_figures_and_tiled_ui_show_the_results(
    page, up, small_tomograms, small_xanes_scans
):
    uid = small_tomograms[0].uid
    check_figures_card(page, up, small_xanes_scans[0].uid, {"xanes"}, "figures-xanes")
    check_figures_card(page, up, uid, {"cracks", "particles"}, "figures")
    report = up.data.parent / "report.html"
    subprocess.run(
        [str(BIN / "beamwatch"), "--data-dir", str(up.data), "report", uid, "-o", str(report)],
        env=up.env,
        check=True,
        timeout=120,
    )
    context = page.context.browser.new_context(offline=True)
    try:
        offline = context.new_page()
        requests: list[str] = []
        offline.on("request", lambda r: requests.append(r.url))
        offline.goto(report.as_uri())
        images = offline.evaluate(
            "() => Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
        )
        assert len(images) >= 4 and all(images)
        assert all(u.startswith(("file:", "data:")) for u in requests), requests
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        offline.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    finally:
        context.close()
    # Tiled's own browser UI shows the same results, without an API key (anonymous reads).
    ui = page.context.new_page()
    try:
        ui.goto(f"{up.tiled}/ui/browse/analysis/{uid}")
        ui.wait_for_selector("text=cracks", timeout=60_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        ui.screenshot(path=str(ARTIFACTS / "tiled-ui.png"))
    finally:
        ui.close()


def test_lengths_are_in_um_when_the_voxel_size_is_known(page, up, small_tomograms):
    """A tomogram whose start document states voxel_size_um: the slice and damage maps, the
    depth axis, the damage window and the size distribution are in um, the values being the
    analysis' px numbers times the voxel size."""
    from tests.browser.conftest import _client

    run = small_tomograms[0]
    voxel = run.voxel_size_um
    client = _client(up)
    try:
        table = client["analysis"][run.uid]["particles"]["table"].read()
        window = client["analysis"][run.uid]["cracks"].metadata["window"]
        n_z = client["analysis"][run.uid]["cracks"]["depth_profile"].shape[0]
    finally:
        client.context.close()
    page.goto(f"{up.web}/#{run.uid}")
    wait_page(page, f"bw.state.selected === '{run.uid}' && bw.state.particles.rows > 0", 120)
    wait_page(page, "!!(document.getElementById('plot-depth').data || [])[0]", 60)
    assert state(page, "bw.state.units") == {"length": "um", "scale": voxel, "window": window}
    axes = state(
        page,
        """['plot-slice', 'plot-damage', 'plot-sizes'].map(id => {
             const l = document.getElementById(id).layout;
             return [l.xaxis.title.text, l.yaxis.title ? l.yaxis.title.text : null];
           })""",
    )
    assert axes == [
        ["x (um)", "y (um)"],
        ["x (um)", "y (um)"],
        ["equivalent diameter (um)", "particles"],
    ]
    dx = state(page, "document.getElementById('plot-slice').data[0].dx")
    columns = state(page, "document.getElementById('plot-slice').data[0].z[0].length")
    assert dx * columns == pytest.approx(128 * voxel)  # the 128 px slice spans 64 um
    title = state(page, "document.querySelector('#card-damage h3').textContent")
    assert f"{window} x {window} px ({window * voxel:g} um)" in title
    depth = state(page, "document.getElementById('plot-depth').data[0].y")
    np.testing.assert_allclose(depth, (np.arange(n_z) + 0.5) * voxel)
    # the size histogram holds the table's diameters (px) times the voxel size
    shown = state(
        page,
        "document.getElementById('plot-sizes').data.flatMap(t => Array.from(t.x))",
    )
    want = table["equivalent_diameter_px"].dropna().to_numpy() * voxel
    np.testing.assert_allclose(sorted(shown), sorted(want))
    # the particle table: diameters, centroids, areas and volumes in um, um², um³
    check_particle_table(page, table, voxel)
    # the screenshot shows the figures too (the card of this run, drawn)
    wait_page(page, "document.querySelectorAll('#figures figure img').length > 0", 60)
    shoot(page, "tomography-um")
    assert not page.errors


def test_real_two_energy_xanes_says_why_there_is_no_edge_map(page, up):
    """The real SSRL folder (two energies, 8324 and 8354 eV: no frame in the pre-edge window)
    imported and analysed: the edge-energy and spectra cards say why they are empty (an
    all-NaN map drew as squashed empty axes, the spectra as an empty plot)."""
    from services.cli import runs as cli_runs
    from tests.conftest import SHARED_DATA

    ssrl = SHARED_DATA / "txm_ssrl_nca"
    if not ssrl.is_dir():
        pytest.skip(f"{ssrl} not present")
    settings = up.settings()
    uid = cli_runs.import_scan([ssrl], settings, sample="NCA pristine")
    assert cli_runs.reprocess_run(uid, settings) == {"xanes": "xanes"}
    page.goto(f"{up.web}/#{uid}")
    wait_page(page, f"bw.state.selected === '{uid}' && bw.state.edgeMap === true", 120)
    assert "no pixel has an edge energy" in page.inner_text("#plot-edge")
    assert state(page, "document.getElementById('plot-edge').data") is None  # nothing drawn
    wait_page(page, "document.querySelector('#plot-spectra p') !== null", 60)
    assert "no particle spectrum could be normalised" in page.inner_text("#plot-spectra")
    # the real pixel size (0.0312 um) is on the frame's axes
    assert state(page, "document.getElementById('plot-frame').layout.xaxis.title.text") == "x (um)"
    # the screenshot once the run list shows the analysis complete (next poll of the list)
    wait_page(
        page,
        f"bw.state.runs.some((r) => r.uid === '{uid}' && r.status === 'complete')"
        " && document.querySelector('#card-figures img') !== null",
        60,
    )
    shoot(page, "xanes-real-two-energies")
