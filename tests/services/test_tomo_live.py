"""The tomography pipeline in the analysis consumer: reconstruction, crack map, quantification."""

from __future__ import annotations

import numpy as np
import pytest

from synthetic.cathode import make_cathode_volume
from tests.services.live_tomo import finished_result, live_tomo_run


def test_tomogram_is_reconstructed_and_crack_mapped(consumer_settings, tiled_client):
    settings, detector = consumer_settings
    shape = (6, 64, 64)
    volume = make_cathode_volume(shape, seed=11)
    angles = np.linspace(0.0, 180.0, 48, endpoint=False)
    with live_tomo_run(settings, detector, volume.attenuation, angles, seed=4) as uid:
        node = finished_result(tiled_client, uid, "cracks", timeout=240)
        assert node.metadata["status"] == "complete", node.metadata
        # the crack map is complete before the particle stage ends; that stage was announced
        # first, so a watcher of the whole run keeps waiting for it
        assert "particles" in tiled_client["analysis"][uid]
        mask = node["mask"].read()
        assert mask.shape == (6, 64, 64) and mask.dtype == np.uint8
        particle = node["particle_mask"].read()
        assert set(np.unique(particle)) <= {0, 1}
        assert np.all(particle[mask == 1] == 1)  # cracks count as particle
        truth = volume.particle_mask
        inter = np.logical_and(particle, truth).sum()
        union = np.logical_or(particle, truth).sum()
        assert inter / union > 0.6  # the reconstruction is in the simulation's geometry
        profile = node["depth_profile"].read()
        assert profile.shape == (6,)
        assert node["reconstruction"].read().dtype == np.float32
        fit = node.metadata["volume_fit"]
        assert -1.0 <= fit["pearson_r"] <= 1.0
        assert set(node["figures"]) == {
            "damage_top",
            "damage_bottom",
            "particle_density_top",
            "particle_density_bottom",
            "depth_profile",
            "correlation",
            "layer_correlation",
            "damage_distribution_top_bottom",
        }
        check_crack_numbers(node)

        # second stage: every particle once, with its measurements, flaw call and detachment
        particles = finished_result(tiled_client, uid, "particles", timeout=240)
        assert particles.metadata["status"] == "complete", particles.metadata
        labels = particles["labels"].read()
        assert labels.shape == (6, 64, 64) and labels.dtype == np.int32
        table = particles["table"].read()
        assert len(table) == particles.metadata["particles"] == int(labels.max())
        assert particles.metadata["stage_seconds"]["instances"] > 0
        for column in (
            "label",
            "volume_voxels",
            "equivalent_diameter_px",
            "centroid_z",
            "sphericity",
            "crack_fraction",
            "flawed_slices",
            "flawed",
            "detachment",
            "touches_border",
        ):
            assert column in table.columns, column
        assert set(particles["figures"]) == {
            "sizes",
            "detachment",
            "flawed",
            "detachment_by_size",
            "detachment_vs_volume",
            "flawed_vs_required_slices",
            "flaw_gallery",
        }
        check_particle_numbers(particles, table)
        # the start document states no voxel size: lengths in px, never a made-up um
        assert particles.metadata["length_unit"] == "px"
        assert particles.metadata["voxel_size_um"] is None
        assert particles.metadata["size_threshold_um"] is None
        assert "size_edges_px" in particles and "size_edges_um" not in particles

        # the shareable report embeds every figure and needs nothing from the network
        from services.web.report import build_report

        page = build_report(tiled_client, uid)
        assert page.count("data:image/png;base64,") == 15  # 8 crack + 7 particle figures
        for name in ("layer_correlation", "flaw_gallery", "flawed_vs_required_slices"):
            assert f"alt='{name}'" in page
        assert "<h3>layer_correlation</h3>" in page
        assert "src='http" not in page and "href='http" not in page
        assert "particles" in page and "complete" in page


