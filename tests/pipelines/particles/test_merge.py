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


def _greedy_merge_reference(labels: np.ndarray, min_share: float, min_faces: int) -> np.ndarray:
    """The greedy contact merge written plainly: after every merge, the merged piece's pairs
    with all its neighbours go back on the heap."""
    import heapq

    surface_arr, contacts = contact_graph(labels)
    surface = {i: int(v) for i, v in enumerate(surface_arr.tolist()) if i > 0}
    nbr: dict[int, dict[int, int]] = {}
    for (a, b), c in contacts.items():
        nbr.setdefault(a, {})[b] = c
        nbr.setdefault(b, {})[a] = c

    def share(a: int, b: int) -> float:
        return nbr[a][b] / max(min(surface[a], surface[b]), 1)

    heap = [(-share(a, b), a, b) for (a, b), c in contacts.items() if c >= min_faces]
    heapq.heapify(heap)
    parent: dict[int, int] = {}
    while heap:
        neg, a, b = heapq.heappop(heap)
        if a in parent or b in parent or b not in nbr.get(a, {}):
            continue
        if nbr[a][b] < min_faces or -neg != share(a, b):
            continue
        if -neg < min_share:
            break
        c = nbr[a][b]
        parent[b] = a  # a < b: the smaller label stays
        surface[a] += surface[b] - 2 * c
        for other, faces in nbr.pop(b).items():
            nbr[other].pop(b)
            if other != a:
                nbr[a][other] = nbr[other][a] = nbr[a].get(other, 0) + faces
        for other, faces in nbr[a].items():
            if faces >= min_faces:
                lo, hi = min(a, other), max(a, other)
                heapq.heappush(heap, (-share(lo, hi), lo, hi))
    lut = np.arange(int(labels.max()) + 1, dtype=labels.dtype)
    for i in parent:
        r = i
        while r in parent:
            r = parent[r]
        lut[i] = r
    return lut[labels]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    share=st.floats(0.02, 0.5),
    min_faces=st.integers(1, 4),
    n_labels=st.integers(2, 60),
)
def test_contact_merge_equals_the_plain_greedy_merge(
    seed: int, share: float, min_faces: int, n_labels: int
) -> None:
    # pieces that grow by many merges: the merge re-queues only the pairs whose share changed
    rng = np.random.default_rng(seed)
    # a few large pieces with many small ones (of 1 to 9 px) scattered over them
    labels = np.kron(rng.integers(1, 5, size=(4, 4)), np.ones((12, 12), dtype=np.int64))
    for k in range(n_labels):
        y, x = rng.integers(0, 46, size=2)
        h, w = rng.integers(1, 4, size=2)
        labels[y : y + h, x : x + w] = 5 + k
    labels = labels.astype(np.int32)
    merged, _ = merge_by_contact(labels, min_share=share, min_faces=min_faces)
    np.testing.assert_array_equal(merged, _greedy_merge_reference(labels, share, min_faces))


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


@pytest.mark.parametrize("block", [1, 2, 3, 7, 40])
def test_contact_graph_counted_block_by_block_equals_the_whole_volume_graph(block: int) -> None:
    from pipelines.particles.merge import contact_graph, contact_graph_blocks

    rng = np.random.default_rng(block)
    shape = (13, 30, 30)
    cells = rng.integers(0, 40, (shape[0], 6, 6))  # 5 x 5 pixel cells, 0 = background
    labels = np.kron(cells, np.ones((1, 5, 5), dtype=np.int64)).astype(np.int32)
    labels[rng.random(shape) < 0.02] = 41  # specks: contacts of a few faces
    n = int(labels.max())
    starts = range(0, shape[0], block)
    blocks = [labels[max(0, z0 - 1) : z0 + block] for z0 in starts]
    surface, contacts = contact_graph_blocks(blocks, n)
    expected_surface, expected_contacts = contact_graph(labels)
    assert len(expected_contacts) > 20
    np.testing.assert_array_equal(surface, expected_surface)
    assert list(contacts.items()) == list(expected_contacts.items())
