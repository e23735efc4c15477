"""Small U-Net that segments cathode particles in a TXM optical-density frame.

The network works at about :data:`WORK_SIZE` px: a frame is block-averaged by
:func:`working_binning` (1024 x 1024 -> 256 x 256), normalised by :func:`normalize_frame`
(``(od - median) / (p99 - median)``, so the background is about 0 and the densest particles
about 1 at every energy) and returns one foreground logit per pixel. :func:`predict_probability`
does all of this and resamples the probability to the frame's own size. Turning the
probability into labelled particles is ``pipelines.xanes.detect_learned``.

Trained by ``python -m training.train_txm_particle_net`` on synthetic frames only
(:mod:`synthetic.txm_detection`).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from models.checkpoint import read_checkpoint, read_metadata
from models.fusion import for_inference
from models.unet import UNet2d, pad_to_multiple, save_unet, unet_args

__all__ = [
    "DEFAULT_WEIGHTS",
    "float_state_dict",
    "WORK_SIZE",
    "TxmParticleNet",
    "load_txm_particle_net",
    "load_txm_particle_net_metadata",
    "normalize_frame",
    "predict_logits",
    "predict_logits_averaged",
    "predict_probability",
    "save_txm_particle_net",
    "shipped_txm_particle_net",
    "working_binning",
]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "txm_particle_net.pt"
KIND = "txm_particle_net"
DEPTH = 5
SIZE_MULTIPLE = 2 ** (DEPTH - 1)
WORK_SIZE = 256
"""Frames are binned so that their longer side is about this many pixels."""


class TxmParticleNet(UNet2d):
    """Five-level U-Net: normalised OD (B, 1, H, W) -> particle logit (B, 1, H, W).

    Parameters
    ----------
    base_channels : int
        Channels of the first level; doubled at each level.
    """

    def __init__(self, base_channels: int = 6) -> None:
        super().__init__(1, 1, base_channels, DEPTH, batch_norm=True)


def working_binning(shape: tuple[int, ...]) -> int:
    """Block size that brings a frame of ``shape`` (H, W) to about :data:`WORK_SIZE` px."""
    return max(1, int(round(max(shape[-2:]) / WORK_SIZE)))


def normalize_frame(od: np.ndarray) -> np.ndarray:
    """``(od - median) / (p99 - median)`` as float32 (scale floored at 1e-6).

    Parameters
    ----------
    od : numpy.ndarray
        (H, W) optical density at the working resolution.

    Returns
    -------
    numpy.ndarray
        float32 (H, W); background about 0, densest particles about 1.
    """
    values = np.asarray(od, dtype=np.float32)
    sample = values[:: max(1, values.shape[0] // 256), :: max(1, values.shape[1] // 256)]
    median, p99 = np.percentile(sample, [50.0, 99.0])
    return (values - np.float32(median)) / np.float32(max(float(p99 - median), 1e-6))


def _block_mean(image: np.ndarray, block: int) -> np.ndarray:
    if block == 1:
        return image
    h, w = image.shape
    pad = ((0, (-h) % block), (0, (-w) % block))
    padded = np.pad(image, pad, mode="edge") if any(p for _, p in pad) else image
    hb, wb = padded.shape[0] // block, padded.shape[1] // block
    return padded.reshape(hb, block, wb, block).mean(axis=(1, 3))


def save_txm_particle_net(
    model: TxmParticleNet, path: Path, metadata: dict[str, Any] | None = None
) -> None:
    """Save weights as float16 (half the size), architecture settings and JSON metadata."""
    half = copy.deepcopy(model).half()
    save_unet(half, path, {**(metadata or {}), "weights_dtype": "float16"}, kind=KIND)


def float_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict with floating-point tensors as float32."""
    return {
        k: v.float() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()
    }


