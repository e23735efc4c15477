"""Shift refinement with a static pattern fitted out (``pipelines.xanes.static_fit``)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from pipelines.xanes.params import XanesParams
from pipelines.xanes.static_fit import refine_shifts_static, window_support


def _scene(seed: int, *, rings: float, noise: float, contrast: bool, n: int = 24, size: int = 96):
    """A round particle drifting by a random walk, optionally brightening 3x with a grain that
    appears across the edge, over a ring pattern that stays in the detector frame; the frames,
    the true shifts and the particle's frame-0 footprint."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    static = rings * np.sin(np.hypot(rows + 40.0, cols - 150.0) ** 2 / 900.0)
    truth = np.cumsum(rng.normal(0.0, 0.6, (n, 2)), axis=0)
    truth[0] = 0.0
    centre = size / 2
    frames = []
    for t in range(n):
        r = np.hypot(rows - centre - truth[t, 0], cols - centre - truth[t, 1])
        body = np.sqrt(np.clip(1.0 - (r / 22.0) ** 2, 0.0, None))
        grain = np.exp(
            -((rows - centre - 8 - truth[t, 0]) ** 2 + (cols - centre - truth[t, 1]) ** 2) / 50.0
        )
        level = 1.0 + 2.0 * t / n if contrast else 1.0
        od = 0.1 * level * body + (0.05 * t / n if contrast else 0.0) * grain
        frames.append(ndimage.gaussian_filter(od, 0.7) + static + rng.normal(0, noise, od.shape))
    footprint = np.hypot(rows - centre, cols - centre) < 22.0
    return np.stack(frames), truth, window_support(footprint, 6, 3)


def _rms(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))


@pytest.mark.parametrize("seed", [4, 5])
def test_refinement_reduces_the_pull_of_a_static_pattern(seed):
    """Rings in the detector frame, constant contrast, noise: the start held at 0.6 of the
    true shifts (what a static pattern does to a per-particle registration) moves towards
    the truth (measured: 1.31 -> 0.59 px and 1.34 -> 0.96 px)."""
    frames, truth, support = _scene(seed, rings=0.03, noise=0.01, contrast=False)
    start = 0.6 * truth
    refined = refine_shifts_static(frames, start, support)
    assert _rms(refined - truth) < 0.8 * _rms(start - truth)
    np.testing.assert_array_equal(refined[0], start[0])  # the reference is kept


@pytest.mark.parametrize("seed", [4, 5])
def test_refinement_keeps_correct_shifts_through_a_contrast_change(seed):
    """No noise, no pattern, the particle brightens 3x and a grain appears: the true shifts are
    a fixed point (measured 0.005 px)."""
    frames, truth, support = _scene(seed, rings=0.0, noise=0.0, contrast=True)
    refined = refine_shifts_static(frames, truth, support)
    assert _rms(refined - truth) < 0.02


def test_refinement_checks_its_inputs():
    frames, truth, support = _scene(0, rings=0.0, noise=0.0, contrast=False, n=6)
    with pytest.raises(ValueError, match="shifts"):
        refine_shifts_static(frames, truth[:-1], support)
    with pytest.raises(ValueError, match="support"):
        refine_shifts_static(frames, truth, support[:-1])
    bad = truth.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="shifts"):
        refine_shifts_static(frames, bad, support)
    with pytest.raises(ValueError, match="window"):
        refine_shifts_static(frames[0], truth, support)
    # without a ridge the static pattern's zero frequency is singular (all NaN before)
    with pytest.raises(ValueError, match="ridge"):
        refine_shifts_static(frames, truth, support, ridge=0.0)


def test_static_refine_ridge_must_be_positive():
    with pytest.raises(ValidationError, match="static_refine_ridge"):
        XanesParams.model_validate({"track": {"static_refine_ridge": 0.0}})
