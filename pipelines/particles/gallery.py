"""Images of particle slices for a gallery (e.g. the slices that made a particle flawed)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def particle_slice_crops(
    volume: np.ndarray, labels: np.ndarray, label: int, slice_z: np.ndarray, *, size: int = 64
) -> np.ndarray:
    """The given slices of one particle, cropped square around it and resized.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) grey levels.
    labels : numpy.ndarray
        (Z, Y, X) integer particle instances.
    label : int
        The particle.
    slice_z : numpy.ndarray
        (k,) slice indices (as scored by the flaw classifier).
    size : int, optional
        Side of each returned crop, pixels.

    Returns
    -------
    numpy.ndarray
        float32 (k, size, size): grey levels inside the particle, NaN outside it (and all NaN
        for a slice the particle does not reach). Each crop is the particle's square box in
        that slice, resized with linear interpolation; values are not rescaled.
    """
    vol = np.asarray(volume)
    lab = np.asarray(labels)
    zs = np.asarray(slice_z, dtype=np.int64).ravel()
    if vol.ndim != 3 or lab.shape != vol.shape:
        raise ValueError(
            f"volume and labels must be 3-D of one shape, got {vol.shape}, {lab.shape}"
        )
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    if zs.size and (zs.min() < 0 or zs.max() >= vol.shape[0]):
        raise ValueError(f"slice_z must lie in 0..{vol.shape[0] - 1}")
    out = np.full((zs.size, size, size), np.nan, dtype=np.float32)
    for i, z in enumerate(zs):
        mask = lab[z] == label
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        side = max(r1 - r0, c1 - c0)
        image = np.full((side, side), np.nan, dtype=np.float64)
        inside = np.zeros((side, side), dtype=bool)
        oy, ox = (side - (r1 - r0)) // 2, (side - (c1 - c0)) // 2
        box = (slice(oy, oy + r1 - r0), slice(ox, ox + c1 - c0))
        image[box] = vol[z, r0:r1, c0:c1]
        inside[box] = mask[r0:r1, c0:c1]
        # outside the particle, the nearest particle value: interpolation at the outline
        # then mixes only particle grey levels
        nearest = ndimage.distance_transform_edt(
            ~inside, return_distances=False, return_indices=True
        )
        image = image[tuple(nearest)]
        scale = size / side
        grey = ndimage.zoom(image, scale, order=1, grid_mode=True, mode="nearest")
        keep = ndimage.zoom(
            inside.astype(np.float32), scale, order=0, grid_mode=True, mode="nearest"
        )
        crop = np.where(keep[:size, :size] > 0.5, grey[:size, :size], np.nan)
        out[i, : crop.shape[0], : crop.shape[1]] = crop
    return out


def gallery_order(flawed: np.ndarray, slice_scores: np.ndarray, limit: int) -> np.ndarray:
    """Rows of the flawed particles, highest mean slice score first, at most ``limit``.

    Parameters
    ----------
    flawed : numpy.ndarray
        (n,) bool flaw calls.
    slice_scores : numpy.ndarray
        (n, k) slice scores.
    limit : int
        Most rows returned (>= 0).

    Returns
    -------
    numpy.ndarray
        int64 row indices.
    """
    calls = np.asarray(flawed, dtype=bool)
    scores = np.asarray(slice_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != calls.shape[0]:
        raise ValueError(
            f"slice_scores must be (n, k) with n = {calls.shape[0]}, got {scores.shape}"
        )
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    rows = np.flatnonzero(calls)
    mean = np.nan_to_num(scores[rows], nan=0.0).mean(axis=1)
    return rows[np.argsort(-mean, kind="stable")][:limit].astype(np.int64)
