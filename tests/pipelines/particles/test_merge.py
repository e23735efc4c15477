"""Contact merge: pieces of one particle merge, touching particles do not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.particles.merge import contact_graph, merge_by_contact


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
