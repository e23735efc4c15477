"""Edge images computed on the tiles the crops ask for are those of the whole frame, bit for bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipelines.xanes.kernels import extract_crop, gaussian_weights
from pipelines.xanes.window import FrameEdges, frame_edges


def whole_frame_edges(od: np.ndarray, sigma: float) -> np.ndarray:
    """The whole-frame computation FrameEdges replaced: clamp, smooth, central differences."""
    image = np.asarray(od, dtype=np.float32)
    sample = image[::4, ::4].ravel()
    lo, hi = np.percentile(sample, [0.1, 99.9]) if sample.size >= 16 else (-np.inf, np.inf)
    span = hi - lo
    image = np.clip(image, lo - 0.5 * span, hi + 0.5 * span)
    smooth = image
    if sigma > 0:
        weights = gaussian_weights(sigma).astype(np.float32)
        smooth = np.empty(image.shape, dtype=np.float32)
        ndimage.correlate1d(image, weights, axis=0, output=smooth, mode="reflect")
        ndimage.correlate1d(smooth, weights, axis=1, output=smooth, mode="reflect")
    gr = np.zeros(image.shape, dtype=np.float32)
    gc = np.zeros(image.shape, dtype=np.float32)
    np.subtract(smooth[2:], smooth[:-2], out=gr[1:-1])
    np.subtract(smooth[:, 2:], smooth[:, :-2], out=gc[:, 1:-1])
    return np.sqrt(gr * gr + gc * gc)


def frame(seed: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    od = ndimage.gaussian_filter(rng.normal(size=shape), 3).astype(np.float32)
    od[rng.integers(0, shape[0], 5), rng.integers(0, shape[1], 5)] = 50.0  # hot pixels
    return od


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(3, 140),
    cols=st.integers(3, 140),
    sigma=st.sampled_from([0.0, 1.5, 3.0, 6.0]),
    crops=st.lists(
        st.tuples(
            st.integers(-60, 150), st.integers(-60, 150), st.integers(1, 90), st.integers(1, 90)
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_crops_are_the_whole_frame_edges(seed, rows, cols, sigma, crops):
    od = frame(seed, (rows, cols))
    expected = whole_frame_edges(od, sigma)
    edges = FrameEdges(od)
    for r0, c0, h, w in crops:
        crop = edges.crop(sigma, np.array([r0, c0]), (h, w))
        np.testing.assert_array_equal(crop, extract_crop(expected, np.array([r0, c0]), (h, w)))
    np.testing.assert_array_equal(edges.at(sigma), expected)
    np.testing.assert_array_equal(frame_edges(od, sigma), expected)


def test_only_the_asked_tiles_are_computed():
    od = frame(1, (256, 256))
    edges = FrameEdges(od)
    edges.crop(1.5, np.array([100, 100]), (40, 40))
    _, done = edges._cache[1.5]
    assert 0 < done.sum() < done.size / 4
