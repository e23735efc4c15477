"""The simulated TXM's real-looking field-of-view mode (issue 12)."""

from __future__ import annotations

import numpy as np
from bluesky import RunEngine

from bluesky_plans.devices import SimTXM
from bluesky_plans.plans import xanes_scan_plan
from synthetic.txm_dense import DenseTxmScene, dense_energies


def test_real_looking_field_of_view_scan(tmp_path):
    txm = SimTXM.real_looking(tmp_path, seed=3, shape=(128, 128), n_particles=6, n_frames=12)
    assert isinstance(txm.scene, DenseTxmScene)
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(xanes_scan_plan(txm, list(dense_energies(12)), scan_index=0))
    assert uid
    names = [name for name, _ in docs]
    assert names[0] == "start" and names[-1] == "stop"
    assert docs[-1][1]["exit_status"] == "success"
    # the stage correction moves the rendered sample: one pixel of stage, one pixel of image
    scene = txm.scene
    still = scene.optical_density(8450.0, 3)
    moved = scene.optical_density(8450.0, 3, stage_offset_px=(0.0, 1.0))
    np.testing.assert_allclose(moved[:, 40:90], np.roll(still, 1, axis=1)[:, 40:90], atol=0.02)
    frame = scene.frame(8450.0, 3, stage_offset_px=(0.5, -0.5))
    assert frame.dtype == np.float32 and frame.shape == (128, 128)
    assert np.all(frame >= 0)
