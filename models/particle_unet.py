"""2.5-D U-Net for crack-robust particle instance segmentation.

The network sees three neighbouring normalised slices ``(z - 1, z, z + 1)`` and predicts, for
the middle slice, the particle foreground (logit, cracks inside a particle count as particle)
and the 3-D distance from each particle voxel to its particle's boundary (in units of
:data:`DISTANCE_SCALE_PX`). Cracks are not boundaries in the training target, so the predicted
distance has one maximum per particle even when a crack cuts through it; a seeded watershed of
that distance (``pipelines.particles.instances``) turns it into instances.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

from models.checkpoint import read_checkpoint, read_metadata
from models.fusion import for_inference
from models.unet import UNet2d, pad_to_multiple, save_unet, unet_args

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "particle_unet.pt"
KIND = "particle_unet"
DEPTH = 4
SIZE_MULTIPLE = 2 ** (DEPTH - 1)
DISTANCE_SCALE_PX = 8.0
"""Network distance output 1.0 corresponds to this many voxels."""
CONTEXT_SLICES = 3


class ParticleUNet(UNet2d):
    """Four-level U-Net with a foreground logit and a distance output.

    Parameters
    ----------
    base_channels : int
        Channels of the first level; doubled at each level.
    """

    def __init__(self, base_channels: int = 12) -> None:
        super().__init__(CONTEXT_SLICES, 2, base_channels, DEPTH, batch_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (B, 2, H, W): foreground logit and scaled distance, for (B, 3, H, W)."""
        return super().forward(x)


def instance_distance(particle_ids: np.ndarray) -> np.ndarray:
    """Training target: distance (voxels) from each particle voxel to its instance boundary.

    Parameters
    ----------
    particle_ids : numpy.ndarray
        int (Z, Y, X) instance labels, 0 = background; cracks carry their particle's label.

    Returns
    -------
    numpy.ndarray
        float32 (Z, Y, X); 0 outside particles and on the outer voxel layer of each particle
        (including where two particles touch). The array border is not a boundary.
    """
    ids = np.asarray(particle_ids)
    interior = (ids > 0) & ~find_boundaries(ids, mode="inner", connectivity=1)
    return ndimage.distance_transform_edt(interior).astype(np.float32)


def slice_range(depth: int, start: int = 0, stop: int | None = None) -> tuple[int, int]:
    """Checked slices ``start .. stop - 1`` of a volume of ``depth`` slices (stop None: all)."""
    last = depth if stop is None else stop
    if not 0 <= start < last <= depth:
        raise ValueError(f"slices {start} .. {last} - 1 are not within 0 .. {depth} - 1")
    return start, last


def context_stack(normalized: np.ndarray, z: int) -> np.ndarray:
    """Slices ``z - 1, z, z + 1`` of a normalised volume (edges repeated), float32 (3, Y, X)."""
    last = normalized.shape[0] - 1
    index = [min(max(z + d, 0), last) for d in (-1, 0, 1)]
    return np.asarray(normalized[index], dtype=np.float32)


def save_particle_unet(
    model: ParticleUNet, path: Path, metadata: dict[str, Any] | None = None
) -> None:
    """Save weights, architecture settings and JSON metadata (training config, scores)."""
    save_unet(model, path, metadata, kind=KIND)


def load_particle_unet(
    path: str | Path | None = None, *, device: torch.device | None = None
) -> ParticleUNet:
    """Load the particle U-Net in evaluation mode.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        Weights file; default the shipped :data:`DEFAULT_WEIGHTS`.
    device : torch.device, optional
        Default :func:`models.device.pick_device`.

    Returns
    -------
    ParticleUNet
        Network on ``device`` in ``eval()`` mode, batch normalisation folded into the
        convolutions and weights channels-last (:func:`models.fusion.for_inference`; it cannot
        be trained further).
    """
    checkpoint, dev = read_checkpoint(path, DEFAULT_WEIGHTS, "particle U-Net", device=device)
    model = ParticleUNet(**unet_args(checkpoint, KIND))
    model.load_state_dict(checkpoint["state_dict"])
    return for_inference(model, dev)


def load_trainable_particle_unet(path: str | Path | None = None) -> ParticleUNet:
    """The particle U-Net of a checkpoint for further training: batch normalisation kept,
    training mode, on the CPU (``path`` None: the shipped weights)."""
    checkpoint, _ = read_checkpoint(
        path, DEFAULT_WEIGHTS, "particle U-Net", device=torch.device("cpu"), map_to_cpu=True
    )
    model = ParticleUNet(**unet_args(checkpoint, KIND))
    model.load_state_dict(checkpoint["state_dict"])
    return model.train()


def load_particle_unet_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """Training metadata stored with the weights (config, held-out scores)."""
    return read_metadata(path, DEFAULT_WEIGHTS)


@torch.inference_mode()
def predict_maps(
    model: ParticleUNet,
    normalized: np.ndarray,
    *,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability and boundary distance of a normalised volume.

    Parameters
    ----------
    model : ParticleUNet
        Network in eval mode.
    normalized : numpy.ndarray
        float32 (Z, Y, X) volume normalised with :func:`models.crack_unet.reference_levels`
        and :func:`models.crack_unet.normalize_slices`.
    batch_size : int, optional
        Slices per forward pass.
    progress : callable, optional
        Called with the number of slices done after each batch.
    start, stop : int, optional
        Predict only slices ``start .. stop - 1`` (default all), the others serving as their
        context: a slab of a larger volume read with one slice more on each side gets the maps
        the whole volume gives these slices (batches start at ``start``).

    Returns
    -------
    tuple of numpy.ndarray
        float32 (stop - start, Y, X) foreground probability and distance in voxels (>= 0).
    """
    vol = np.asarray(normalized, dtype=np.float32)
    first, last = slice_range(vol.shape[0], start, stop)
    device = next(model.parameters()).device
    prob = np.empty((last - first, *vol.shape[1:]), dtype=np.float32)
    dist = np.empty_like(prob)
    for z0 in range(first, last, batch_size):
        zs = range(z0, min(z0 + batch_size, last))
        batch = torch.from_numpy(np.stack([context_stack(vol, z) for z in zs])).to(device)
        padded, h, w = pad_to_multiple(batch, SIZE_MULTIPLE)
        out = model(padded)[:, :, :h, :w].float().cpu().numpy()
        i = z0 - first
        prob[i : i + len(zs)] = 1.0 / (1.0 + np.exp(-out[:, 0]))
        dist[i : i + len(zs)] = np.maximum(out[:, 1], 0.0) * np.float32(DISTANCE_SCALE_PX)
        if progress is not None:
            progress(len(zs))
    return prob, dist
