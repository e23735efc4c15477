"""Slab-by-slab processing on a real Dask LocalCluster equals the in-memory pipelines, and the
workers stay under their memory cap on a volume several times larger than it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from pipelines.cracks.segment import CrackParams, map_cracks
from pipelines.particles.analyze import ParticleParams, analyze_particles
from pipelines.particles.instances import segment_instances
from pipelines.tomo.fbp import ReconParams, reconstruct
from services.cli import main
from services.core.settings import DaskSettings
from services.slabs.cluster import open_client, worker_ids, worker_peak_memory_mb
from services.slabs.stores import VolumeRef, open_volume
from services.slabs.tomo import (
    ProjectionFile,
    analyze_particles_slabs,
    map_cracks_slabs,
    reconstruct_slabs,
)
from synthetic.cathode import make_cathode_volume
from synthetic.scan import simulate_scan

SHAPE = (40, 64, 64)


def _read(ref: VolumeRef) -> np.ndarray:
    with open_volume(ref) as array:
        return np.asarray(array[:])


def _label_pairs(a: np.ndarray, b: np.ndarray) -> dict[int, int]:
    """The one-to-one correspondence of two labellings of the same voxels, or fail."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "a label of a is split in b"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "a label of b joins labels of a"
    return {int(x): int(y) for x, y in pairs.T}


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    truth = make_cathode_volume(SHAPE, seed=5, crack_density=1.5)
    angles = np.linspace(0.0, 180.0, 60, endpoint=False)
    frames = simulate_scan(truth.attenuation, angles, seed=6)
    path = tmp_path_factory.mktemp("slabs") / "projections.h5"
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = frames.projections
        h5["/entry/data/rotation_angle"] = angles
        h5["/entry/data/flat"] = frames.flat
        h5["/entry/data/dark"] = frames.dark
    return path, angles


