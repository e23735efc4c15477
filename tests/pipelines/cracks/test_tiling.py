"""Tiling invariants: identity models give back the input exactly, blends have no seams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.cracks.tiling import (
    apply_tiled,
    axis_tiles,
    iter_tiles,
    max_tile_side,
    ramp_weights,
    tiles_per_slice,
)


def identity(tiles: np.ndarray) -> np.ndarray:
    return tiles.copy()


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    n_slices=st.integers(1, 3),
    tile=st.integers(4, 40),
    overlap_share=st.floats(0.0, 0.9),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([np.float32, np.uint16, np.int32]),
    multiple=st.sampled_from([1, 8, 16]),
)
def test_identity_model_returns_input_exactly(
    height, width, n_slices, tile, overlap_share, batch, seed, dtype, multiple
) -> None:
    rng = np.random.default_rng(seed)
    image = rng.random((n_slices, height, width)) * 1000 - (0 if dtype is np.uint16 else 300)
    image = image.astype(dtype)
    overlap = int(overlap_share * (tile - 1))
    out = apply_tiled(
        image, identity, tile_size=tile, overlap=overlap, batch_size=batch, multiple=multiple
    )
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, image)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    n_slices=st.integers(1, 3),
    channels=st.integers(1, 3),
    tile=st.integers(4, 40),
    overlap_share=st.floats(0.0, 0.9),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_channel_picking_model_returns_that_channel_exactly(
    height, width, n_slices, channels, tile, overlap_share, batch, seed, data
) -> None:
    """Multi-channel slices (context slices): every channel is tiled with the same windows."""
    channel = data.draw(st.integers(0, channels - 1))
    rng = np.random.default_rng(seed)
    image = (rng.random((n_slices, channels, height, width)) * 1000 - 300).astype(np.float32)
    overlap = int(overlap_share * (tile - 1))

    def pick(tiles: np.ndarray) -> np.ndarray:
        assert tiles.shape[1] == channels
        return tiles[:, channel].copy()

    out = apply_tiled(image, pick, tile_size=tile, overlap=overlap, batch_size=batch)
    np.testing.assert_array_equal(out, image[:, channel])


@settings(max_examples=80, deadline=None)
@given(
    length=st.integers(1, 400),
    tile=st.integers(2, 64),
    overlap_share=st.floats(0, 0.95),
    multiple=st.sampled_from([1, 2, 8, 16]),
)
def test_tiles_cover_every_pixel_with_positive_weight(
    length, tile, overlap_share, multiple
) -> None:
    overlap = int(overlap_share * (tile - 1))
    side, starts = axis_tiles(length, tile, overlap, multiple)
    total = np.zeros(length)
    for start in starts:
        stop = start + side
        assert stop <= length
        total[start:stop] += ramp_weights(stop - start, start, stop, length, overlap)
    assert (total > 0).all()
    assert starts[0] == 0 and starts[-1] + side == length


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(1, 3000),
    tile=st.integers(2, 600),
    overlap_share=st.floats(0, 0.95),
    multiple=st.sampled_from([1, 2, 8, 16, 32]),
)
def test_tile_plan_keeps_overlap_and_size_bound_with_no_more_pixels_than_fixed_tiles(
    length, tile, overlap_share, multiple
) -> None:
    overlap = int(overlap_share * (tile - 1))
    side, starts = axis_tiles(length, tile, overlap, multiple)
    assert side <= max(max_tile_side(tile), tile)
    steps = np.diff(starts)
    assert (steps <= side - overlap).all()  # neighbours overlap by at least `overlap`
    fixed = int(np.ceil((length - tile) / (tile - overlap))) + 1 if length > tile else 1
    assert len(starts) <= fixed
    assert len(starts) * side <= fixed * min(tile, length)  # never more pixels
    if len(starts) > 1 and side != tile:
        assert side % multiple == 0


def test_large_slices_get_fewer_tiles_than_fixed_512_tiles() -> None:
    """1024 px: 2 tiles of 528 per axis (4 per slice, 1.06x the pixels) instead of 3 x 3
    tiles of 512 (2.25x)."""
    assert axis_tiles(1024, 512, 32, 16) == (528, [0, 496])
    assert axis_tiles(544, 512, 32, 16) == (544, [0])
    assert axis_tiles(2048, 512, 32, 16) == (544, [0, 501, 1002, 1504])
    assert tiles_per_slice((3, 1024, 1024), 512, 32, 16) == 4
    assert tiles_per_slice((3, 512, 1024), 512, 32, 16) == 2


def test_blend_is_seamless_for_a_smooth_model() -> None:
    """A model whose output depends on the tile position still blends without jumps."""
    yy, xx = np.mgrid[:200, :200].astype(np.float32)
    image = np.sin(yy / 30) + np.cos(xx / 25)
    calls = {"n": 0}

    def biased(tiles: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        return tiles + np.float32(0.01 * (calls["n"] % 3))

    out = apply_tiled(image, biased, tile_size=64, overlap=16, batch_size=1)
    steps = max(np.abs(np.diff(out - image, axis=a)).max() for a in (0, 1))
    # tile biases differ by up to 0.02; the blend spreads that over the 16-pixel ramp
    assert steps < 0.02 / 16 * 1.5
    hard = apply_tiled(image, biased, tile_size=64, overlap=0, batch_size=1)
    assert np.abs(np.diff(hard - image, axis=1)).max() >= 0.0099


def test_single_slice_and_small_images() -> None:
    image = np.arange(30, dtype=np.float32).reshape(5, 6)
    np.testing.assert_array_equal(apply_tiled(image, identity, tile_size=512), image)
    assert len(list(iter_tiles((1, 5, 6), 512, 32))) == 1


def test_bad_parameters_are_named() -> None:
    image = np.zeros((8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="overlap"):
        apply_tiled(image, identity, tile_size=4, overlap=4)
    with pytest.raises(ValueError, match="images"):
        apply_tiled(np.zeros(8), identity)
    with pytest.raises(ValueError, match="model returned"):
        apply_tiled(image, lambda t: t[:, :2], tile_size=4, overlap=1)
    with pytest.raises(ValueError, match="model returned"):
        apply_tiled(np.zeros((1, 3, 8, 8), np.float32), identity, tile_size=4, overlap=1)
