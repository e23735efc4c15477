"""The live after-scan stage sends a tomogram above dask.threshold_mb slab by slab to Dask."""

from __future__ import annotations

import numpy as np

from pipelines.cracks.segment import map_cracks
from services.core.settings import DaskSettings
from services.slabs.cluster import open_client
from synthetic.cathode import make_cathode_volume
from tests.services.live_tomo import finished_result, live_tomo_run


def test_live_tomogram_above_the_threshold_goes_slab_by_slab(consumer_settings, tiled_client):
    settings, detector = consumer_settings
    shape = (8, 64, 64)
    volume = make_cathode_volume(shape, seed=11)
    angles = np.linspace(0.0, 180.0, 48, endpoint=False)
    with open_client(DaskSettings(n_workers=2, memory_limit_mb=1500)) as client:
        dask = DaskSettings(
            scheduler_address=client.scheduler.address,
            threshold_mb=0.0,  # every tomogram is "big"
            slab_slices=4,
            particle_halo=4,
        )
        settings = settings.model_copy(update={"dask": dask})
        with live_tomo_run(settings, detector, volume.attenuation, angles, seed=4) as uid:
            finished_result(tiled_client, uid, "particles", timeout=240)
    cracks = tiled_client["analysis"][uid]["cracks"]
    assert cracks.metadata["status"] == "complete", cracks.metadata
    assert cracks.metadata["slabs"] is True
    reconstruction = cracks["reconstruction"].read()
    assert reconstruction.shape == shape and reconstruction.dtype == np.float32
    # the slabs' crack map is the in-memory crack map of the same reconstruction
    expected = map_cracks(reconstruction)
    np.testing.assert_array_equal(cracks["mask"].read(), expected.crack_mask)
    np.testing.assert_array_equal(
        cracks["damage_density"].read(), expected.quantification.damage_density
    )
    assert {"damage_top", "damage_bottom", "depth_profile", "correlation"} <= set(cracks["figures"])
    particles = tiled_client["analysis"][uid]["particles"]
    assert particles.metadata["status"] == "complete", particles.metadata
    labels = particles["labels"].read()
    table = particles["table"].read()
    assert labels.shape == shape
    assert len(table) == particles.metadata["particles"] == len(np.unique(labels)) - 1
    assert particles.metadata["mean_detachment"] is None  # not computed slab by slab: unknown
    # the work directory of the run is gone
    assert not any(settings.slab_work_dir.glob("*/*"))
