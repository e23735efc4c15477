"""Tile-by-tile application of a model over 2-D slices with seamless blending.

Overlapping tiles are combined with weights that ramp linearly across each overlap, so the
output changes smoothly from one tile to the next. Weights never reach zero and the
normalisation is done in float64, so a model that returns its input gives back exactly the
input (the tiling invariant checked by the property tests). Slices may carry several channels
(for example neighbouring slices as context); the model then maps multi-channel tiles to
single-channel outputs, and a model returning one input channel gives back that channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

TileModel = Callable[[np.ndarray], np.ndarray]
"""A model maps a batch of tiles (B, h, w), or (B, C, h, w) for multi-channel slices, to
outputs (B, h, w)."""


@dataclass(frozen=True)
class Tile:
    """One tile: slice index and the pixel window it covers."""

    index: int
    y0: int
    y1: int
    x0: int
    x1: int


TILE_GROWTH_DIVISOR = 8
"""A planned tile may be longer than the requested tile size by at most 1/8 of it per side
(at most 27 % more pixels, so the memory of a tile stays bounded)."""


def max_tile_side(tile: int) -> int:
    """Longest tile side :func:`axis_tiles` may plan for a requested tile size."""
    return tile + tile // TILE_GROWTH_DIVISOR


def axis_tiles(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """Tile side and tile starts along one axis: the fewest tiles that keep the overlap.

    A whole axis up to :func:`max_tile_side` (``tile`` plus 1/8) is one tile. A longer axis
    gets ``n`` equal tiles whose side, rounded up to ``multiple``, is at most
    :func:`max_tile_side` while neighbouring tiles overlap by at least ``overlap``; of these
    plans, the one with the fewest pixels in all (then the fewest tiles) is taken, and it never
    has more pixels than fixed tiles of ``tile``. For example 1024 px with ``tile=512,
    overlap=32, multiple=16`` gives 2 tiles of 528 (1.03x the pixels per axis) instead of 3
    tiles of 512 (1.5x).

    Parameters
    ----------
    length : int
        Image size along the axis.
    tile : int
        Requested tile size.
    overlap : int
        Minimum overlap between neighbouring tiles (``0 <= overlap < tile``).
    multiple : int, optional
        Tile sides of several tiles are rounded up to a multiple of this (a network's input
        size factor); a single tile covering the axis keeps ``length``.

    Returns
    -------
    side : int
        Tile length along the axis (``length`` when one tile covers it).
    starts : list of int
        Starts in increasing order; the first is 0 and the last tile ends exactly at
        ``length``.
    """
    limit = max_tile_side(tile)
    if length <= limit:
        return length, [0]
    n_fixed = int(np.ceil((length - tile) / (tile - overlap))) + 1
    side, n_tiles = tile, n_fixed
    for n in range(2, n_fixed + 1):
        needed = -(-(length + (n - 1) * overlap) // n)
        rounded = -(-needed // multiple) * multiple
        if n == n_fixed:  # as many tiles as fixed ones: never larger ones
            rounded = min(rounded, tile)
        if rounded <= limit and n * rounded < n_tiles * side:
            side, n_tiles = rounded, n
    span = length - side
    return side, [(i * span) // (n_tiles - 1) for i in range(n_tiles)]


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start positions of the tiles of :func:`axis_tiles` (their side is ``axis_tiles(...)[0]``)."""
    return axis_tiles(length, tile, overlap, multiple)[1]


def ramp_weights(length: int, start: int, stop: int, total: int, overlap: int) -> np.ndarray:
    """1-D blending weights of one tile: linear ramps where it meets a neighbour.

    Parameters
    ----------
    length : int
        Tile length (``stop - start``).
    start, stop : int
        Tile window along the axis.
    total : int
        Image size along the axis.
    overlap : int
        Ramp length.

    Returns
    -------
    numpy.ndarray
        float64 (length,) weights in (0, 1]; no ramp on a side that is the image border.
    """
    weights = np.ones(length, dtype=np.float64)
    ramp_len = min(overlap, length)
    if ramp_len > 0:
        ramp = (np.arange(ramp_len, dtype=np.float64) + 0.5) / ramp_len
        if start > 0:
            weights[:ramp_len] = np.minimum(weights[:ramp_len], ramp)
        if stop < total:
            weights[length - ramp_len :] = np.minimum(weights[length - ramp_len :], ramp[::-1])
    return weights


def tiles_per_slice(shape: tuple[int, ...], tile_size: int, overlap: int, multiple: int = 1) -> int:
    """Number of tiles :func:`iter_tiles` cuts one (H, W) slice of ``shape[-2:]`` into."""
    height, width = shape[-2:]
    return len(axis_tiles(height, tile_size, overlap, multiple)[1]) * len(
        axis_tiles(width, tile_size, overlap, multiple)[1]
    )


