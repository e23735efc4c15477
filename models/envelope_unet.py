"""2.5-D U-Net for the particle envelope: each particle's undamaged shape, cracks and core in.

The network has the particle U-Net's architecture (:class:`models.particle_unet.ParticleUNet`,
three neighbouring normalised slices in) and is fine-tuned from its weights, but its first
output is trained on another target: the **envelope**, the shape each particle had before it
cracked (through-cracks, hollow cores, fragment boundaries and surface cracks inside it), with
the contact between two different particles cut (:func:`envelope_target`). So a crack or a core
void lies inside the envelope, and a gap between two particles lies outside it; the pieces of a
cracked particle fall into one connected component of the envelope. The second output keeps
the particle U-Net's boundary distance (an auxiliary target during training; unused here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import read_checkpoint, read_metadata
from models.fusion import for_inference
from models.particle_unet import SIZE_MULTIPLE, ParticleUNet, context_stack, slice_range
from models.unet import pad_to_multiple, save_unet, unet_args

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "envelope_unet.pt"
KIND = "envelope_unet"


class EnvelopeUNet(ParticleUNet):
    """The particle U-Net's architecture with an envelope logit as its first output."""


def envelope_target(particle_ids: np.ndarray) -> np.ndarray:
    """Training target: each particle's whole shape with the contacts between particles cut.

    Parameters
    ----------
    particle_ids : numpy.ndarray
        int (Z, Y, X) instance labels, 0 = background; cracks and cores carry their particle's
        label (as :mod:`synthetic.cathode` and :mod:`synthetic.damage` write them).

    Returns
    -------
    numpy.ndarray
        bool (Z, Y, X): particle voxels none of whose four in-slice neighbours belongs to
        another particle (so touching particles are separate in-slice components).
    """
    ids = np.asarray(particle_ids)
    if ids.ndim != 3:
        raise ValueError(f"particle_ids must be 3-D (Z, Y, X), got shape {ids.shape}")
    contact = np.zeros(ids.shape, dtype=bool)
    for axis in (1, 2):
        a = np.moveaxis(ids, axis, 0)
        c = np.moveaxis(contact, axis, 0)
        differ = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        c[1:] |= differ
        c[:-1] |= differ
    return (ids > 0) & ~contact


def save_envelope_unet(
    model: EnvelopeUNet, path: Path, metadata: dict[str, Any] | None = None
) -> None:
    """Save weights, architecture settings and JSON metadata (training config, scores)."""
    save_unet(model, path, metadata, kind=KIND)


def load_envelope_unet(
    path: str | Path | None = None, *, device: torch.device | None = None
) -> EnvelopeUNet:
    """Load the envelope U-Net in evaluation mode (``path`` None: the shipped weights).

    Batch normalisation is folded into the convolutions and the weights are channels-last
    (:func:`models.fusion.for_inference`).
    """
    checkpoint, dev = read_checkpoint(path, DEFAULT_WEIGHTS, "envelope U-Net", device=device)
    model = EnvelopeUNet(**unet_args(checkpoint, KIND))
    model.load_state_dict(checkpoint["state_dict"])
    return for_inference(model, dev)


def load_trainable_envelope_unet(path: str | Path) -> EnvelopeUNet:
    """An envelope U-Net for training, from an envelope or a particle U-Net checkpoint (the
    latter is how the envelope network starts), on the CPU in training mode."""
    checkpoint, _ = read_checkpoint(
        path, DEFAULT_WEIGHTS, "envelope U-Net", device=torch.device("cpu"), map_to_cpu=True
    )
    kind = checkpoint.get("kind", KIND)
    if kind not in (KIND, "particle_unet"):
        raise ValueError(f"checkpoint holds a {kind} network, not an envelope or particle U-Net")
    model = EnvelopeUNet(**unet_args(checkpoint, str(kind)))
    model.load_state_dict(checkpoint["state_dict"])
    return model.train()


def load_envelope_unet_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """Training metadata stored with the weights (config, held-out scores)."""
    return read_metadata(path, DEFAULT_WEIGHTS)


@torch.inference_mode()
def predict_envelope_stacks(
    model: EnvelopeUNet, stacks: np.ndarray, *, batch_size: int = 4
) -> np.ndarray:
    """Envelope probability of the middle slices of context stacks.

    Parameters
    ----------
    model : EnvelopeUNet
        Network in eval mode.
    stacks : numpy.ndarray
        float32 (B, 3, Y, X) normalised slices ``z - 1, z, z + 1``
        (:func:`models.crack_unet.context_stacks`).
    batch_size : int, optional
        Stacks per forward pass.

    Returns
    -------
    numpy.ndarray
        float32 (B, Y, X) probability that a pixel lies inside a particle's envelope.
    """
    arr = np.asarray(stacks, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"stacks must be (B, 3, Y, X), got shape {arr.shape}")
    device = next(model.parameters()).device
    prob = np.empty((arr.shape[0], *arr.shape[2:]), dtype=np.float32)
    for b0 in range(0, arr.shape[0], batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(arr[b0 : b0 + batch_size])).to(device)
        padded, h, w = pad_to_multiple(batch, SIZE_MULTIPLE)
        logit = model(padded)[:, 0, :h, :w].float().cpu().numpy()
        prob[b0 : b0 + len(batch)] = 1.0 / (1.0 + np.exp(-logit))
    return prob


def predict_envelope(
    model: EnvelopeUNet,
    normalized: np.ndarray,
    *,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Envelope probability of a normalised volume.

    Parameters
    ----------
    model : EnvelopeUNet
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
        context (:func:`models.particle_unet.predict_maps`).

    Returns
    -------
    numpy.ndarray
        float32 (stop - start, Y, X) probability that a voxel lies inside a particle's envelope.
    """
    vol = np.asarray(normalized, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"normalized must be 3-D (Z, Y, X), got shape {vol.shape}")
    first, last = slice_range(vol.shape[0], start, stop)
    prob = np.empty((last - first, *vol.shape[1:]), dtype=np.float32)
    for z0 in range(first, last, batch_size):
        zs = range(z0, min(z0 + batch_size, last))
        stacks = np.stack([context_stack(vol, z) for z in zs])
        i = z0 - first
        prob[i : i + len(zs)] = predict_envelope_stacks(model, stacks, batch_size=batch_size)
        if progress is not None:
            progress(len(zs))
    return prob
