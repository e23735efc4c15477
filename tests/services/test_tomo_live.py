"""The tomography pipeline in the analysis consumer: reconstruction, crack map, quantification."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_plans.devices import SimTomoStation
from bluesky_plans.plans import tomo_scan_plan
from models.synthetic.cathode import make_cathode_volume
from pipelines.tomo.simulate import simulate_scan
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import live_publisher, start_consumers


def test_tomogram_is_reconstructed_and_crack_mapped(consumer_settings, tiled_client):
    settings, detector = consumer_settings
    shape = (6, 64, 64)
    volume = make_cathode_volume(shape, seed=11)
    angles = np.linspace(0.0, 180.0, 48, endpoint=False)
    frames = simulate_scan(volume.attenuation, angles, seed=4)
    station = SimTomoStation.from_frames(
        angles, frames.projections, frames.flat, frames.dark, detector
    )
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    try:
        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(tomo_scan_plan(station, angles, n_darks=2, n_flats=2))

        def status():
            return tiled_client["analysis"][uid]["cracks"].metadata.get("status")

        wait_until(lambda: status() in ("complete", "failed"), timeout=240)
        node = tiled_client["analysis"][uid]["cracks"]
        assert status() == "complete", node.metadata
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
        assert {"damage_top", "damage_bottom", "depth_profile", "correlation"} <= set(
            node["figures"]
        )

        # second stage: every particle once, with its measurements, flaw call and detachment
        wait_until(
            lambda: (
                tiled_client["analysis"][uid]["particles"].metadata.get("status")
                in ("complete", "failed")
            ),
            timeout=240,
        )
        particles = tiled_client["analysis"][uid]["particles"]
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
        assert {"sizes", "detachment", "flawed"} <= set(particles["figures"])
        # the start document states no voxel size: lengths in px, never a made-up um
        assert particles.metadata["length_unit"] == "px"
        assert particles.metadata["voxel_size_um"] is None
        assert particles.metadata["size_threshold_um"] is None
        assert "size_edges_px" in particles and "size_edges_um" not in particles

        # the shareable report embeds every figure and needs nothing from the network
        from services.web.report import build_report

        page = build_report(tiled_client, uid)
        assert page.count("data:image/png;base64,") == 7  # 4 crack + 3 particle figures
        assert "src='http" not in page and "href='http" not in page
        assert "particles" in page and "complete" in page
    finally:
        pub.close()
        raw.stop()
        ana.stop()


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
