"""analyze_particles: input checks and the table layout (full runs are in the CLI tests)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.particles.analyze import ParticleParams, analyze_particles, table_dtype


def test_table_dtype_has_the_contract_fields() -> None:
    names = table_dtype().names or ()
    for field in (
        "label",
        "volume_voxels",
        "equivalent_diameter_px",
        "centroid_z",
        "centroid_y",
        "centroid_x",
        "sphericity",
        "crack_fraction",
        "flawed_slices",
        "flawed",
        "detachment",
        "touches_border",
        "slice_scores",
    ):
        assert field in names
    assert table_dtype(7)["slice_scores"].shape == (7,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crack_mask": np.zeros((2, 8, 8), dtype=bool)}, "crack_mask shape"),
        ({"phase": np.zeros((3, 8, 8), dtype=np.float32)}, "phase must have an integer dtype"),
        ({"phase": np.zeros((3, 8, 9), dtype=np.uint8)}, "phase shape"),
    ],
)
def test_rejects_mismatched_inputs(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        analyze_particles(np.ones((3, 8, 8), dtype=np.float32), **kwargs)


def test_rejects_bad_volume_and_params() -> None:
    with pytest.raises(ValueError, match="volume must be 3-D"):
        analyze_particles(np.ones((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="extra"):
        ParticleParams(unknown=1)  # type: ignore[call-arg]
