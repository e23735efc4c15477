"""U-Net for crack segmentation in cathode tomography slices.

The architecture follows the crack-detection seed paper (Fu et al.): five encoder modules of
two 3x3 convolutions with ReLU joined by max pooling, four decoder modules joined by 2x2
up-sampling convolutions with skip connections, and a one-channel sigmoid output (the network
returns logits; the loss is the sigmoid cross-entropy).

The input is 2.5-D: the normalised slices ``z - 1, z, z + 1`` as three channels
(:func:`context_stacks`), and the output is the crack logit of the middle slice. A thin pore
gap between two touching particles looks like a crack in one slice but changes from slice to
slice, while a crack plane continues. Single-slice weights (one input channel) still load and
run: :func:`predict_probabilities` then gives them the middle slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import constructor_args, read_checkpoint, read_metadata, save_checkpoint
from models.fusion import for_inference
from models.particle_unet import context_stack
from models.unet import UNet2d
from models.unet import pad_to_multiple as unet_pad

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "crack_unet.pt"
KIND = "crack_unet"
DEPTH = 5
SIZE_MULTIPLE = 2 ** (DEPTH - 1)
"""Input height and width must be multiples of this (four poolings)."""
CONTEXT_SLICES = 3
"""Input channels of the 2.5-D network: slices ``z - 1, z, z + 1``."""


def normalize_slices(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map intensities to the network's input range with fixed reference levels.

    Parameters
    ----------
    volume : numpy.ndarray
        Reconstructed slice(s), any real dtype.
    low, high : float
        Intensities mapped to 0 and 1 (for example the 1st and 99.5th percentile of the
        whole volume, see :func:`reference_levels`).

    Returns
    -------
    numpy.ndarray
        float32 ``(volume - low) / (high - low)``, not clipped.
    """
    if not high > low:
        raise ValueError(f"high must be > low, got low={low}, high={high}")
    scale = np.float32(1.0 / (high - low))
    return (np.asarray(volume, dtype=np.float32) - np.float32(low)) * scale


