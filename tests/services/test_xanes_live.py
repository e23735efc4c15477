"""The live XANES pipeline in the analysis consumer: Tiled layout, accuracy, drift feedback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq
from bluesky import RunEngine

from bluesky_plans.devices import SimTXM
from bluesky_plans.plans import operando_xanes_plan
from services.runtime.consumer import Consumer
from synthetic.txm import TxmScene, default_energies
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import live_publisher, start_consumers

N = 12


def test_live_xanes_results_feedback_and_series(consumer_settings, tiled_client):
    settings, detector = consumer_settings
    feedback = zmq.Context.instance().socket(zmq.SUB)
    feedback.connect(settings.bus.feedback_address)
    feedback.setsockopt(zmq.SUBSCRIBE, b"")
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    try:
        scene = TxmScene.random(5, shape=(160, 160), n_particles=4, n_scans=2, n_frames=N)
        txm = SimTXM(scene, detector, seed=3)
        RE = RunEngine({})
        RE.subscribe(pub)
        uids = RE(operando_xanes_plan(txm, default_energies(N), 2, n_flats=2))
        assert len(uids) == 2

        def status(uid):
            return tiled_client["analysis"][uid]["xanes"].metadata.get("status")

        for uid in uids:
            wait_until(lambda u=uid: status(u) in ("complete", "failed"), timeout=180)
            assert status(uid) == "complete", tiled_client["analysis"][uid]["xanes"].metadata
        node = tiled_client["analysis"][uids[0]]["xanes"]
        labels = node["labels"].read()
        p = int(labels.max())
        assert p >= 3
        com = node["particle_com"].read()
        assert com.shape == (p, N, 2)
        assert node["global_shift"].read().shape == (N, 2)
        assert node["edge_energy"].read().dtype == np.float32
        assert node["spectra"].read().shape == (p, N)
        # the post-edge pass needs a background that stays still: not this scene's
        assert node.metadata["post_edge_applied"] is False
        backfilled = node["backfilled"].read()
        assert backfilled.shape == (p, N) and not backfilled.any()
        # its particles move on their own (not rigidly): no deviation smoothed
        smoothed = node["smoothed"].read()
        assert smoothed.shape == (p, N) and not smoothed.any()
        frames = node["frames"].read()
        assert sorted(frames["seq_num"]) == list(range(1, N + 1))
        # the support of every drift estimate is recorded; these frames all have particles
        assert {"n_used", "spread_px", "trusted"} <= set(frames.columns)
        assert frames["trusted"].all() and (frames["n_used"] >= 1).all()
        assert {"found", "partial"} <= set(node["particles"].read().columns)
        assert len(node["particles"].read()) == p * N
        assert set(node["figures"]) == {
            "drift",
            "tracks",
            "edge_energy",
            "whiteline_energy",
            "kinematics",
            "ssim",
            "soc_trajectory",  # a scan of an operando series
        }
        # no chemistry asked for: none written, none reported
        assert "chemistry" not in node.metadata and "lcf_fraction_map" not in node
        check_motion_numbers(node, scene)

        # per-particle shifts against the simulation's ground truth (scan 0)
        shift = node["particle_shift"].read()
        truth = np.stack(
            [scene.truth_shift(0, i) - scene.truth_shift(0, 0) for i in range(N)], axis=1
        )
        centres = scene.truth_centres(0, 0)
        found = com[:, 0, :]
        err = []
        for k in range(p):
            j = int(np.argmin(np.linalg.norm(centres - found[k], axis=1)))
            err.append(shift[k] - truth[j])
        rms = float(np.sqrt(np.nanmean(np.square(err))))
        assert rms < 0.5, rms

        # the second scan's deformation table links the particles of both scans
        second = tiled_client["analysis"][uids[1]]["xanes"]
        assert second.metadata["series_scans"] == [0, 1]
        assert second["deformation_displacement"].read().shape[1] == 2

        # the two scans side by side: their edge-energy distributions in one figure
        from services.web.report import build_report

        page = build_report(tiled_client, list(uids))
        assert page.count("alt='compare_edge_energy'") == 1
        for uid in uids:
            edge = tiled_client["analysis"][uid]["xanes"]["edge_energy"].read()
            assert f"<td>{float(edge[np.isfinite(edge)].mean()):.4g}</td>" in page
            assert f"id='run-{uid}'" in page
        assert page.count("alt='kinematics'") == 2

        # one drift message per frame of each scan, JSON with the run uid
        messages = []
        while feedback.poll(0):
            messages.append(json.loads(feedback.recv()))
        assert {m["run_uid"] for m in messages} <= set(uids)
        assert len([m for m in messages if m["run_uid"] == uids[1]]) == N
        assert all("dy_um" in m for m in messages)
    finally:
        pub.close()
        feedback.close(0)
        for consumer in (raw, ana):
            Consumer.stop(consumer)


def check_motion_numbers(node, scene) -> None:  # noqa: ANN001
    """Within-scan kinematics, rigid split and SSIM summary: those of the arrays in Tiled, and
    the non-rigid motion measured is the simulation's."""
    from pipelines.xanes.deformation import deformation_series, rigid_split
    from pipelines.xanes.quality import ssim_summary

    shift = node["particle_shift"].read()
    p = shift.shape[0]
    kin = deformation_series(shift)
    np.testing.assert_allclose(node["scan_velocity"].read(), kin.velocity, equal_nan=True)
    np.testing.assert_allclose(node["scan_acceleration"].read(), kin.acceleration, equal_nan=True)
    np.testing.assert_allclose(
        node["scan_cumulative_distance"].read(), kin.cumulative_distance, equal_nan=True
    )
    motion = node["particle_motion"].read().sort_values("particle")
    assert list(motion["particle"]) == list(range(1, p + 1))
    split = rigid_split(kin, tolerance=1.0)
    np.testing.assert_array_equal(motion["rigid"], split.rigid)
    summary = node.metadata["rigid_split"]
    assert summary["n_rigid"] + summary["n_nonrigid"] == int(split.known.sum())
    assert node.metadata["length_unit"] == "um" and node.metadata["pixel_size_um"] == 0.03
    # SSIM summary from the per-frame particle rows
    rows = node["particles"].read()
    ssim = np.full((p, N), np.nan)
    ssim[rows["particle"].to_numpy() - 1, rows["frame"].to_numpy()] = rows["ssim"].to_numpy()
    quality = ssim_summary(ssim, low=0.5)
    np.testing.assert_allclose(motion["ssim_mean"], quality.particle_mean, equal_nan=True)
    np.testing.assert_allclose(node["ssim_frame_mean"].read(), quality.frame_mean, equal_nan=True)
    assert node.metadata["ssim_quality"]["mean"] == pytest.approx(quality.overall_mean)
    # truth: each particle's own motion in scan 0 (its shift minus the median of all shifts)
    truth = np.stack([scene.truth_shift(0, i) - scene.truth_shift(0, 0) for i in range(N)], axis=1)
    true_nonrigid = truth - np.median(truth, axis=0)[None]
    true_peak = np.linalg.norm(true_nonrigid, axis=2).max(axis=1)
    centres = scene.truth_centres(0, 0)
    com0 = node["particle_com"].read()[:, 0, :]
    for k in range(p):
        j = int(np.argmin(np.linalg.norm(centres - com0[k], axis=1)))
        assert motion["nonrigid_peak_px"].iloc[k] == pytest.approx(true_peak[j], abs=0.6)


