"""The tracker's fast helpers compute the same thing as the scipy/numpy calls they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from pipelines.xanes import kernels
from pipelines.xanes.prepare import incident_counts, optical_density
from pipelines.xanes.register import shift_image

SHAPES = st.tuples(st.integers(1, 24), st.integers(1, 24))


@settings(max_examples=80, deadline=None)
@given(
    image=arrays(np.float64, SHAPES, elements=st.floats(-10, 10)),
    dy=st.floats(-30, 30),
    dx=st.floats(-30, 30),
)
def test_shift_image_order_1_matches_scipy(image, dy, dx):
    expected = ndimage.shift(image, (dy, dx), order=1, mode="nearest", prefilter=False)
    np.testing.assert_allclose(shift_image(image, np.array([dy, dx])), expected, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(mask=arrays(np.bool_, SHAPES), radius=st.integers(1, 3))
def test_box_dilation_matches_maximum_filter(mask, radius):
    expected = ndimage.maximum_filter(mask, size=2 * radius + 1, mode="constant", cval=False)
    np.testing.assert_array_equal(kernels.box_dilation(mask, radius), expected)


@settings(max_examples=80, deadline=None)
@given(mask=arrays(np.bool_, SHAPES))
def test_fill_holes_matches_scipy(mask):
    np.testing.assert_array_equal(kernels.fill_holes(mask), ndimage.binary_fill_holes(mask))


@settings(max_examples=80, deadline=None)
@given(
    values=arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e3, 1e3)),
    q=st.floats(0, 100),
)
def test_median_and_percentile_match_numpy(values, q):
    assert kernels.partition_median(values.copy()) == np.median(values)
    np.testing.assert_allclose(
        kernels.partition_percentile(values.copy(), q), np.percentile(values, q)
    )


@settings(max_examples=40, deadline=None)
@given(
    image=arrays(
        np.float32,
        st.tuples(st.integers(8, 40), st.integers(8, 40)),
        elements=st.floats(0, 1000, width=32),
    ),
    factor=st.integers(1, 4),
)
def test_block_mean_matches_reshape_mean(image, factor):
    h, w = image.shape[0] // factor, image.shape[1] // factor
    expected = image[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))
    np.testing.assert_allclose(kernels.block_mean(image, factor), expected, rtol=1e-5, atol=1e-3)


def test_optical_density_with_precomputed_incident_is_the_same():
    rng = np.random.default_rng(3)
    flat = rng.uniform(800, 1200, (32, 40))
    dark = rng.uniform(5, 20, (32, 40))
    frame = flat * np.exp(-rng.uniform(0, 2, (32, 40))) + dark
    np.testing.assert_allclose(
        optical_density(frame, incident=incident_counts(flat, dark), dark=dark),
        optical_density(frame, flat, dark),
        rtol=1e-6,
    )