def normalize_slices_inplace(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    """:func:`normalize_slices` of a writeable float32 array, written into it (returned)."""
    if not high > low:
        raise ValueError(f"high must be > low, got low={low}, high={high}")
    if volume.dtype != np.float32 or not volume.flags.writeable:
        raise ValueError(f"volume must be a writeable float32 array, got {volume.dtype}")
    scale = np.float32(1.0 / (high - low))
    np.subtract(volume, np.float32(low), out=volume)
    np.multiply(volume, scale, out=volume)
    return volume


def reference_levels(volume: np.ndarray, max_samples: int = 2_000_000) -> tuple[float, float]:
    """Intensity levels used to normalise a whole volume before segmentation.

    Parameters
    ----------
    volume : numpy.ndarray
        Reconstructed volume, any real dtype.
    max_samples : int, optional
        The percentiles are computed on a regular subsample of at most this many voxels.

    Returns
    -------
    tuple of float
        1st and 99.5th percentiles of the non-zero voxels (zeros are the outside of the
        reconstruction circle).
    """
    flat = np.asarray(volume).ravel()
    step = max(1, flat.size // max_samples)
    return levels_from_sample(flat[::step])


def levels_from_sample(sample: np.ndarray) -> tuple[float, float]:
    """:func:`reference_levels` of a regular subsample already taken (e.g. slab by slab).

    Parameters
    ----------
    sample : numpy.ndarray
        The voxels ``volume.ravel()[::step]`` (any real dtype), zeros included.

    Returns
    -------
    tuple of float
        1st and 99.5th percentiles of the non-zero values.
    """
    values = np.asarray(sample).ravel().astype(np.float64)
    values = values[values != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.5])
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


class CrackUNet(UNet2d):
    """Five-level U-Net returning crack logits.

    Parameters
    ----------
    base_channels : int
        Channels of the first encoder module; doubled at each level.
    in_channels : int
        Input channels: :data:`CONTEXT_SLICES` neighbouring slices, or 1 (single slices, the
        earlier weights).
    """

    def __init__(self, base_channels: int = 8, in_channels: int = CONTEXT_SLICES) -> None:
        if in_channels not in (1, CONTEXT_SLICES):
            raise ValueError(f"in_channels must be 1 or {CONTEXT_SLICES}, got {in_channels}")
        super().__init__(in_channels, 1, base_channels, DEPTH)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Crack logits (B, 1, H, W) for inputs (B, in_channels, H, W), H and W multiples of 16."""
        return super().forward(x)


def context_stacks(normalized: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Network inputs of slices ``start .. stop - 1``: each with its two neighbours.

    Parameters
    ----------
    normalized : numpy.ndarray
        (Z, Y, X) normalised slices (:func:`normalize_slices`); the first and last slice stand
        in for their missing outer neighbour.
    start, stop : int, optional
        Slice range (default all).

    Returns
    -------
    numpy.ndarray
        float32 (stop - start, :data:`CONTEXT_SLICES`, Y, X), channels ``z - 1, z, z + 1``
        (:func:`models.particle_unet.context_stack`).
    """
    vol = np.asarray(normalized)
    if vol.ndim != 3:
        raise ValueError(f"normalized must be 3-D (Z, Y, X), got shape {vol.shape}")
    end = vol.shape[0] if stop is None else stop
    if not 0 <= start <= end <= vol.shape[0]:
        raise ValueError(f"start, stop must satisfy 0 <= start <= stop <= Z, got {start}, {end}")
    out = np.empty((end - start, CONTEXT_SLICES, *vol.shape[1:]), dtype=np.float32)
    for i, z in enumerate(range(start, end)):
        out[i] = context_stack(vol, z)
    return out


def save_crack_unet(model: CrackUNet, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Save weights with the architecture settings needed to rebuild the network.

    Parameters
    ----------
    model : CrackUNet
        Trained network.
    path : pathlib.Path
        Destination ``.pt`` file.
    metadata : dict, optional
        JSON-like extra information stored alongside (training config, scores).
    """
    save_checkpoint(
        model,
        path,
        kind=KIND,
        init={"base_channels": model.base_channels, "in_channels": model.in_channels},
        metadata=metadata,
    )


def crack_unet_args(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of a crack U-Net checkpoint (the shipped file keeps
    ``base_channels`` at the top level; its input channels are those of the first layer)."""
    return constructor_args(
        checkpoint,
        KIND,
        lambda c: {
            "base_channels": int(c["base_channels"]),
            "in_channels": int(c["state_dict"]["encoders.0.0.weight"].shape[1]),
        },
    )


def load_crack_unet(
    path: str | Path | None = None, *, device: torch.device | None = None
) -> CrackUNet:
    """Load the crack U-Net in evaluation mode.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        Weights file; default the shipped :data:`DEFAULT_WEIGHTS`.
    device : torch.device, optional
        Default :func:`models.device.pick_device`.

    Returns
    -------
    CrackUNet
        Network on ``device``, ``eval()`` mode, weights channels-last
        (:func:`models.fusion.for_inference`).
    """
    checkpoint, dev = read_checkpoint(path, DEFAULT_WEIGHTS, "crack U-Net", device=device)
    model = CrackUNet(**crack_unet_args(checkpoint))
    model.load_state_dict(checkpoint["state_dict"])
    return for_inference(model, dev)


def load_crack_unet_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """Training metadata stored with the weights (config, held-out scores).

    Parameters
    ----------
    path : str or pathlib.Path, optional
        Weights file; default :data:`DEFAULT_WEIGHTS`.

    Returns
    -------
    dict
        The metadata dictionary (empty when none was stored).
    """
    return read_metadata(path, DEFAULT_WEIGHTS)


def pad_to_multiple(
    batch: torch.Tensor, multiple: int = SIZE_MULTIPLE
) -> tuple[torch.Tensor, int, int]:
    """Pad (B, C, H, W) so H and W are multiples of ``multiple``.

    Same as :func:`models.unet.pad_to_multiple`, with this network's factor as default.

    Returns
    -------
    tuple
        Padded tensor and the original height and width.
    """
    return unet_pad(batch, multiple)


@torch.inference_mode()
def predict_probabilities(model: CrackUNet, stacks: np.ndarray) -> np.ndarray:
    """Crack probabilities of the middle slices of a batch of normalised context tiles.

    Parameters
    ----------
    model : CrackUNet
        Network in eval mode.
    stacks : numpy.ndarray
        float32 (B, C, H, W) or (C, H, W) normalised intensities, C = :data:`CONTEXT_SLICES`
        slices ``z - 1, z, z + 1`` (:func:`context_stacks`) or C = 1 (a lone slice, taken as
        its own neighbours). A single-slice network uses the middle channel.

    Returns
    -------
    numpy.ndarray
        float32 probabilities (B, H, W) or (H, W).
    """
    arr = np.asarray(stacks, dtype=np.float32)
    if arr.ndim not in (3, 4) or arr.shape[-3] not in (1, CONTEXT_SLICES):
        raise ValueError(
            f"stacks must be (B, C, H, W) or (C, H, W) with C = 1 or {CONTEXT_SLICES}, "
            f"got shape {arr.shape}"
        )
    single = arr.ndim == 3
    if single:
        arr = arr[np.newaxis]
    if model.in_channels == 1:
        arr = arr[:, arr.shape[1] // 2 : arr.shape[1] // 2 + 1]
    elif arr.shape[1] == 1:
        arr = np.repeat(arr, CONTEXT_SLICES, axis=1)
    batch = torch.from_numpy(np.ascontiguousarray(arr))
    device = next(model.parameters()).device
    padded, h, w = pad_to_multiple(batch.to(device))
    probs = torch.sigmoid(model(padded))[:, 0, :h, :w].float().cpu().numpy()
    return probs[0] if single else probs
