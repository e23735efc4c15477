"""Compare view: runs ticked in the run list, their distributions overlaid, one trace per run.

Two tomograms and two XANES scans, written to the real Tiled of ``beamwatch up`` by the real
consumers; every trace is checked against the arrays and tables read back from Tiled here.
"""

from __future__ import annotations

import numpy as np

from tests.browser.conftest import (
    open_page,
    shoot,
    skip_without_browser,
    state,
    wait_page,
)

skip_without_browser()


def traces(page, plot: str) -> dict[str, dict]:
    """The traces of a plot, by the run uid each carries (``meta``)."""
    data = state(page, f"(document.getElementById('plot-{plot}').data || [])")
    by_uid = {t["meta"]: t for t in data}
    assert len(by_uid) == len(data), f"two traces of one run in {plot}"
    return by_uid


def expected_from_tiled(up, runs) -> dict[str, dict]:
    from tiled.client import from_uri

    client = from_uri(up.tiled, api_key=up.api_key())
    out: dict[str, dict] = {}
    try:
        for run in runs:
            node = client["analysis"][run.uid]
            if run.kind == "tomo":
                table = node["particles"]["table"].read()
                whole = table[~table["touches_border"].astype(bool)]
                assert len(whole) > 0, f"run {run.uid}: every particle touches the border"
                out[run.uid] = {
                    "sizes": whole["equivalent_diameter_px"].to_numpy() * run.voxel_size_um,
                    "detachment": whole["detachment"].to_numpy(),
                    "flawed": float(whole["flawed"].astype(bool).mean()),
                    "flawed_md": node["particles"].metadata["flawed_fraction"],
                    "depth_profile": node["cracks"]["depth_profile"].read(),
                }
            else:
                edge = node["xanes"]["edge_energy"].read()
                out[run.uid] = {"edge": edge[np.isfinite(edge)]}
    finally:
        client.context.close()
    return out


def test_compare_overlays_one_trace_per_run(page, up, small_tomograms, small_xanes_scans):
    runs = small_tomograms + small_xanes_scans
    expected = expected_from_tiled(up, runs)
    uids = [r.uid for r in runs]
    wait_page(
        page, " && ".join(f"!!document.querySelector(\"li[data-uid='{u}']\")" for u in uids), 60
    )
    # tick three runs, ctrl-click the fourth, as a user does
    for uid in uids[:3]:
        page.click(f"input.compare[data-uid='{uid}']")
    page.click(f"li[data-uid='{uids[3]}'] .muted", modifiers=["Control"])
    wait_page(
        page,
        "bw.state.view === 'compare' && bw.state.compared !== null && "
        "bw.state.compared.uids.length === 4",
        60,
    )
    assert state(page, "bw.state.compared.unit") == "um"  # both tomograms state a voxel size
    assert sorted(state(page, "bw.state.compare")) == sorted(uids)
    assert state(page, "location.hash").startswith("#compare=")

    tomo = [r.uid for r in small_tomograms]
    for plot, key in (("sizes", "sizes"), ("detachment", "detachment")):
        shown = traces(page, plot)
        assert sorted(shown) == sorted(tomo), plot
        for uid in tomo:
            np.testing.assert_allclose(np.asarray(shown[uid]["x"], float), expected[uid][key])
    flawed = traces(page, "flawed")
    assert sorted(flawed) == sorted(tomo)
    for uid in tomo:
        assert flawed[uid]["y"][0] == expected[uid]["flawed"]
        assert abs(flawed[uid]["y"][0] - expected[uid]["flawed_md"]) < 1e-12  # the analysis' own
    depth = traces(page, "depth")
    assert sorted(depth) == sorted(tomo)
    for run in small_tomograms:
        profile = expected[run.uid]["depth_profile"]
        shown = np.asarray([np.nan if v is None else v for v in depth[run.uid]["x"]], float)
        np.testing.assert_allclose(shown, profile)
        # slice centres in um, as the analysis' slice_depth
        centres = (np.arange(len(profile)) + 0.5) * run.voxel_size_um
        np.testing.assert_allclose(depth[run.uid]["y"], centres)
    edge = traces(page, "edge")
    xanes = [r.uid for r in small_xanes_scans]
    assert sorted(edge) == sorted(xanes)
    for uid in xanes:
        assert len(expected[uid]["edge"]) > 0
        np.testing.assert_allclose(np.asarray(edge[uid]["x"], float), expected[uid]["edge"])
    # runs without a kind of result are named under its plot
    assert small_xanes_scans[0].uid[:8] in page.inner_text("#missing-sizes")
    assert small_tomograms[0].uid[:8] in page.inner_text("#missing-edge")
    assert not page.errors
    shoot(page, "compare")

    # unticking down to one run leaves the comparison; clicking a run shows it alone
    for uid in uids[1:]:
        page.click(f"input.compare[data-uid='{uid}']")
    wait_page(page, "bw.state.compare.length === 1 && bw.state.view !== 'compare'", 30)
    page.click(f"li[data-uid='{uids[0]}'] .muted")
    wait_page(page, f"bw.state.selected === '{uids[0]}' && bw.state.view === 'tomo'", 30)


def test_a_compare_link_opens_the_comparison(browser, up, small_tomograms):
    uids = [r.uid for r in small_tomograms]
    page = open_page(browser, f"{up.web}/#compare={','.join(uids)}")
    try:
        wait_page(page, "bw.state.view === 'compare' && bw.state.compared !== null", 60)
        assert state(page, "bw.state.compared.uids") == uids
        assert state(page, "bw.state.compared.traces") == {
            "sizes": 2,
            "detachment": 2,
            "edge": 0,
            "flawed": 2,
            "depth": 2,
        }
        assert not page.errors
    finally:
        page.context.close()
