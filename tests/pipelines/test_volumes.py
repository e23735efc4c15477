"""The volume check shared by the crack and particle pipelines."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.cracks.segment import map_cracks
from pipelines.particles.analyze import analyze_particles
from pipelines.volumes import check_volume


def test_finite_real_volumes_pass_unchanged() -> None:
    vol = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert check_volume(vol) is vol
    ints = np.zeros((2, 3, 4), dtype=np.uint16)
    assert check_volume(ints) is ints


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_named_with_count_and_first_index(bad: float) -> None:
    vol = np.ones((40, 64, 64), dtype=np.float32)
    vol[7, 3, 5] = bad
    vol[31, 0, 0] = bad
    with pytest.raises(ValueError, match=r"2 non-finite voxels.*\(7, 3, 5\)"):
        check_volume(vol)


def test_shape_and_dtype_errors() -> None:
    with pytest.raises(ValueError, match="3-D"):
        check_volume(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="dtype"):
        check_volume(np.zeros((2, 2, 2), dtype=complex), name="recon")


def test_pipelines_refuse_nan_with_the_clear_message() -> None:
    vol = np.zeros((3, 32, 32), dtype=np.float32)
    vol[:, 8:24, 8:24] = 1.0
    vol[1, 2, 2] = np.nan
    for run in (map_cracks, analyze_particles):
        with pytest.raises(ValueError, match="non-finite"):
            run(vol)