@pytest.fixture(scope="module")
def in_memory(scan) -> tuple[np.ndarray, Any, Any]:
    """The in-memory pipelines on the scan: volume, crack map, particles."""
    path, angles = scan
    with h5py.File(path, "r") as h5:
        projections = h5["/entry/data/data"][()]
        flat, dark = h5["/entry/data/flat"][()], h5["/entry/data/dark"][()]
    volume = reconstruct(projections, angles, flat=flat, dark=dark, params=ReconParams())
    cracks = map_cracks(volume)
    particles = analyze_particles(volume, crack_mask=cracks.crack_mask, params=ParticleParams())
    return volume, cracks, particles


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A LocalCluster of 2 worker processes shared by the tests of this module."""
    with open_client(DaskSettings(n_workers=2, memory_limit_mb=1500)) as c:
        yield c


def _assert_same_particles(
    labels: np.ndarray, table: np.ndarray, memory_labels: np.ndarray, memory_table: np.ndarray
) -> None:
    mapping = _label_pairs(memory_labels, labels)
    assert len(table) == len(memory_table) == len(mapping) - 1
    row_of = {int(k): i for i, k in enumerate(table["label"])}
    rows = np.array([row_of[mapping[int(k)]] for k in memory_table["label"]])
    for name in (
        "volume_voxels",
        "equivalent_diameter_px",
        "centroid_z",
        "centroid_y",
        "centroid_x",
        "surface_area_px2",
        "sphericity",
        "crack_fraction",
        "touches_border",
        "slice_z",
        "flawed_slices",
        "flawed",
    ):
        np.testing.assert_array_equal(table[name][rows], memory_table[name], err_msg=name)
    # the flaw network scores the same crops in other batches
    np.testing.assert_allclose(
        table["slice_scores"][rows], memory_table["slice_scores"], rtol=0, atol=1e-5
    )
    # not computed on the slab path: unknown, never 0
    assert np.isnan(table["detachment"]).all()


def test_slabs_on_a_cluster_equal_the_in_memory_pipelines(scan, in_memory, client, tmp_path):
    path, angles = scan
    volume, cracks, particles = in_memory
    params = ReconParams()
    particle_params = ParticleParams()
    source = ProjectionFile(str(path), flat="/entry/data/flat", dark="/entry/data/dark")
    recon = reconstruct_slabs(
        client, source, angles, params, tmp_path, memory_limit_mb=1500, rows=7
    )
    slab_cracks = map_cracks_slabs(
        client,
        recon.volume,
        recon.shape,
        CrackParams(),
        tmp_path,
        memory_limit_mb=1500,
        slab=6,
        sample=recon.sample,
    )
    slab_particles = analyze_particles_slabs(
        client,
        recon.volume,
        recon.shape,
        particle_params,
        tmp_path,
        memory_limit_mb=1500,
        crack_mask=slab_cracks.crack_mask,
        halo=16,
        slab=10,
        levels=slab_cracks.levels,
    )

    # reconstruction: detector rows are independent, the slabs give the same voxels
    np.testing.assert_array_equal(_read(recon.volume), volume)
    # crack map (1 slice of context) and quantification (per slice, combined afterwards)
    np.testing.assert_array_equal(_read(slab_cracks.crack_mask), cracks.crack_mask)
    np.testing.assert_array_equal(_read(slab_cracks.particle_mask), cracks.particle_mask)
    assert cracks.crack_mask.any()
    q = cracks.quantification
    np.testing.assert_array_equal(_read(slab_cracks.damage_density), q.damage_density)
    np.testing.assert_array_equal(_read(slab_cracks.particle_density), q.particle_density)
    for name in (
        "crack_area",
        "particle_area",
        "depth_profile",
        "damage_histogram",
        "histogram_edges",
        "layer_slope",
        "layer_intercept",
        "layer_pearson_r",
    ):
        np.testing.assert_array_equal(getattr(slab_cracks, name), getattr(q, name), err_msg=name)
    assert slab_cracks.volume_fit == q.volume_fit
    assert slab_cracks.solid_threshold == cracks.solid_threshold

    # the particle networks ran once per slice (1 slice of context): the in-memory maps (to
    # the last bits: the workers' torch runs on 1 thread, this process's on more)
    memory_maps = segment_instances(volume, particle_params.instances)
    assert set(slab_particles.maps) == {"foreground", "distance", "envelope"}
    for name, ref in slab_particles.maps.items():
        np.testing.assert_allclose(
            _read(ref), getattr(memory_maps, name), rtol=1e-5, atol=1e-6, err_msg=name
        )
    # particles: the same instances up to relabelling, with particles crossing slab borders
    labels = _read(slab_particles.labels)
    crossing = [
        z for z in (10, 20, 30) if set(np.unique(labels[z - 1])) & set(np.unique(labels[z])) - {0}
    ]
    assert len(crossing) == 3, "the test volume must have particles crossing every border"
    assert slab_particles.n_slabs == 4
    _assert_same_particles(labels, slab_particles.table, particles.labels, particles.table)


def test_cli_runs_slab_by_slab_on_a_scheduler_address(scan, in_memory, client, tmp_path):
    path, _ = scan
    volume, cracks, particles = in_memory
    config = tmp_path / "beamwatch.yml"
    config.write_text(
        "dask:\n"
        f"  scheduler_address: {client.scheduler.address}\n"
        f"  work_dir: {tmp_path / 'work'}\n"
        "  slab_slices: 16\n"
        "  particle_halo: 16\n"
    )
    rec, crk, par = tmp_path / "rec.h5", tmp_path / "cracks.h5", tmp_path / "particles.h5"
    base = ["--config", str(config)]
    assert main([*base, "tomo", "reconstruct", str(path), "-o", str(rec), "--slabs", "always"]) == 0
    assert main([*base, "cracks", "map", str(rec), "-o", str(crk), "--slabs", "always"]) == 0
    args = ["particles", "analyze", str(rec), "--cracks", str(crk), "-o", str(par)]
    assert main([*base, *args, "--slabs", "always"]) == 0
    with h5py.File(rec) as h5:
        cli_volume = h5["/entry/data/data"][()]
    # torch's sparse back projection may round the last bit differently for another number of
    # rows per slab (on AVX-512 CPUs, 4 to 24 rows in multiples of 4 against any other count):
    # equal to float32 rounding, and the later stages are compared on the volume they read
    scale = float(np.abs(volume).max())
    np.testing.assert_allclose(cli_volume, volume, rtol=0, atol=1e-6 * scale)
    if not np.array_equal(cli_volume, volume):
        cracks = map_cracks(cli_volume)
        particles = analyze_particles(
            cli_volume, crack_mask=cracks.crack_mask, params=ParticleParams()
        )
    with h5py.File(crk) as h5:
        np.testing.assert_array_equal(h5["/cracks/mask"][()], cracks.crack_mask)
        np.testing.assert_array_equal(
            h5["/cracks/damage_density"][()], cracks.quantification.damage_density
        )
        assert h5["/cracks/correlation"].attrs["pearson_r"] == (
            cracks.quantification.volume_fit.pearson_r
        )
    with h5py.File(par) as h5:
        _assert_same_particles(
            h5["/particles/labels"][()],
            h5["/particles/table"][()],
            particles.labels,
            particles.table,
        )
        assert h5["/particles"].attrs["slabs"] == 3
    assert not any((tmp_path / "work").iterdir()), "the work directory is left behind"
    # what the slab path cannot do is refused with a message, not done differently
    assert (
        main([*base, "cracks", "map", str(rec), "-o", str(crk), "--slabs", "always", "--baseline"])
        == 2
    )


def test_workers_stay_under_their_memory_cap_on_a_volume_four_times_larger(tmp_path):
    cap_mb = 600.0
    # 9600 slices of 256 x 256: a 2400 MB float32 volume, 4 times a worker's cap
    rows, cols, n_angles = 9600, 256, 4
    volume_mb = rows * cols * cols * 4 / 2**20
    assert volume_mb >= 4 * cap_mb
    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    path = tmp_path / "projections.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        data = h5.create_dataset("/entry/data/data", (n_angles, rows, cols), dtype=np.float32)
        for r0 in range(0, rows, 1200):  # written slab-wise like a detector
            data[:, r0 : r0 + 1200] = rng.random((n_angles, 1200, cols), dtype=np.float32)
    settings = DaskSettings(n_workers=2, memory_limit_mb=cap_mb)
    with open_client(settings) as client:
        before = worker_ids(client)
        result = reconstruct_slabs(
            client,
            ProjectionFile(str(path)),
            angles,
            ReconParams(center="detector", input_kind="line_integral"),
            tmp_path,
            memory_limit_mb=cap_mb,
        )
        peaks = worker_peak_memory_mb(client)
        after = worker_ids(client)
    assert after == before, "a worker was restarted (killed by its nanny?)"
    assert len(peaks) == 2
    for worker, peak in peaks.items():
        assert peak < cap_mb, f"{worker} peaked at {peak:.0f} MB over the {cap_mb:.0f} MB cap"
    with open_volume(result.volume) as array:
        assert array.shape == (rows, cols, cols)
        # every slab was written: the last slice is a reconstruction, not the fill value
        assert np.abs(np.asarray(array[rows - 1])).max() > 0