def test_live_frame_without_particles_is_unknown_and_not_fed_back(consumer_settings, tiled_client):
    """A frame taken with the sample out of the beam: NaN drift in Tiled, untrusted in the
    frames table, no feedback message; tracking goes on after it (issue 12)."""
    from bluesky import plan_stubs as bps

    from bluesky_plans.plans import xanes_scan_plan

    settings, detector = consumer_settings
    feedback = zmq.Context.instance().socket(zmq.SUB)
    feedback.connect(settings.bus.feedback_address)
    feedback.setsockopt(zmq.SUBSCRIBE, b"")
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    n, blank = 10, 5
    try:
        scene = TxmScene.random(6, shape=(160, 160), n_particles=4, n_frames=n)
        txm = SimTXM(scene, detector, seed=4)

        def sample_out_at_blank(i, _energy):
            if i == blank:
                yield from bps.mv(txm.sample_x, 2 * txm.out_of_beam_um)
            elif i == blank + 1:
                yield from bps.mv(txm.sample_x, 0.0)

        RE = RunEngine({})
        RE.subscribe(pub)
        (uid,) = RE(
            xanes_scan_plan(txm, default_energies(n), n_flats=2, before_point=sample_out_at_blank)
        )

        def status():
            return tiled_client["analysis"][uid]["xanes"].metadata.get("status")

        wait_until(lambda: status() in ("complete", "failed"), timeout=180)
        assert status() == "complete"
        node = tiled_client["analysis"][uid]["xanes"]
        shift = node["global_shift"].read()
        assert shift.shape == (n, 2)
        assert np.all(np.isnan(shift[blank])), shift[blank]
        assert np.all(np.isfinite(np.delete(shift, blank, axis=0)))
        frames = node["frames"].read().sort_values("seq_num").reset_index(drop=True)
        assert not frames["trusted"][blank] and frames["n_used"][blank] == 0
        assert frames["trusted"].drop(index=blank).all()
        assert np.all(np.isnan(node["particle_shift"].read()[:, blank]))

        wait_until(lambda: feedback.poll(0), timeout=30)
        messages = []
        while feedback.poll(200):
            messages.append(json.loads(feedback.recv()))
        seq = sorted(m["seq_num"] for m in messages if m["run_uid"] == uid)
        assert seq == [s for s in range(1, n + 1) if s != blank + 1]
    finally:
        pub.close()
        feedback.close(0)
        for consumer in (raw, ana):
            Consumer.stop(consumer)
