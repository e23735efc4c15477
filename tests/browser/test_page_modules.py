"""The page's pure helpers, imported as the ES modules the page itself loads.

The modules are the page's own instances (the browser caches a module per URL), so the layout
they read is the one ``/layout.json`` served.
"""

from __future__ import annotations

from services.core import layout
from tests.browser.conftest import skip_without_browser, wait_page

skip_without_browser()


def run_js(page, body: str):
    return page.evaluate(f"async () => {{ {body} }}")


def test_page_loads_the_layout_the_python_side_writes_by(page):
    wait_page(page, "window.bw && bw.state.refreshes > 0", 60)
    served = page.evaluate("() => bw.layout")
    assert served["xanes"]["edge_energy"] == layout.XANES.edge_energy
    assert served["final_statuses"] == [s.value for s in layout.FINAL_STATUSES]
    # every module of the page loads (a syntax error or a bad import fails here)
    modules = page.evaluate(
        """async () => {
          const names = ["state", "tiled", "subscriptions", "scheduler", "dom", "images", "runs",
                         "selection", "views/header", "views/xanes", "views/tomo", "views/other",
                         "views/compare", "views/figures", "views/chemistry", "units"];
          const out = {};
          for (const n of names) out[n] = Object.keys(await import(`/static/js/${n}.js`)).length;
          return out;
        }"""
    )
    assert all(n > 0 for n in modules.values()), modules


def test_summarise_gives_one_status_per_run(page):
    wait_page(page, "window.bw && bw.state.refreshes > 0", 60)
    out = run_js(
        page,
        """
        const { summarise } = await import("/static/js/runs.js");
        const p = (...s) => Object.fromEntries(s.map((x, i) => [`p${i}`, { status: x }]));
        return [
          summarise(p("complete", "failed"), true),
          summarise(p("complete", "queued"), true),
          summarise(p("running", "interrupted"), false),
          summarise(p("complete", "interrupted"), true),
          summarise(p("complete", "incomplete"), true),
          summarise(p("complete", "complete"), true),
          summarise({}, true),
          summarise({}, false),
        ];
        """,
    )
    assert out == [
        "failed",
        "running",
        "running",
        "interrupted",
        "incomplete",
        "complete",
        "waiting",
        "acquiring",
    ]


def test_image_helpers(page):
    wait_page(page, "window.bw && bw.state.refreshes > 0", 60)
    out = run_js(
        page,
        """
        const m = await import("/static/js/images.js");
        const labels = [
          [0, 0, 0, 0, 0],
          [0, 1, 1, 1, 0],
          [0, 1, 1, 1, 0],
          [0, 1, 1, 1, 2],
          [0, 0, 0, 0, 2],
        ];
        return {
          steps: [[10, 256, 256], [512, 512], [100, 1000, 300], [3, 257]].map(m.downsampleStep),
          outlines: m.outlines(labels),
          finite: m.finiteValues([[1, null], [NaN, [2.5, Infinity]]]),
        };
        """,
    )
    assert out["steps"] == [1, 2, 4, 2]
    # label 1: the 3 x 3 block without its centre (2, 2); label 2: both its pixels
    rows, cols = out["outlines"]["1"]
    assert sorted(zip(rows, cols, strict=True)) == [
        (r, c) for r in (1, 2, 3) for c in (1, 2, 3) if (r, c) != (2, 2)
    ]
    assert sorted(zip(*out["outlines"]["2"], strict=True)) == [(3, 4), (4, 4)]
    assert out["finite"] == [1, 2.5]


def test_websocket_rows_and_compare_helpers(page):
    wait_page(page, "window.bw && bw.state.refreshes > 0", 60)
    out = run_js(
        page,
        """
        const s = await import("/static/js/subscriptions.js");
        const c = await import("/static/js/views/compare.js");
        const table = {
          equivalent_diameter_px: [10, 20, null, 40],
          detachment: [0.1, 0.5, 0.2, 0.9],
          flawed: [true, false, true, true],
          touches_border: [false, false, false, true],
        };
        return {
          rows: [
            s.rowsFromMessage({ type: "array-data", offset: [5, 0], shape: [2, 3] }),
            s.rowsFromMessage({ type: "array-ref", shape: [7, 3] }),
            s.rowsFromMessage({ type: "container-child-created" }),
            s.rowsFromMessage(null),
          ],
          units: [c.commonUnit([0.5, 0.4]), c.commonUnit([0.5, null]), c.commonUnit([])],
          sizes: c.wholeParticleValues(table, "equivalent_diameter_px", 0.5),
          detachment: c.wholeParticleValues(table, "detachment"),
          flawed: c.flawedFraction(table),
          none: c.flawedFraction({ flawed: [true], touches_border: [true] }),
          depth: [c.depthAxis(3, 0.5), c.depthAxis(3, null)],
          label: c.runLabel({ plan: "tomo_scan_plan", uid: "0123456789abcdef" }),
          bins: c.commonBins([[2, 4], [3, 12]], 5),
          oneValue: c.commonBins([[7]], 5),
          noValue: c.commonBins([[], []], 5) === undefined,
        };
        """,
    )
    assert out["rows"] == [7, 7, None, None]
    assert out["units"] == ["um", "px", "px"]
    assert out["sizes"] == [5, 10]  # border particle and unknown size left out, in um
    assert out["detachment"] == [0.1, 0.5, 0.2]
    assert out["flawed"] == 2 / 3
    assert out["none"] is None
    assert out["depth"] == [[0.25, 0.75, 1.25], [0, 1, 2]]  # slice centres in um, or slices
    assert out["label"] == "tomo_scan_plan 01234567"
    assert out["bins"] == {"start": 1, "end": 13, "size": 2}  # 2 .. 12 in 5 bins of 2
    assert out["oneValue"] == {"start": 6.5, "end": 7.5, "size": 1}
    assert out["noValue"] is True


