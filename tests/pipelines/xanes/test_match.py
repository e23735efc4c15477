"""Matching invariants (hypothesis): permutations never swap identities, gates hold."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.xanes.match import assignment_from_cost, match_labels, match_particles
from pipelines.xanes.params import MatchParams

PARAMS = MatchParams(max_distance_px=6.0)


@st.composite
def scenes(draw):
    """Well separated reference centres, small motions and a permutation of the detections."""
    n = draw(st.integers(1, 9))
    grid = draw(st.permutations(range(25)))[:n]
    centres = np.array([[20.0 * (g // 5), 20.0 * (g % 5)] for g in grid])
    motion = np.array(
        draw(
            st.lists(st.tuples(st.floats(-2.5, 2.5), st.floats(-2.5, 2.5)), min_size=n, max_size=n)
        )
    )
    order = np.array(draw(st.permutations(range(n))))
    return centres, centres + motion, order


@settings(max_examples=60, deadline=None)
@given(scenes())
def test_permuting_detections_keeps_identities(scene):
    ref, moved, order = scene
    detections = moved[order]
    matching = match_particles(ref, detections, params=PARAMS)
    # reference particle k is detection order^-1[k]: identity follows the particle, not the index
    expected = np.argsort(order)
    np.testing.assert_array_equal(matching.assignment, expected)
    assert matching.new.size == 0


@settings(max_examples=60, deadline=None)
@given(scenes(), st.data())
def test_vanished_particle_is_unmatched_not_swapped(scene, data):
    ref, moved, order = scene
    gone = data.draw(st.integers(0, len(ref) - 1))
    keep = np.array([i for i in range(len(ref)) if i != gone], dtype=int)
    detections = moved[keep]
    matching = match_particles(ref, detections, params=PARAMS)
    assert matching.assignment[gone] == -1
    for k in keep:
        assert keep[matching.assignment[k]] == k


@settings(max_examples=40, deadline=None)
@given(scenes())
def test_entering_particle_is_new(scene):
    ref, moved, _ = scene
    far = np.array([[500.0, 500.0]])
    matching = match_particles(ref, np.vstack([moved, far]), params=PARAMS)
    assert matching.new.tolist() == [len(moved)]
    np.testing.assert_array_equal(matching.assignment, np.arange(len(ref)))


def test_gate_forbids_far_pairs_and_area_mismatch():
    ref = np.array([[0.0, 0.0]])
    assert match_particles(ref, np.array([[0.0, 7.0]]), params=PARAMS).assignment[0] == -1
    matching = match_particles(
        ref,
        np.array([[0.0, 1.0]]),
        ref_areas=np.array([100.0]),
        areas=np.array([400.0]),
        params=PARAMS,
    )
    assert matching.assignment[0] == -1


def test_ssim_breaks_distance_ties():
    rng = np.random.default_rng(0)
    a, b = rng.random((9, 9)), rng.random((9, 9))
    ref = np.array([[10.0, 10.0]])
    candidates = np.array([[10.0, 12.0], [10.0, 8.0]])  # equally far
    matching = match_particles(ref, candidates, ref_rois=[a], rois=[b, a.copy()], params=PARAMS)
    assert matching.assignment[0] == 1


def test_assignment_from_cost_is_optimal():
    cost = np.array([[1.0, 2.0], [1.5, 10.0]])
    np.testing.assert_array_equal(assignment_from_cost(cost).assignment, [1, 0])


def test_match_labels_between_scans():
    ref = np.zeros((80, 80), dtype=np.int32)
    ref[10:20, 10:20] = 1
    ref[50:65, 40:60] = 2
    moved = np.zeros_like(ref)
    moved[52:67, 43:63] = 1  # the second particle, now label 1
    moved[12:22, 13:23] = 2
    image_ref = (ref > 0).astype(float)
    image = (moved > 0).astype(float)
    matching = match_labels(ref, image_ref, moved, image, expected_shift=(2.0, 3.0), params=PARAMS)
    np.testing.assert_array_equal(matching.assignment, [1, 0])
