"""The real labelled crops (tests/data/real_labels): the label files are what
``make_labels.py`` makes of the shared slices, and no crop box overlaps another except the
first two ``nmc86`` crops (labelled before 2026-12-01)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import io

from benchmarks.validation_sets import FIRST_REAL_CROPS, real_crops
from tests.conftest import SHARED_DATA
from tests.data.real_labels.make_labels import CROPS, HERE, Crop, label_crop, load_crop


def _overlap(a: Crop, b: Crop) -> bool:
    return (
        a.slice_file == b.slice_file
        and a.row < b.row + b.size
        and b.row < a.row + a.size
        and a.col < b.col + b.size
        and b.col < a.col + a.size
    )


def test_crop_boxes_overlap_only_the_known_pair() -> None:
    pairs = {
        (a.name, b.name) for i, a in enumerate(CROPS) for b in CROPS[i + 1 :] if _overlap(a, b)
    }
    assert pairs == {("nmc86_fragments", "nmc86_large")}


@pytest.mark.parametrize("crop", CROPS, ids=[c.name for c in CROPS])
def test_label_files_are_what_the_procedure_makes(crop: Crop) -> None:
    if not (SHARED_DATA / "nanoct_nmc_slices").is_dir():
        pytest.skip("real nano-CT slices not found (see ../shared/data/README.md)")
    instances, cracks, ignore = label_crop(load_crop(crop, SHARED_DATA), crop)
    np.testing.assert_array_equal(io.imread(HERE / f"{crop.name}_instances.png"), instances)
    np.testing.assert_array_equal(io.imread(HERE / f"{crop.name}_cracks.png"), cracks)
    np.testing.assert_array_equal(io.imread(HERE / f"{crop.name}_ignore.png"), ignore)


def test_real_crops_by_name() -> None:
    if not (SHARED_DATA / "nanoct_nmc_slices").is_dir():
        pytest.skip("real nano-CT slices not found (see ../shared/data/README.md)")
    assert [c.name for c in real_crops(FIRST_REAL_CROPS)] == [f"real {n}" for n in FIRST_REAL_CROPS]
    assert [c.name for c in real_crops()] == [f"real {c.name}" for c in CROPS]
    with pytest.raises(ValueError, match="names"):
        real_crops(["no such crop"])


def test_a_split_seed_off_every_particle_is_an_error() -> None:
    if not (SHARED_DATA / "nanoct_nmc_slices").is_dir():
        pytest.skip("real nano-CT slices not found (see ../shared/data/README.md)")
    crop = CROPS[0]
    image = load_crop(crop, SHARED_DATA)
    background = tuple(int(v) for v in np.argwhere(label_crop(image, crop)[0] == 0)[0])
    bad = Crop(**{**crop.__dict__, "split": (*crop.split, background)})
    with pytest.raises(ValueError, match="split seeds"):
        label_crop(image, bad)