def test_length_helpers(page):
    """um only when a positive size is stated, px otherwise; the damage window in both."""
    wait_page(page, "window.bw && bw.state.refreshes > 0", 60)
    out = run_js(
        page,
        """
        const u = await import("/static/js/units.js");
        const run = { pipelines: { cracks: { metadata: { voxel_size_um: null } },
                                   particles: { metadata: { voxel_size_um: 0.5 } } } };
        return {
          scales: [0.03, 0, -1, null, undefined, NaN, "0.5"].map(u.lengthScale),
          stated: [u.statedSize(run, ["cracks", "particles"], "voxel_size_um"),
                   u.statedSize(run, ["xanes"], "pixel_size_um")],
          windows: [u.windowText(50, u.lengthScale(0.5)), u.windowText(50, u.lengthScale(null)),
                    u.windowText(null, u.lengthScale(0.5))],
        };
        """,
    )
    px = {"unit": "px", "scale": 1}
    assert out["scales"] == [{"unit": "um", "scale": 0.03}, px, px, px, px, px, px]
    assert out["stated"] == [0.5, None]
    assert out["windows"] == ["50 x 50 px (25 um)", "50 x 50 px", "moving"]


def test_particle_table_columns_in_the_run_unit(page):
    """The particle table's lengths, areas and volumes: um, um², um³ with a known voxel size,
    px, px², voxels without one (never "um"); other columns keep their stored name."""
    wait_page(page, "window.bw && bw.state.refreshes > 0", 60)
    out = run_js(
        page,
        """
        const u = await import("/static/js/units.js");
        const cols = bw.layout.particle_columns;
        const names = ["equivalent_diameter_px", "centroid_z", "centroid_y", "centroid_x",
                       "surface_area_px2", "volume_voxels", "sphericity", "label"];
        const both = (size) => names.map((c) => u.particleColumn(c, u.lengthScale(size), cols));
        return { um: both(0.5), px: both(null) };
        """,
    )
    assert out["um"] == [
        {"header": "equivalent diameter (um)", "scale": 0.5},
        {"header": "centroid z (um)", "scale": 0.5},
        {"header": "centroid y (um)", "scale": 0.5},
        {"header": "centroid x (um)", "scale": 0.5},
        {"header": "surface area (um²)", "scale": 0.25},
        {"header": "volume (um³)", "scale": 0.125},
        {"header": "sphericity", "scale": 1},
        {"header": "label", "scale": 1},
    ]
    assert out["px"] == [
        {"header": "equivalent diameter (px)", "scale": 1},
        {"header": "centroid z (px)", "scale": 1},
        {"header": "centroid y (px)", "scale": 1},
        {"header": "centroid x (px)", "scale": 1},
        {"header": "surface area (px²)", "scale": 1},
        {"header": "volume (voxels)", "scale": 1},
        {"header": "sphericity", "scale": 1},
        {"header": "label", "scale": 1},
    ]
    assert not any("(um" in c["header"] for c in out["px"])


def test_chemistry_helpers(page):
    """The chemistry view's layer list, stepped cluster colours and quantity names."""
    wait_page(page, "window.bw && bw.state.refreshes > 0", 60)
    out = run_js(
        page,
        """
        const c = await import("/static/js/views/chemistry.js");
        return {
          layers: c.lcfLayers(["pristine", "charged"]).map((l) => [l.key, l.label]),
          scale: c.discreteColorscale(["#a", "#b", "#c"]),
          labels: ["edge_energy_eV", "fraction_charged", "n_pixels"].map(c.quantityLabel),
        };
        """,
    )
    assert out["layers"] == [
        ["fraction_pristine", "fraction of pristine"],
        ["fraction_charged", "fraction of charged"],
        ["r_factor", "R-factor"],
    ]
    third = 1 / 3
    assert out["scale"] == [
        [0, "#a"],
        [third, "#a"],
        [third, "#b"],
        [2 * third, "#b"],
        [2 * third, "#c"],
        [1, "#c"],
    ]
    assert out["labels"] == ["edge energy (eV)", "fraction of charged", "n pixels"]