def check_crack_numbers(node, voxel_um: float | None = None, n_layers: int = 8) -> None:  # noqa: ANN001
    """The layer table and the top/bottom distributions are those of the maps in Tiled."""
    from pipelines.cracks.layers import layer_correlation, pooled_distribution

    damage = node["damage_density"].read()
    packing = node["particle_density"].read()
    window = node.metadata["window"]
    n_z = damage.shape[0]
    assert node.metadata["length_unit"] == ("um" if voxel_um else "px")
    assert node.metadata["voxel_size_um"] == voxel_um
    scale = voxel_um or 1.0
    np.testing.assert_allclose(node["slice_depth"].read(), (np.arange(n_z) + 0.5) * scale)
    table = node["layer_correlation"].read().sort_values("layer")
    n_layers = min(n_layers, n_z)
    assert list(table["layer"]) == list(range(n_layers))
    expected = layer_correlation(packing, damage, n_layers=n_layers, stride=max(1, window // 2))
    np.testing.assert_array_equal(table["z_start"], expected.z_start)
    np.testing.assert_allclose(table["depth_stop"], expected.z_stop * scale)
    np.testing.assert_allclose(table["slope"], expected.slope, equal_nan=True)
    np.testing.assert_allclose(table["pearson_r"], expected.pearson_r, equal_nan=True)
    np.testing.assert_array_equal(table["n_samples"], expected.n_samples)
    summary = node.metadata["layer_fit_summary"]
    for key, value in (("slope_separator", 0), ("slope_collector", -1)):
        want = expected.slope[value]
        assert (summary[key] is None) if np.isnan(want) else summary[key] == pytest.approx(want)
    # Fig. 4f: pooled over the particle pixels of the first and last layer
    area = node["particle_mask"].read().sum(axis=(1, 2))
    hist = node["damage_histogram"].read()
    top_bottom = node["damage_distribution_top_bottom"].read()
    assert top_bottom.shape == (2, hist.shape[1])
    for row, z in ((0, 0), (1, n_layers - 1)):
        a, b = int(expected.z_start[z]), int(expected.z_stop[z])
        np.testing.assert_allclose(
            top_bottom[row], pooled_distribution(hist, area, a, b), equal_nan=True
        )


def check_particle_numbers(particles, table, voxel_um: float | None = None) -> None:  # noqa: ANN001
    """Flawed fraction against the slices required, gallery and volumes, from the table."""
    n_gallery = particles.metadata["flaw_gallery_particles"]
    assert n_gallery == min(6, int(table["flawed"].sum()))
    if n_gallery:
        gallery = particles["flaw_gallery"].read()
        labels = particles["flaw_gallery_labels"].read()
        assert gallery.shape == (n_gallery, 10, 64, 64)
        flagged = set(table.loc[table["flawed"], "label"])
        assert set(labels.tolist()) <= flagged
        assert np.isfinite(gallery).any() and np.isnan(gallery).any()  # particle, not box
    inner = table[~table["touches_border"]]
    by_slices = particles["flawed_fraction_by_slices"].read()
    if len(inner) == 0:  # every particle cut by the volume border: unknown, never 0
        assert np.isnan(by_slices).all() and particles.metadata["flawed_fraction"] is None
        assert "detachment_vs_volume" not in particles
        return
    expected = [(inner["flawed_slices"] >= k).mean() for k in range(1, 11)]
    np.testing.assert_allclose(by_slices, expected)
    assert by_slices[3] == pytest.approx(particles.metadata["flawed_fraction"])  # the 4-of-10 rule
    pairs = particles["detachment_vs_volume"].read()
    scale = voxel_um or 1.0
    np.testing.assert_allclose(pairs[:, 0], inner["volume_voxels"] * scale**3)
    np.testing.assert_array_equal(pairs[:, 1], inner["detachment"])
    if voxel_um is None:  # no voxel size: no small/large split in a made-up um
        assert "detachment_by_size" not in particles
        return
    from pipelines.particles.stats import detachment_by_size

    groups = detachment_by_size(
        inner["equivalent_diameter_px"].to_numpy() * voxel_um,
        inner["detachment"].to_numpy(),
        threshold=11.0,
    )
    counts = particles["detachment_by_size_counts"].read()
    np.testing.assert_array_equal(counts, np.stack([groups.small_counts, groups.large_counts]))
    small = inner["equivalent_diameter_px"] * voxel_um < 11.0
    known = np.isfinite(inner["detachment"])
    assert counts[0].sum() == (small & known).sum() and counts[1].sum() == (~small & known).sum()


@pytest.mark.parametrize(
    ("start", "expected", "warns"),
    [
        ({}, None, False),
        ({"voxel_size_um": 0.05}, 0.05, False),
        ({"pixel_size_um": "0.03"}, 0.03, False),
        ({"voxel_size_um": 0.05, "pixel_size_um": 0.03}, 0.05, False),
        ({"beamwatch_stats_params": {"voxel_size_um": 0.2}}, 0.2, False),
        ({"voxel_size_um": -1.0}, None, True),
        ({"voxel_size_um": "nan"}, None, True),
        ({"voxel_size_um": "wide"}, None, True),
        ({"voxel_size_um": [1, 2], "pixel_size_um": 0.03}, 0.03, True),
    ],
)
def test_voxel_size_from_start(start, expected, warns, caplog):
    from services.analysis.tomo_live import voxel_size_from_start

    assert voxel_size_from_start({"uid": "u", **start}) == expected
    assert ("lengths stay in px" in caplog.text) == warns


def sign_flip_volume(seed: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A cathode whose damage follows particle density with opposite signs in its two halves.

    The x < 96 half keeps 15 % of its particles (sparse), the other half all (dense). In the
    separator half (z < 8) only the sparse particles are cracked: damage is high where particles
    are few (negative slope, as near the separator in the crack paper's Fig. 5f); in the
    collector half (z >= 8) only the dense ones: positive slope. Cracked and uncracked volumes
    of one seed share every particle; the chosen cracks are carved into the uncracked one.
    Returns the attenuation, the true crack mask and the true particle mask.
    """
    from synthetic.cathode import CRACK, CathodeParams

    shape = (16, 192, 192)
    params = CathodeParams(particle_diameter_px=24.0, packing_variation=0.0)
    cracked = make_cathode_volume(
        shape, seed=seed, crack_density=6.0, depth_gradient=False, params=params
    )
    plain = make_cathode_volume(
        shape, seed=seed, crack_density=0.0, depth_gradient=False, params=params
    )
    assert np.array_equal(cracked.particle_ids, plain.particle_ids)
    ids = plain.particle_ids
    n = int(ids.max())
    count = np.bincount(ids.ravel(), minlength=n + 1)[1:]
    x_sum = np.bincount(ids.ravel(), weights=np.indices(shape)[2].ravel(), minlength=n + 1)[1:]
    sparse_side = x_sum / np.maximum(count, 1) < shape[2] / 2
    dropped = sparse_side & (np.random.default_rng(0).random(n) < 0.85)
    kept = np.where(np.isin(ids, np.flatnonzero(dropped) + 1), 0, ids)
    sparse = np.isin(kept, np.flatnonzero(sparse_side) + 1)
    dense = (kept > 0) & ~sparse
    z = np.arange(shape[0])[:, None, None]
    cracks = (cracked.phase == CRACK) & np.where(z < shape[0] // 2, sparse, dense)
    attenuation = plain.attenuation.copy()
    attenuation[(ids > 0) & (kept == 0)] = 0.0  # dropped particles are pore
    attenuation[cracks] = 0.0  # cracks have the pore value (synthetic.cathode)
    return attenuation, cracks, kept > 0


# one 16 x 192 x 192 tomogram through both consumers and Tiled: about 1 min on 2 cores
@pytest.mark.timeout(900)
def test_layer_correlation_sign_flip_reaches_tiled(consumer_settings, tiled_client):
    """The crack paper's key finding end to end: a tomogram whose damage-vs-particle-density
    slope is negative near the separator and positive near the collector by construction goes
    through reconstruction, the crack U-Net and the quantification of the live service; the
    layer table, the summary and the figure in Tiled show the same signs."""
    from pipelines.cracks.layers import layer_correlation
    from pipelines.cracks.quantify import QuantifyParams, quantify_damage

    attenuation, true_cracks, true_particles = sign_flip_volume()
    window = 48
    truth_q = quantify_damage(
        true_cracks.astype(np.uint8),
        true_particles.astype(np.uint8),
        QuantifyParams(window=window, n_layers=2),
    )
    truth = layer_correlation(
        truth_q.particle_density, truth_q.damage_density, n_layers=2, stride=window // 2
    )
    assert truth.slope[0] < 0 < truth.slope[1], truth  # the construction has the sign flip
    settings, detector = consumer_settings
    angles = np.linspace(0.0, 180.0, 192, endpoint=False)
    md = {
        "voxel_size_um": 0.25,
        "beamwatch_crack_params": {"quantify": {"window": window, "n_layers": 2}},
    }
    with live_tomo_run(settings, detector, attenuation, angles, seed=7, md=md) as uid:
        node = finished_result(tiled_client, uid, "cracks", timeout=600)
        assert node.metadata["status"] == "complete", node.metadata
        table = node["layer_correlation"].read().sort_values("layer")
        assert list(table["layer"]) == [0, 1]
        np.testing.assert_array_equal(table["z_start"], [0, 8])
        np.testing.assert_allclose(table["depth_stop"], [8 * 0.25, 16 * 0.25])
        slope, r = table["slope"].to_numpy(), table["pearson_r"].to_numpy()
        assert slope[0] < 0 < slope[1], table
        assert r[0] < -0.1 and r[1] > 0.5, table
        summary = node.metadata["layer_fit_summary"]
        assert summary["n_layers"] == 2
        assert summary["slope_separator"] == pytest.approx(slope[0])
        assert summary["slope_collector"] == pytest.approx(slope[1])
        assert summary["pearson_r_separator"] < 0 < summary["pearson_r_collector"]
        figure = node["figures"]["layer_correlation"]
        assert figure.shape[2] == 3 and figure.read().std() > 0
        check_crack_numbers(node, voxel_um=0.25, n_layers=2)


@pytest.mark.parametrize("seconds, blocks", [(3600.0, 4), (0.0, 64)])
def test_crack_masks_grow_in_tiled_by_blocks_of_slices(
    tiled_server, tiled_client, tmp_path, monkeypatch, seconds, blocks
):
    """The masks of a 64-slice 256 x 256 tomogram reach Tiled in blocks of ~1 MB (4 writes
    each), or, when segmenting is slow (here: a block due after 0 s), slice by slice; they read
    back whole and the same either way. One write per slice, as before, cost Tiled a request
    per slice and mask (23 and 14 per run of the worker_scaling benchmark after the spool's
    merging: a quarter of the run's requests)."""
    import uuid

    from benchmarks.tiled_requests import read_log
    from services.analysis import tomo_live
    from services.analysis.results import ResultWriter
    from services.core.layout import CRACKS
    from services.core.metrics import Metrics
    from services.tiled.applier import TiledApplier
    from services.tiled.spool import Spool

    monkeypatch.setattr(tomo_live, "LIVE_MASK_SECONDS", seconds)
    rng = np.random.default_rng(3)
    cracks = (rng.random((64, 256, 256)) > 0.9).astype(np.uint8)
    particles = np.maximum(cracks, (rng.random(cracks.shape) > 0.5).astype(np.uint8))
    uid = str(uuid.uuid4())
    # one record per Tiled write (no merging): what the stage writes is what Tiled gets
    spool = Spool(tmp_path / "spool", TiledApplier(tiled_client), Metrics("analysis"), max_batch=1)
    out = ResultWriter(spool, uid, CRACKS.pipeline)
    out.container({"status": "running"})
    segmented_cracks, segmented_particles = np.zeros_like(cracks), np.zeros_like(particles)
    live = tomo_live.LiveMaskRows(out, segmented_cracks, segmented_particles)
    for z in range(len(cracks)):  # as iter_crack_slices yields them: in increasing z
        segmented_cracks[z], segmented_particles[z] = cracks[z], particles[z]
        live.segmented(z + 1)
    live.flush()
    assert spool.depth() == 1 + 2 * blocks

    log = tiled_server.settings.data_dir / "tiled.log"
    start = log.stat().st_size
    spool.start()
    try:
        assert spool.wait_empty(120)
    finally:
        spool.stop(drain_timeout=0)
    writes = [
        r
        for r in read_log(log, start, log.stat().st_size)
        if r.kind == "array write" and uid in r.path
    ]
    assert len(writes) == 2 * blocks, [f"{r.method} {r.path}" for r in writes]
    node = tiled_client["analysis"][uid][CRACKS.pipeline]
    for key, expected in ((CRACKS.mask, cracks), (CRACKS.particle_mask, particles)):
        array = node[key].read()
        assert array.dtype == np.uint8 and array.shape == expected.shape
        np.testing.assert_array_equal(array, expected)


def test_crack_mask_blocks_answered_500_after_commit_are_exactly_once(
    tiled_server, tiled_client, tmp_path
):
    """The masks' block writes that Tiled committed but answered 500 to are retried by the
    spool and land once: the arrays read back whole, every slice once, no block doubled."""
    import uuid

    import httpx

    from services.analysis import tomo_live
    from services.analysis.results import ResultWriter
    from services.core.layout import CRACKS
    from services.core.metrics import Metrics
    from tests.services.faults import CommittedButFailed, started_spool

    rng = np.random.default_rng(5)
    cracks = (rng.random((48, 256, 256)) > 0.9).astype(np.uint8)
    particles = np.maximum(cracks, (rng.random(cracks.shape) > 0.5).astype(np.uint8))
    uid = str(uuid.uuid4())

    def mask_block(request: httpx.Request) -> bool:
        path = request.url.path
        return request.method in ("PUT", "PATCH") and uid in path and "mask" in path

    client = tiled_server.client()
    fault = CommittedButFailed(mask_block, 4)
    client.context.http_client.event_hooks["response"].append(fault)
    spool = started_spool(client, tmp_path / "spool", Metrics("analysis"), max_batch=1)
    out = ResultWriter(spool, uid, CRACKS.pipeline)
    out.container({"status": "running"})
    live = tomo_live.LiveMaskRows(out, cracks, particles)  # 16 slices per block: 3 each
    for z in range(len(cracks)):
        live.segmented(z + 1)
    live.flush()
    try:
        assert spool.wait_empty(120)
    finally:
        spool.stop(drain_timeout=0)
        client.context.close()
    assert len(fault.injected) == 4, fault.injected
    node = tiled_client["analysis"][uid][CRACKS.pipeline]
    for key, expected in ((CRACKS.mask, cracks), (CRACKS.particle_mask, particles)):
        array = node[key].read()
        assert array.dtype == np.uint8 and array.shape == expected.shape
        np.testing.assert_array_equal(array, expected)
