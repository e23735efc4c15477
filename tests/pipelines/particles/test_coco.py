"""COCO export: RLE round trip and a labelled volume back from its annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipelines.particles.coco import coco_from_labels, labels_from_coco, rle_decode, rle_encode


@settings(max_examples=50, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_rle_round_trip(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    assert sum(rle["counts"]) == mask.size
    assert np.array_equal(rle_decode(rle), mask)


def test_rle_is_column_major_and_starts_with_zeros() -> None:
    mask = np.array([[1, 0], [1, 1]], dtype=bool)
    # column-major: 1, 1, 0, 1 -> zero run 0, one run 2, zero run 1, one run 1
    assert rle_encode(mask) == {"size": [2, 2], "counts": [0, 2, 1, 1]}


def test_volume_round_trip_through_json() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros((4, 20, 24), dtype=np.int32)
    for k in range(1, 6):
        z, y, x = rng.integers(0, 3), rng.integers(0, 15), rng.integers(0, 18)
        labels[z : z + 2, y : y + 5, x : x + 6] = k
    coco = json.loads(json.dumps(coco_from_labels(labels)))
    assert len(coco["images"]) == 4
    assert coco["categories"][0]["name"] == "particle"
    assert np.array_equal(labels_from_coco(coco), labels)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        mask = rle_decode(ann["segmentation"])
        assert ann["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1 - x, ys.max() + 1 - y) == (x, y, w, h)
        assert ann["iscrowd"] == 0


def test_min_area_and_bad_input() -> None:
    labels = np.zeros((1, 6, 6), dtype=np.int32)
    labels[0, 0, 0] = 1
    labels[0, 2:5, 2:5] = 2
    coco = coco_from_labels(labels, min_area=2)
    assert [a["particle_label"] for a in coco["annotations"]] == [2]
    with pytest.raises(ValueError, match="labels must have an integer dtype"):
        coco_from_labels(labels.astype(np.float32))
    with pytest.raises(ValueError, match="min_area"):
        coco_from_labels(labels, min_area=0)
