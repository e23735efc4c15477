"""Contact merge: pieces of one particle merge, touching particles do not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.particles.merge import (
    contact_graph,
    fill_from_envelope,
    merge_by_contact,
    merge_by_envelope,
)


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def test_halves_of_a_disk_merge_and_two_touching_disks_do_not() -> None:
    halves = np.zeros((80, 80), dtype=np.int32)
    disk = _disk(halves.shape, 40, 40, 25)
    halves[disk & (np.arange(80)[None, :] < 40)] = 1
    halves[disk & (np.arange(80)[None, :] >= 40)] = 2
    merged, mapping = merge_by_contact(halves, min_share=0.2)
    assert mapping == {2: 1} and set(np.unique(merged)) == {0, 1}

    pair = np.zeros((80, 120), dtype=np.int32)
    pair[_disk(pair.shape, 40, 34, 25)] = 1
    pair[_disk(pair.shape, 40, 84, 25) & (pair == 0)] = 2  # flattened against each other
    merged, mapping = merge_by_contact(pair, min_share=0.2)
    assert mapping == {} and set(np.unique(merged)) == {0, 1, 2}


def test_contact_share_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="min_share"):
        merge_by_contact(np.zeros((4, 4), dtype=np.int32), min_share=0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.floats(0.05, 0.6))
def test_merged_surfaces_match_a_recount(seed: int, share: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=(3, 12, 12)).astype(np.int32)
    merged, mapping = merge_by_contact(labels, min_share=share, min_faces=1)
    # every merged group is the union of its members, and the merged graph has no pair left
    # above the threshold (the greedy updates were exact)
    surface, contacts = contact_graph(merged)
    for (a, b), faces in contacts.items():
        assert faces / max(min(surface[a], surface[b]), 1) < share
    for old, new in mapping.items():
        assert np.array_equal(merged[labels == old], np.full((labels == old).sum(), new))


def _split_ball_and_neighbour() -> tuple[np.ndarray, np.ndarray]:
    """A ball cut in two by a 6-px planar crack (labels 1, 2) beside a second ball (label 3);
    the envelope: both balls whole, apart."""
    z, y, x = np.mgrid[:12, :64, :110]
    first = (z - 6) ** 2 + (y - 32) ** 2 + (x - 30) ** 2 <= 24**2
    second = (z - 6) ** 2 + (y - 32) ** 2 + (x - 82) ** 2 <= 24**2
    labels = np.zeros(first.shape, dtype=np.int32)
    labels[first & (x < 27)] = 1
    labels[first & (x > 33)] = 2
    labels[second & (x > 57)] = 3
    envelope = first | (second & (x > 57))
    return labels, envelope


def test_pieces_in_one_envelope_component_merge_and_another_particle_does_not() -> None:
    labels, envelope = _split_ball_and_neighbour()
    merged, mapping = merge_by_envelope(labels, envelope)
    assert mapping == {2: 1}
    assert set(np.unique(merged)) == {0, 1, 3}
    # without the envelope's bridge across the crack nothing merges
    merged, mapping = merge_by_envelope(labels, envelope & (labels > 0))
    assert mapping == {}


def test_an_envelope_joining_two_particles_in_few_slices_does_not_merge_them() -> None:
    labels, envelope = _split_ball_and_neighbour()
    cut = labels.copy()
    cut[labels == 2] = 1  # one particle on the left
    leaky = envelope.copy()
    leaky[5, 28:36, 50:62] = True  # the envelope misses the gap in one slice only
    merged, mapping = merge_by_envelope(cut, leaky)
    assert mapping == {}
    leaky[:, 28:36, 50:62] = True  # in every slice: one component, so they merge
    merged, mapping = merge_by_envelope(cut, leaky)
    assert mapping == {3: 1}


def test_an_envelope_joining_two_particles_over_a_thin_neck_does_not_merge_them() -> None:
    labels, envelope = _split_ball_and_neighbour()
    necked = envelope.copy()
    necked[:, 28:36, 50:62] = True  # an 8-px neck between balls 24 px in radius, every slice
    merged, mapping = merge_by_envelope(labels, necked, min_neck_ratio=0.25)
    assert mapping == {2: 1}  # the crack the envelope covers is as thick as the pieces
    thick = envelope.copy()
    thick[:, 16:48, 50:62] = True  # a neck 32 px wide: one particle to the envelope
    merged, mapping = merge_by_envelope(labels, thick, min_neck_ratio=0.25)
    assert mapping == {2: 1, 3: 1}
    with pytest.raises(ValueError, match="min_neck_ratio"):
        merge_by_envelope(labels, envelope, min_neck_ratio=1.5)


def test_fill_from_envelope_fills_a_component_of_one_label_only() -> None:
    labels, envelope = _split_ball_and_neighbour()
    merged, _ = merge_by_envelope(labels, envelope)
    filled = fill_from_envelope(merged, envelope)
    crack = envelope & (merged == 0)
    assert crack.any() and (filled[crack] == 1).all()
    # unmerged pieces share the component: the crack stays background
    assert (fill_from_envelope(labels, envelope)[crack] == 0).all()


def test_envelope_merge_checks_shapes() -> None:
    with pytest.raises(ValueError, match="3-D"):
        merge_by_envelope(np.zeros((4, 4), dtype=np.int32), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="3-D"):
        fill_from_envelope(np.zeros((2, 4, 4), dtype=np.int32), np.zeros((2, 4, 5), dtype=bool))
