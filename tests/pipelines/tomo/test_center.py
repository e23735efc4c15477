"""Rotation centre of scans that stop one step short of 180 degrees (analytic phantom)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.tomo.center import (
    _pair_center,
    center_frame_indices,
    estimate_center,
    seam_indices,
)
from pipelines.tomo.fbp import ReconParams, resolve_center

COLS = 256
#: discs (x0, y0, radius, attenuation) in pixels from the axis: an off-axis, asymmetric sample
DISCS = [(-40.0, 25.0, 45.0, 1.0), (55.0, -30.0, 22.0, 2.0), (10.0, 70.0, 12.0, 3.0)]


def disc_sinogram(angles_deg: np.ndarray, axis: float, rows: int = 3) -> np.ndarray:
    """Exact parallel-beam line integrals of :data:`DISCS` rotating about column ``axis``."""
    theta = np.deg2rad(angles_deg)[:, None]
    x = np.arange(COLS, dtype=np.float64)[None, :]
    sino = np.zeros((theta.size, COLS))
    for x0, y0, radius, mu in DISCS:
        t = x - (axis + x0 * np.cos(theta) + y0 * np.sin(theta))
        sino += 2 * mu * np.sqrt(np.clip(radius**2 - t**2, 0.0, None))
    return np.repeat(sino[:, None, :], rows, axis=1)


@pytest.mark.parametrize("axis", [128.0, 121.3, 135.75])
def test_axis_of_a_scan_ending_one_step_short_of_180(axis: float) -> None:
    angles = np.linspace(0.0, 180.0, 120, endpoint=False)  # 0 .. 178.5 degrees
    sino = disc_sinogram(angles, axis)
    assert seam_indices(angles) == (118, 119, 0, 1)
    # the closest pair is 178.5 degrees apart: the sample turns 1.5 degrees in between, which
    # biases the pair-only estimate by 0.37-0.47 px here; the seam refinement leaves <= 0.042
    assert abs(_pair_center(sino[0], sino[-1]) - axis) > 0.35
    assert estimate_center(sino, angles) == pytest.approx(axis, abs=0.06)
    # through resolve_center, which reads only the frames it needs
    frames = center_frame_indices(angles)
    assert frames == [0, 1, 2, 3, 116, 117, 118, 119]
    params = ReconParams(input_kind="line_integral")
    assert resolve_center(sino.astype(np.float32), angles, params) == pytest.approx(axis, abs=0.06)


def test_axis_of_a_scan_with_an_exact_pair_is_unchanged() -> None:
    angles = np.linspace(0.0, 180.0, 121)
    sino = disc_sinogram(angles, 121.3)
    assert seam_indices(angles) is None
    assert estimate_center(sino, angles) == pytest.approx(121.3, abs=0.1)


def test_axis_of_a_reversed_scan_two_degree_steps() -> None:
    # angles from 178 down to 0 (a reversed scan): the seam is found by angle order; the
    # pair-only bias is 0.79-0.86 px with 2-degree steps, the refined one <= 0.033
    angles = np.linspace(0.0, 180.0, 90, endpoint=False)[::-1].copy()
    sino = disc_sinogram(angles, 130.4)
    assert abs(_pair_center(sino[-1], sino[0]) - 130.4) > 0.7
    assert estimate_center(sino, angles) == pytest.approx(130.4, abs=0.06)


def test_axis_of_a_coarse_scan_three_degree_steps() -> None:
    angles = np.linspace(0.0, 180.0, 60, endpoint=False)  # 0 .. 177 degrees
    sino = disc_sinogram(angles, 121.3)
    assert abs(_pair_center(sino[0], sino[-1]) - 121.3) > 1.5
    assert estimate_center(sino, angles) == pytest.approx(121.3, abs=0.06)
