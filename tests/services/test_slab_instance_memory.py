"""One particle instance task of the slab path stays within its planned bytes per voxel."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from models.crack_unet import reference_levels
from pipelines.particles.instances import InstanceMaps, InstanceParams, segment_instances
from pipelines.slabs import instance_slab
from services.slabs.stores import create_zarr, open_volume, write_slices
from services.slabs.tomo import BYTES_PER_VOXEL, _instance_task
from synthetic.reconstructed import make_reconstructed_cathode

SHAPE = (40, 128, 128)


def test_an_instance_task_peaks_within_bytes_per_voxel_and_labels_as_in_memory(
    tmp_path: Path,
) -> None:
    """The task reads its slab and maps from Zarr as the steps need them; the memory it
    allocates at its peak (tracemalloc: NumPy's and Python's allocations, the inputs read
    included) stays within BYTES_PER_VOXEL["particles"] of its slices (before the lean
    labelling it was 51), and its labels are those of ``instance_slab`` on arrays."""
    sample = make_reconstructed_cathode(SHAPE, seed=990_302, crack_density=1.0)
    volume = sample.recon.astype(np.float32)
    result = segment_instances(volume)
    assert result.envelope is not None
    arrays = {
        "foreground": result.foreground,
        "distance": result.distance,
        "envelope": result.envelope,
    }
    volume_ref = create_zarr(tmp_path / "volume.zarr", SHAPE, np.float32, 8, compress=False)
    write_slices(volume_ref, 0, volume)
    maps = {}
    for name, data in arrays.items():
        maps[name] = create_zarr(tmp_path / f"{name}.zarr", SHAPE, np.float32, 8)
        write_slices(maps[name], 0, data)
    out = create_zarr(tmp_path / "labels.zarr", SHAPE, np.int32, 8)
    levels = reference_levels(volume)
    params = InstanceParams()
    z0, z1, halo = 16, 24, 16  # reads all 40 slices

    tracemalloc.start()
    try:
        part = _instance_task(
            volume_ref, maps, z0, z1, halo, levels, params.model_dump(mode="json"), out, 1
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    voxels = int(np.prod(SHAPE))
    # measured 22.8 B/voxel (2026-11-30; 51.4 before the lean labelling)
    assert peak <= BYTES_PER_VOXEL["particles"] * voxels, peak / voxels
    expected = instance_slab(volume, levels, InstanceMaps(**arrays), params)
    with open_volume(out) as stored:
        np.testing.assert_array_equal(np.asarray(stored[z0:z1]), expected[z0:z1])
    assert part["count"] == int(expected.max()) > 10
