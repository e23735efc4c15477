"""Invariants of the slab functions: sampling, quantification and label merging."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.cracks.quantify import (
    QuantifyParams,
    damage_histograms,
    depth_profile,
    fit_line,
    histogram_edges,
    quantify_damage,
    slab_damage,
)
from pipelines.slabs import LabelMerger, border_matches, plan_slabs, regular_sample


@settings(max_examples=40, deadline=None)
@given(
    depth=st.integers(1, 20),
    plane=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    slab=st.integers(1, 8),
    step=st.integers(1, 50),
)
def test_slab_samples_concatenate_to_the_volume_sample(depth, plane, slab, step):
    volume = np.arange(depth * plane[0] * plane[1]).reshape(depth, *plane)
    parts = [
        regular_sample(volume[s.start : s.stop], s.start, step) for s in plan_slabs(depth, slab)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), volume.ravel()[::step])


def test_plan_covers_every_slice_once_with_clipped_context():
    slabs = plan_slabs(23, 5, halo=3)
    assert [s.start for s in slabs] == [0, 5, 10, 15, 20]
    assert slabs[-1].stop == 23 and slabs[0].lo == 0 and slabs[-1].hi == 23
    assert slabs[1].lo == 2 and slabs[1].hi == 13 and slabs[1].core == slice(3, 8)


def test_quantification_combined_from_slabs_equals_the_whole_volume():
    rng = np.random.default_rng(1)
    particles = rng.random((11, 60, 70)) < 0.6
    cracks = (rng.random(particles.shape) < 0.15) & particles
    p = QuantifyParams(window=9)
    whole = quantify_damage(cracks, particles, p)
    runs = [
        slab_damage(cracks[s.start : s.stop], particles[s.start : s.stop], p)
        for s in plan_slabs(11, 3)
    ]
    edges = histogram_edges(p, max(r.damage_max for r in runs))
    hist = np.concatenate(
        [
            damage_histograms(r.damage_density, particles[s.start : s.stop], edges)
            for r, s in zip(runs, plan_slabs(11, 3), strict=True)
        ]
    )
    np.testing.assert_array_equal(hist, whole.damage_histogram)
    np.testing.assert_array_equal(edges, whole.histogram_edges)
    area = np.concatenate([r.crack_area for r in runs])
    solid = np.concatenate([r.particle_area for r in runs])
    np.testing.assert_array_equal(depth_profile(area, solid), whole.depth_profile)
    fit = fit_line(
        np.concatenate([r.particle_samples for r in runs]),
        np.concatenate([r.damage_samples for r in runs]),
    )
    assert fit == whole.volume_fit
    np.testing.assert_array_equal(
        np.concatenate([r.damage_density for r in runs]), whole.damage_density
    )


def test_border_matches_join_one_particle_and_keep_touching_ones_apart():
    lower = np.zeros((2, 10, 10), dtype=np.int32)
    upper = np.zeros_like(lower)
    lower[:, 1:5, 1:5] = 3  # a particle crossing the border, labelled 3 below and 7 above
    upper[:, 1:5, 1:5] = 7
    lower[0, 6:9, 6:9] = 2  # ends at the last slice below the border ...
    upper[1, 6:9, 6:9] = 5  # ... and another particle starts right above it: they touch
    assert border_matches(lower, upper) == [(3, 7)]


def test_border_matches_join_a_piece_that_one_slab_split_off_a_tall_particle():
    # the lower slab sees the particle whole (3); the upper one, its context ending inside the
    # particle, splits it: 7 holds most of its border voxels, 9 a corner below the border and
    # two voxels of its core (in-memory, all of it is one particle)
    lower = np.zeros((2, 10, 10), dtype=np.int32)
    lower[:, 1:9, 1:9] = 3
    upper = lower.copy()
    upper[upper == 3] = 7
    upper[0, 1:4, 1:4] = 9
    upper[1, 1, 1:3] = 9
    assert sorted(border_matches(lower, upper)) == [(3, 7), (3, 9)]


def test_label_merger_chains_a_particle_through_three_slabs():
    merger = LabelMerger([2, 1, 3])
    merger.union(0, 2, 1, 1)
    merger.union(1, 1, 2, 3)
    tables = merger.lookup_tables([np.array([1, 2]), np.array([1]), np.array([1, 3])])
    assert tables[0].tolist() == [0, 1, 2]
    assert tables[1].tolist() == [0, 2]
    assert tables[2].tolist() == [0, 3, 0, 2]


def test_instance_maps_of_slabs_with_one_slice_of_context_are_the_whole_volume_maps():
    from models.crack_unet import normalize_slices
    from models.envelope_unet import load_envelope_unet
    from models.particle_unet import load_particle_unet
    from pipelines.particles.instances import InstanceParams, predict_instance_maps
    from pipelines.slabs import instance_maps_slab
    from synthetic.cathode import make_cathode_volume

    volume = make_cathode_volume((14, 48, 48), seed=3).attenuation.astype(np.float32)
    volume[:, :4, :4] = 0.0  # outside the reconstruction circle: no particle there
    levels = (float(np.percentile(volume, 1)), float(np.percentile(volume, 99.5)))
    params = InstanceParams()
    net, env = load_particle_unet(), load_envelope_unet()
    whole = predict_instance_maps(
        volume, normalize_slices(volume, *levels), params, model=net, envelope_model=env
    )
    pieces = []
    for slab in plan_slabs(volume.shape[0], 4, halo=1):
        pieces.append(
            instance_maps_slab(
                volume[slab.lo : slab.hi], slab.core, levels, params, model=net, envelope_model=env
            )
        )
    for name in ("foreground", "distance", "envelope"):
        joined = np.concatenate([getattr(m, name) for m in pieces])
        np.testing.assert_array_equal(joined, getattr(whole, name), err_msg=name)
    assert (whole.foreground[:, :4, :4] == 0).all() and (whole.envelope[:, :4, :4] == 0).all()
    assert (whole.foreground > 0.5).any()
