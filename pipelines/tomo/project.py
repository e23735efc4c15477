"""Parallel-beam forward projection in torch (used by the simulator and the tests)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.device import pick_device


def forward_project(
    volume_zyx: np.ndarray,
    angles_deg: np.ndarray,
    *,
    device: torch.device | None = None,
    memory_budget_mb: float = 64.0,
) -> np.ndarray:
    """Parallel-beam projections of a volume rotating about its z axis.

    Parameters
    ----------
    volume_zyx : numpy.ndarray
        (Z, Y, X) attenuation per voxel; a 2-D (Y, X) image is treated as a single slice.
        Y must equal X.
    angles_deg : numpy.ndarray
        (N,) projection angles in degrees.
    device : torch.device, optional
        Device to compute on; default :func:`models.device.pick_device`.
    memory_budget_mb : float, optional
        Upper bound of the temporary sampling buffer; angles are processed in chunks.

    Returns
    -------
    numpy.ndarray
        float32 (N, Z, X) line integrals (sum of voxels along each ray, bilinear sampling).

    Notes
    -----
    The geometry is that of :func:`skimage.transform.radon` (and ``iradon``): the rotation axis
    is at pixel ``X // 2`` of both the slice and the detector, and the detector coordinate of
    pixel (y, x) at angle theta is ``t = (x - c) cos(theta) - (y - c) sin(theta)``. Voxels
    outside the inscribed circle leave the field of view at some angles.
    """
    vol = np.asarray(volume_zyx)
    if vol.ndim == 2:
        vol = vol[np.newaxis]
    if vol.ndim != 3:
        raise ValueError(f"volume_zyx must be 2-D or 3-D, got shape {vol.shape}")
    if vol.shape[1] != vol.shape[2]:
        raise ValueError(f"volume_zyx slices must be square (Y == X), got {vol.shape}")
    angles = np.asarray(angles_deg, dtype=np.float64).ravel()
    if angles.size == 0:
        raise ValueError("angles_deg must hold at least one angle")
    dev = device if device is not None else pick_device()
    n_z, n = vol.shape[0], vol.shape[2]
    image = torch.as_tensor(vol, dtype=torch.float32, device=dev).unsqueeze(0)
    per_angle_bytes = 4.0 * n_z * n * n
    chunk = max(1, int(memory_budget_mb * 1e6 // per_angle_bytes))
    out = np.empty((angles.size, n_z, n), dtype=np.float32)
    for start in range(0, angles.size, chunk):
        theta = torch.as_tensor(np.deg2rad(angles[start : start + chunk]), device=dev)
        grid = _ray_grid(theta, n, dev)
        sampled = F.grid_sample(
            image.expand(len(theta), -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
        out[start : start + len(theta)] = sampled.sum(dim=2).cpu().numpy()
    return out


def _ray_grid(theta: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Sampling grid (A, S, T, 2): ray position s along rows, detector position t along columns."""
    c = n // 2
    pix = torch.arange(n, dtype=torch.float64, device=device) - c
    s = pix.view(1, n, 1)
    t = pix.view(1, 1, n)
    cos = torch.cos(theta).view(-1, 1, 1)
    sin = torch.sin(theta).view(-1, 1, 1)
    x = t * cos + s * sin + c
    y = -t * sin + s * cos + c
    scale = 2.0 / (n - 1)
    grid = torch.stack((x * scale - 1.0, y * scale - 1.0), dim=-1)
    return grid.to(torch.float32)
