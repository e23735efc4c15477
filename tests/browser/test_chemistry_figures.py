"""XANES chemistry on the live page (issue 16, part 4) and figures shown as written (part 3 of
the follow-up): an operando series whose start documents name two reference spectra; the
page's figures card of the second scan shows the LCF fraction / R-factor maps, the clusters and
the state-of-charge trajectory, pixel for pixel as the PNG files the analysis wrote (Tiled's
own image/png rendering stretches the contrast; the page must not show that).
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

from tests.browser.conftest import (
    ARTIFACTS,
    _client,
    _finish,
    skip_without_browser,
    state,
    wait_page,
)

skip_without_browser()

N = 12
CHEMISTRY_FIGURES = {"lcf_fractions", "clusters", "soc_trajectory"}

# the displayed <img> of a figure, drawn on a canvas, as base64 RGBA bytes
PAGE_PIXELS = """(name) => {
  const img = document.querySelector(`#figures figure[data-name='${name}'] img`);
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let text = '';
  for (let i = 0; i < data.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  return [canvas.height, canvas.width, btoa(text)];
}"""


def edge_reference(edge_ev: float) -> list[list[float]]:
    from synthetic.txm import _CROSSING_OFFSET, normalised_edge_model

    grid = np.arange(8240.0, 8520.0, 1.0)
    mu = normalised_edge_model(grid, np.array(edge_ev - _CROSSING_OFFSET))
    return np.c_[grid, mu].tolist()


@pytest.fixture(scope="module")
def chemistry_series(up, publisher) -> list[str]:
    """A finished two-scan operando series whose start documents name two references (one
    scene, 128 x 128, 12 energies, 4 particles): the run uids, made once for this module."""
    from bluesky_plans.devices import SimTXM
    from bluesky_plans.plans import operando_xanes_plan
    from synthetic.txm import TxmScene, default_energies

    RE, settings = publisher
    scene = TxmScene.random(41, shape=(128, 128), n_particles=4, n_scans=2, n_frames=N)
    txm = SimTXM(scene, settings.detector_dir, seed=41)
    md = {
        "lcf_references": {
            "discharged": edge_reference(8333.0),
            "charged": edge_reference(8350.0),
        },
        "xanes_clusters": 2,
    }
    uids = RE(operando_xanes_plan(txm, default_energies(N), 2, n_flats=1, md=md))
    for uid in uids:
        _finish(up, uid, N)
    return list(uids)


# `beamwatch up`, two XANES scans with chemistry and the page: about 3 min on an idle 2-core
# machine, more than the default 300 s when other jobs load it
@pytest.mark.timeout(1800)  # covers the series when this test is the first to ask for it
def test_chemistry_figures_are_shown_as_the_png_files(page, up, chemistry_series):
    from PIL import Image

    uid = chemistry_series[1]
    client = _client(up)
    try:
        figures = client["analysis"][uid]["xanes"]["figures"]
        assert CHEMISTRY_FIGURES <= set(figures)
        files = {name: figures[name].metadata["png"] for name in figures}
        # Tiled's image/png rendering of the same arrays (what the page used to show)
        stretched = {}
        for name in CHEMISTRY_FIGURES:
            resp = client.context.http_client.get(
                f"{up.tiled}/api/v1/array/full/analysis/{uid}/xanes/figures/{name}",
                params={"format": "image/png"},
            )
            resp.raise_for_status()
            stretched[name] = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))
    finally:
        client.context.close()

    page.goto(f"{up.web}/#{uid}")
    names = " && ".join(f"bw.state.figures.some(f => f.name === '{n}')" for n in CHEMISTRY_FIGURES)
    wait_page(page, f"bw.state.selected === '{uid}' && {names}", 120)
    wait_page(page, "[...document.querySelectorAll('#figures img')].every(i => i.complete)", 60)
    stretched_share = {}
    for name in sorted(CHEMISTRY_FIGURES):
        height, width, data = page.evaluate(PAGE_PIXELS, name)
        shown = np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(height, width, 4)
        written = np.asarray(Image.open(files[name]).convert("RGB"))
        assert shown.shape[:2] == written.shape[:2], (name, shown.shape, written.shape)
        assert (shown[..., 3] == 255).all()
        np.testing.assert_array_equal(shown[..., :3], written, err_msg=name)
        differs = np.abs(stretched[name].astype(int) - written.astype(int)).max(axis=2) > 8
        stretched_share[name] = float(differs.mean())
    # the check has teeth: Tiled's rendering changes a figure whose 1st..99th percentiles are
    # not 0..255 already (here the clusters figure), and the page would have shown that
    assert max(stretched_share.values()) > 0.01, stretched_share
    # the pure helper the page draws with
    rgba = page.evaluate(
        """async () => {
          const { rgbToRgba } = await import('/static/js/views/figures.js');
          return [Array.from(rgbToRgba(new Uint8Array([1, 2, 3, 4, 5, 6]), 1, 2)),
                  rgbToRgba(new Uint8Array(5), 1, 2)];
        }"""
    )
    assert rgba == [[1, 2, 3, 255, 4, 5, 6, 255], None]
    captions = state(
        page, "[...document.querySelectorAll('#figures figcaption')].map(c => c.textContent)"
    )
    assert {f"xanes: {n}" for n in CHEMISTRY_FIGURES} <= set(captions)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#card-figures").screenshot(path=str(ARTIFACTS / "chemistry.png"))
    assert not page.errors


# `beamwatch up` and one 12-frame XANES scan: about 1 min on an idle 2-core machine
@pytest.mark.timeout(900)
def test_a_refused_chemistry_request_is_shown_with_its_reason(page, up, publisher):
    """A scan whose start document names a reference file that is not under the data dir and a
    cluster count out of range: the page's figures card says the chemistry was refused, why
    (the error the analysis wrote into the run's metadata) and what was asked, and the
    rest of the XANES view is there (edge-energy map, figures)."""
    from bluesky_plans.devices import SimTXM
    from bluesky_plans.plans import xanes_scan_plan
    from synthetic.txm import TxmScene, default_energies

    RE, settings = publisher
    scene = TxmScene.random(43, shape=(128, 128), n_particles=3, n_scans=1, n_frames=N)
    txm = SimTXM(scene, settings.detector_dir, seed=43)
    md = {
        "lcf_references": {
            "pristine": "references/not-there.csv",
            "charged": edge_reference(8350.0),
        },
        "xanes_clusters": 3,
    }
    (uid,) = RE(xanes_scan_plan(txm, default_energies(N), n_flats=1, md=md))
    _finish(up, uid, N)  # the XANES analysis completes without the chemistry
    client = _client(up)
    try:
        chemistry = client["analysis"][uid]["xanes"].metadata["chemistry"]
        figures = set(client["analysis"][uid]["xanes"]["figures"])
    finally:
        client.context.close()
    assert chemistry["status"] == "failed" and chemistry["option"] == "lcf_references"
    assert "not-there.csv" in chemistry["error"]
    # the reason names the file as the start document gave it, never the server's data dir
    data_dirs = {str(up.data), str(up.data.resolve())}
    assert not any(d in json.dumps(chemistry) for d in data_dirs), chemistry
    assert not CHEMISTRY_FIGURES & figures and "edge_energy" in figures

    page.goto(f"{up.web}/#{uid}")
    wait_page(
        page,
        f"bw.state.selected === '{uid}' && bw.state.chemistryProblems.length === 1"
        " && bw.state.figures.some(f => f.name === 'edge_energy')",
        120,
    )
    (problem,) = state(page, "bw.state.chemistryProblems")
    assert problem == {
        "pipeline": "xanes",
        "option": "lcf_references",
        "error": chemistry["error"],
        "request": chemistry["request"],
        "when": "refused",
    }
    note = page.locator("#figure-notes .chemistry-note")
    assert note.count() == 1
    text = note.inner_text()
    assert "refused" in text and chemistry["error"] in text
    rows = len(edge_reference(8350.0))
    assert "references/not-there.csv" in text and f"inline ({rows} rows)" in text
    assert "xanes_clusters = 3" in text
    shown = page.inner_text("#main")
    assert not any(d in shown for d in data_dirs), shown
    assert state(page, "bw.state.edgeMap") is True
    # the pure helper that writes the request line
    line = page.evaluate(
        """async () => {
          const { describeRequest } = await import('/static/js/views/figures.js');
          return describeRequest({lcf_references: {a: 'x.csv', b: 'inline (5 rows)'},
                                  xanes_clusters: 2});
        }"""
    )
    assert line == "lcf_references = {a: x.csv, b: inline (5 rows)}; xanes_clusters = 2"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#card-figures").screenshot(path=str(ARTIFACTS / "chemistry-refused.png"))
    assert not page.errors


def hover_text(page, plot: str, x: float, y: float) -> str:
    """Plotly's hover label of ``plot`` at data coordinates (x, y), as the cursor shows it."""
    return page.evaluate(
        """([plot, x, y]) => {
          window.Plotly.Fx.hover(plot, { xval: x, yval: y });
          const label = document.querySelector(`#${plot} .hovertext`);
          return label ? [...label.querySelectorAll('text')].map(t => t.textContent).join(' | ')
                       : null;
        }""",
        [plot, x, y],
    )


def shown_z(page, plot: str) -> np.ndarray:
    z = state(page, f"document.getElementById('{plot}').data[0].z")
    return np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)


# the series (if no other test of this module made it) and the page: about 3 min idle
@pytest.mark.timeout(1800)
def test_chemistry_maps_are_interactive(page, up, chemistry_series):
    """The second scan's LCF fraction and R-factor maps, cluster map and spectra, and the
    state-of-charge trajectory, drawn from the arrays and tables in Tiled (not the figures):
    the values on the page are Tiled's, the axes are in um (the simulated TXM's 0.03 um
    pixels), the colour bars say what and, for clusters, which cluster has how many pixels,
    and the value under the cursor is the pixel's."""
    uid = chemistry_series[1]
    client = _client(up)
    try:
        node = client["analysis"][uid]["xanes"]
        fractions = node["lcf_fraction_map"].read()
        r_factor = node["lcf_r_factor_map"].read()
        clusters = node["cluster_labels"].read()
        sizes = node["clusters"].read()
        trajectory = node["soc_trajectory"].read()
        pixel = node.metadata["pixel_size_um"]
        names = node.metadata["chemistry"]["lcf"]["reference_names"]
    finally:
        client.context.close()
    assert pixel == pytest.approx(0.03) and names == ["discharged", "charged"]

    page.goto(f"{up.web}/#{uid}")
    wait_page(
        page,
        f"bw.state.selected === '{uid}' && bw.state.chemistry && bw.state.chemistry.lcf"
        " && bw.state.chemistry.clusters > 0 && bw.state.chemistry.trajectory"
        " && !!(document.getElementById('plot-cluster-spectra').data || [])[0]",
        120,
    )
    assert all(
        state(page, f"!document.getElementById('card-{c}').hidden")
        for c in ("lcf", "clusters", "cluster-spectra", "trajectory")
    )
    chem = state(page, "bw.state.chemistry")
    assert chem["lcf"]["layers"] == ["fraction_discharged", "fraction_charged", "r_factor"]
    assert chem["lcf"]["step"] == 1  # 128 x 128: every pixel

    # the fraction of "charged", as Tiled holds it, on a 0..1 colour scale in um
    assert chem["lcf"]["layer"] == "fraction_charged"
    np.testing.assert_allclose(shown_z(page, "plot-lcf"), fractions[1], rtol=1e-6)
    trace = state(page, "document.getElementById('plot-lcf').data[0]")
    assert trace["colorbar"]["title"]["text"] == "fraction of charged"
    assert (trace["zmin"], trace["zmax"]) == (0, 1)
    assert trace["dx"] == pytest.approx(pixel)
    axes = state(
        page,
        "['xaxis', 'yaxis'].map(a => document.getElementById('plot-lcf').layout[a].title.text)",
    )
    assert axes == ["x (um)", "y (um)"]
    finite = np.argwhere(np.isfinite(fractions[1]))
    assert len(finite) > 100
    row, col = finite[len(finite) // 2]
    text = hover_text(page, "plot-lcf", col * pixel, row * pixel)
    assert text is not None and "um" in text, text
    value = float(re.search(r"fraction of charged ([0-9.]+)", text).group(1))
    assert value == pytest.approx(float(fractions[1][row, col]), abs=6e-4), text
    where = re.search(r"x ([0-9.]+) um, y ([0-9.]+) um", text)
    assert float(where.group(1)) == pytest.approx(col * pixel, rel=5e-3), text
    assert float(where.group(2)) == pytest.approx(row * pixel, rel=5e-3), text

    # the R-factor map, chosen in the list
    page.select_option("#lcf-layer", "r_factor")
    wait_page(page, "bw.state.chemistry && bw.state.chemistry.lcf.layer === 'r_factor'", 60)
    np.testing.assert_allclose(shown_z(page, "plot-lcf"), r_factor, rtol=1e-6)
    assert (
        state(page, "document.getElementById('plot-lcf').data[0].colorbar.title.text") == "R-factor"
    )
    text = hover_text(page, "plot-lcf", col * pixel, row * pixel)
    value = float(re.search(r"R-factor ([0-9.e+-]+)", text).group(1))
    assert value == pytest.approx(float(r_factor[row, col]), rel=6e-3), text

    # the cluster map: -1 (no cluster) left blank, one colour per cluster, named with its size
    want = np.where(clusters >= 0, clusters, np.nan).astype(float)
    np.testing.assert_array_equal(shown_z(page, "plot-clusters"), want)
    bar = state(page, "document.getElementById('plot-clusters').data[0].colorbar")
    assert bar["ticktext"] == [f"cluster {c} ({n} px)" for c, n in enumerate(sizes["pixels"])]
    row, col = np.argwhere(clusters >= 0)[0]
    text = hover_text(page, "plot-clusters", col * pixel, row * pixel)
    assert f"cluster {clusters[row, col]}" in text, text
    assert state(page, "document.getElementById('plot-cluster-spectra').data.length") == len(sizes)

    # the trajectory: mean of the chosen quantity per particle, scan by scan, as the table
    quantity = chem["trajectory"]["quantity"]
    assert quantity == "fraction_charged"
    traces = state(
        page,
        "document.getElementById('plot-trajectory').data.map(t => [t.name, t.y, t.error_y.array])",
    )
    particles = sorted(trajectory["particle"].unique())
    # numbered from 1 as in the XANES view's plots (the table's track ids start at 0)
    assert [t[0] for t in traces] == [f"particle {p + 1}" for p in particles]
    for (_name, y, sd), p in zip(traces, particles, strict=True):
        rows = trajectory[trajectory["particle"] == p].sort_values("scan")
        np.testing.assert_allclose(
            np.array(y, dtype=float), rows[f"{quantity}_mean"].to_numpy(float), equal_nan=True
        )
        np.testing.assert_allclose(
            np.array(sd, dtype=float), rows[f"{quantity}_sd"].to_numpy(float), equal_nan=True
        )
    page.select_option("#trajectory-quantity", "edge_energy_eV")
    wait_page(page, "bw.state.chemistry.trajectory.quantity === 'edge_energy_eV'", 60)
    assert (
        state(page, "document.getElementById('plot-trajectory').layout.yaxis.title.text")
        == "edge energy (eV)"
    )

    # back to the fraction map, the cursor on a particle pixel, for the screenshot
    page.select_option("#lcf-layer", "fraction_charged")
    wait_page(page, "bw.state.chemistry.lcf.layer === 'fraction_charged'", 60)
    row, col = finite[len(finite) // 2]
    hover_text(page, "plot-lcf", col * pixel, row * pixel)
    box = page.evaluate(
        """() => {
          const r = ['lcf', 'clusters', 'cluster-spectra', 'trajectory']
            .map(c => document.getElementById(`card-${c}`).getBoundingClientRect());
          const left = Math.min(...r.map(b => b.left)), top = Math.min(...r.map(b => b.top));
          return { x: left + scrollX, y: top + scrollY,
                   width: Math.max(...r.map(b => b.right)) - left,
                   height: Math.max(...r.map(b => b.bottom)) - top };
        }"""
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chemistry-maps.png"), clip=box, full_page=True)
    assert not page.errors
