"""Checks shared by the pipelines that take a reconstructed volume."""

from __future__ import annotations

import numpy as np


def check_volume(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    """Return ``volume`` as an array after checking it is a 3-D, finite, real-valued volume.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed volume.
    name : str, optional
        How the error messages call it.

    Returns
    -------
    numpy.ndarray
        The volume (not copied).

    Raises
    ------
    ValueError
        Not 3-D, not an integer or float dtype, or holding NaN or infinite voxels (the first
        one's index is named; the pipelines expect 0, not NaN, outside the reconstruction
        circle).
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"{name} must be 3-D (Z, Y, X), got shape {vol.shape}")
    if not (np.issubdtype(vol.dtype, np.integer) or np.issubdtype(vol.dtype, np.floating)):
        raise ValueError(f"{name} must have an integer or float dtype, got {vol.dtype}")
    if np.issubdtype(vol.dtype, np.floating):
        # slab by slab: no volume-sized temporary
        step = max(1, 2**24 // max(1, vol.shape[1] * vol.shape[2]))
        for z0 in range(0, vol.shape[0], step):
            bad = ~np.isfinite(vol[z0 : z0 + step])
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0] + (z0, 0, 0))
                count = sum(
                    int(np.count_nonzero(~np.isfinite(vol[z : z + step])))
                    for z in range(0, vol.shape[0], step)
                )
                raise ValueError(
                    f"{name} has {count} non-finite voxels (NaN or inf), the first at "
                    f"(z, y, x) = {first}; expected finite grey levels (0 outside the "
                    "reconstruction circle)"
                )
    return vol