def iter_tiles(
    shape: tuple[int, ...], tile_size: int, overlap: int, multiple: int = 1
) -> Iterator[Tile]:
    """Tiles covering every slice of an (S, H, W) stack, slice by slice (:func:`axis_tiles`)."""
    n_slices, height, width = shape
    th, ys = axis_tiles(height, tile_size, overlap, multiple)
    tw, xs = axis_tiles(width, tile_size, overlap, multiple)
    for index in range(n_slices):
        for y0 in ys:
            for x0 in xs:
                yield Tile(index, y0, y0 + th, x0, x0 + tw)


def apply_tiled(
    images: np.ndarray,
    model: TileModel,
    *,
    tile_size: int = 512,
    overlap: int = 32,
    batch_size: int = 4,
    multiple: int = 1,
) -> np.ndarray:
    """Apply ``model`` to overlapping tiles of one slice or a stack of slices and blend.

    Parameters
    ----------
    images : numpy.ndarray
        (H, W) slice, (S, H, W) stack, or (S, C, H, W) stack of slices with C channels; each
        slice is tiled independently (all channels with the same windows).
    model : callable
        Maps a batch (B, h, w) of tiles, or (B, C, h, w) for a 4-D ``images``, (dtype of
        ``images``) to outputs (B, h, w).
    tile_size : int, optional
        Requested tile height and width. Images up to 1/8 larger use a single tile of their
        own size; larger ones the fewest tiles of at most that size that keep ``overlap``
        (:func:`axis_tiles`).
    overlap : int, optional
        Minimum overlap between neighbouring tiles; the blend ramps across ``overlap`` pixels.
    batch_size : int, optional
        Tiles per model call (tiles of several slices are batched together).
    multiple : int, optional
        Sides of tiles that do not cover a whole axis are multiples of this (the model's
        input size factor, so it needs no padding).

    Returns
    -------
    numpy.ndarray
        Blended output, (H, W) or (S, H, W) (the shape of ``images`` without its channel
        axis), with the dtype returned by ``model``
        (integer outputs are rounded). Blending is exact: where all tiles agree, the output
        equals their common value for float32 and integer dtypes.
    """
    arr = np.asarray(images)
    single = arr.ndim == 2
    if single:
        arr = arr[np.newaxis]
    if arr.ndim not in (3, 4):
        raise ValueError(f"images must be (H, W), (S, H, W) or (S, C, H, W), got {arr.shape}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    out_shape = (arr.shape[0], *arr.shape[-2:])
    _, height, width = out_shape
    if tiles_per_slice(out_shape, tile_size, overlap, multiple) == 1:
        # one tile per slice: every weight is 1, the blend is the model output itself
        whole = _apply_whole(arr, model, batch_size)
        return whole[0] if single else whole
    acc = np.zeros(out_shape, dtype=np.float64)
    norm = np.zeros(out_shape, dtype=np.float64)
    out_dtype: np.dtype | None = None
    tiles = list(iter_tiles(out_shape, tile_size, overlap, multiple))
    for b0 in range(0, len(tiles), batch_size):
        batch = tiles[b0 : b0 + batch_size]
        inputs = np.stack([arr[t.index, ..., t.y0 : t.y1, t.x0 : t.x1] for t in batch])
        outputs = _checked(model(inputs), inputs)
        out_dtype = outputs.dtype if out_dtype is None else out_dtype
        for t, result in zip(batch, outputs, strict=True):
            wy = ramp_weights(t.y1 - t.y0, t.y0, t.y1, height, overlap)
            wx = ramp_weights(t.x1 - t.x0, t.x0, t.x1, width, overlap)
            weight = np.outer(wy, wx)
            acc[t.index, t.y0 : t.y1, t.x0 : t.x1] += weight * result
            norm[t.index, t.y0 : t.y1, t.x0 : t.x1] += weight
    dtype = np.dtype(out_dtype if out_dtype is not None else arr.dtype)
    blended = acc / norm
    if dtype.kind in "iub":
        blended = np.rint(blended)
    result = blended.astype(dtype)
    return result[0] if single else result


def _checked(outputs: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    out = np.asarray(outputs)
    expected = (inputs.shape[0], *inputs.shape[-2:])
    if out.shape != expected:
        raise ValueError(f"model returned shape {out.shape} for tiles {inputs.shape}")
    return out


def _apply_whole(arr: np.ndarray, model: TileModel, batch_size: int) -> np.ndarray:
    """:func:`apply_tiled` where one tile covers each whole slice."""
    result: np.ndarray | None = None
    for b0 in range(0, arr.shape[0], batch_size):
        inputs = np.ascontiguousarray(arr[b0 : b0 + batch_size])
        outputs = _checked(model(inputs), inputs)
        if result is None:
            result = np.empty((arr.shape[0], *arr.shape[-2:]), dtype=outputs.dtype)
        result[b0 : b0 + len(inputs)] = outputs
    if result is None:  # no slices
        return np.empty((0, *arr.shape[-2:]), dtype=arr.dtype)
    return result