def load_txm_particle_net(
    path: str | Path | None = None, *, device: torch.device | None = None
) -> TxmParticleNet:
    """Load the TXM particle network in evaluation mode.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        Weights file; default the shipped :data:`DEFAULT_WEIGHTS`.
    device : torch.device, optional
        Default :func:`models.device.pick_device`.

    Returns
    -------
    TxmParticleNet
        Network on ``device`` in ``eval()`` mode with batch normalisation folded into the
        convolutions (it cannot be trained further).
    """
    checkpoint, dev = read_checkpoint(
        path, DEFAULT_WEIGHTS, "TXM particle network", device=device, map_to_cpu=True
    )
    model = TxmParticleNet(**unet_args(checkpoint, KIND))
    model.load_state_dict(float_state_dict(checkpoint))
    return for_inference(model, dev)


@lru_cache(maxsize=1)
def shipped_txm_particle_net() -> TxmParticleNet:
    """The shipped network on the default device, loaded once per process."""
    return load_txm_particle_net()


def load_txm_particle_net_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """Training metadata stored with the weights (config, held-out scores)."""
    return read_metadata(path, DEFAULT_WEIGHTS)


@torch.inference_mode()
def predict_logits(model: TxmParticleNet, normalized: np.ndarray) -> np.ndarray:
    """Particle logits (N, H, W) float32 of normalised working-resolution frames (N, H, W)."""
    batch = np.asarray(normalized, dtype=np.float32)
    if batch.ndim == 2:
        batch = batch[None]
    h, w = batch.shape[-2:]
    device = next(model.parameters()).device
    x, _, _ = pad_to_multiple(
        torch.from_numpy(np.ascontiguousarray(batch[:, None])).to(device), SIZE_MULTIPLE
    )
    return model(x)[:, 0, :h, :w].float().cpu().numpy()


def _dihedral(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(image, k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def _undo_dihedral(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = image[..., ::-1] if flip else image
    return np.rot90(out, -k, axes=(-2, -1))


def predict_logits_averaged(model: TxmParticleNet, normalized: np.ndarray) -> np.ndarray:
    """Logits (H, W) averaged over the 8 rotations and flips of a square frame (4 flips else).

    The network is not exactly invariant to these; the average is steadier on frames unlike
    its training data (e.g. large faint particles on real frames).
    """
    image = np.asarray(normalized, dtype=np.float32)
    square = image.shape[0] == image.shape[1]
    transforms = [(k, f) for k in ((0, 1, 2, 3) if square else (0, 2)) for f in (False, True)]
    batch = np.stack([np.ascontiguousarray(_dihedral(image, k, f)) for k, f in transforms])
    logits = predict_logits(model, batch)
    undone = [_undo_dihedral(lg, k, f) for lg, (k, f) in zip(logits, transforms, strict=True)]
    return np.mean(undone, axis=0).astype(np.float32)


@torch.inference_mode()
def predict_probability(
    model: TxmParticleNet, od: np.ndarray, *, average_transforms: bool = True
) -> np.ndarray:
    """Particle probability of every pixel of an optical-density frame.

    Parameters
    ----------
    model : TxmParticleNet
        Network in eval mode.
    od : numpy.ndarray
        (H, W) optical density (particles positive), any float dtype; non-finite values are
        treated as the frame's median.
    average_transforms : bool
        Average the logits over rotations and flips (:func:`predict_logits_averaged`, 8 passes
        batched) instead of one pass.

    Returns
    -------
    numpy.ndarray
        float32 (H, W) probability in [0, 1]: the network runs on the frame binned by
        :func:`working_binning`, its logits are resampled bilinearly to (H, W).
    """
    frame = np.asarray(od, dtype=np.float32)
    if frame.ndim != 2:
        raise ValueError(f"od must be 2-D, got shape {frame.shape}")
    if not np.all(np.isfinite(frame)):
        frame = np.where(np.isfinite(frame), frame, np.nanmedian(frame)).astype(np.float32)
    block = working_binning(frame.shape)
    small = normalize_frame(_block_mean(frame, block))
    if average_transforms:
        small_logits = predict_logits_averaged(model, small)
    else:
        small_logits = predict_logits(model, small)[0]
    logits = torch.from_numpy(np.ascontiguousarray(small_logits))[None, None]
    if block > 1:
        logits = F.interpolate(logits, scale_factor=block, mode="bilinear", align_corners=False)
    h, w = frame.shape
    return torch.sigmoid(logits[0, 0, :h, :w]).numpy().astype(np.float32)
