"""Dark/flat normalisation and the transmission floor."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.tomo.normalize import DEFAULT_MIN_TRANSMISSION, line_integrals


def test_flat_dark_normalisation_and_log() -> None:
    dark = np.full((2, 3, 4), 100, dtype=np.uint16)
    flat = np.full((3, 4), 1100, dtype=np.uint16)
    proj = np.full((5, 3, 4), 100 + 500, dtype=np.uint16)
    out = line_integrals(proj, flat=flat, dark=dark)
    assert out.dtype == np.float32 and out.shape == (5, 3, 4)
    np.testing.assert_allclose(out, -np.log(0.5), rtol=1e-6)


def test_non_positive_transmission_is_floored() -> None:
    proj = np.array([[[0.0, -1.0, 0.5, 2.0]]])
    out = line_integrals(proj)
    floor = -np.log(DEFAULT_MIN_TRANSMISSION)
    np.testing.assert_allclose(out[0, 0], [floor, floor, -np.log(0.5), -np.log(2.0)], rtol=1e-6)
    assert np.isfinite(out).all()


def test_dead_flat_pixels_get_the_floor() -> None:
    flat = np.ones((1, 2))
    flat[0, 1] = 0
    out = line_integrals(np.ones((1, 1, 2)), flat=flat)
    assert out[0, 0, 1] == pytest.approx(-np.log(DEFAULT_MIN_TRANSMISSION))


def test_shape_mismatch_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="flat"):
        line_integrals(np.ones((2, 3, 4)), flat=np.ones((3, 5)))
    with pytest.raises(ValueError, match="min_transmission"):
        line_integrals(np.ones((2, 3, 4)), min_transmission=0)
