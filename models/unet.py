"""The U-Net both segmentation networks are built from (seed architecture, any depth).

Encoder modules of two 3x3 convolutions + ReLU (optionally batch-normalised) joined by max
pooling, decoder modules joined by 2x2 transposed-convolution up-sampling with skip
connections, and a 1x1 convolution head returning logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models.checkpoint import constructor_args, save_checkpoint


def double_conv(c_in: int, c_out: int, *, batch_norm: bool = False) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by (batch norm and) ReLU."""
    layers: list[nn.Module] = []
    for c_from in (c_in, c_out):
        layers.append(nn.Conv2d(c_from, c_out, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet2d(nn.Module):
    """U-Net with ``depth`` levels; widths ``base_channels * 2**level``.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output logits.
    base_channels : int
        Channels of the first level.
    depth : int
        Number of encoder levels (``depth - 1`` poolings: H and W multiples of
        ``2**(depth - 1)``).
    batch_norm : bool
        Batch normalisation after each convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        depth: int,
        *,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.base_channels = base_channels
        widths = [base_channels * 2**i for i in range(depth)]
        self.encoders = nn.ModuleList()
        c_prev = in_channels
        for width in widths:
            self.encoders.append(double_conv(c_prev, width, batch_norm=batch_norm))
            c_prev = width
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(width * 2, width, 2, stride=2))
            self.decoders.append(double_conv(width * 2, width, batch_norm=batch_norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, encoder in enumerate(self.encoders):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        for upsample, decoder, skip in zip(
            self.upsamplers, self.decoders, reversed(skips[:-1]), strict=True
        ):
            x = decoder(torch.cat((upsample(x), skip), dim=1))
        return self.head(x)


def pad_to_multiple(batch: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple`` (the
    U-Net's total pooling factor): reflect where the image is large enough, else replicate.

    Returns
    -------
    tuple
        Padded tensor and the original height and width (crop the output back to them).
    """
    h, w = batch.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        batch = F.pad(batch, (0, pad_w, 0, pad_h), mode=mode)
    return batch, h, w


def save_unet(
    model: UNet2d, path: Path, metadata: dict[str, Any] | None = None, *, kind: str = "unet"
) -> None:
    """Save weights with ``base_channels`` (needed to rebuild the network) and metadata
    (:func:`models.checkpoint.save_checkpoint`)."""
    save_checkpoint(
        model, path, kind=kind, init={"base_channels": model.base_channels}, metadata=metadata
    )


def unet_args(checkpoint: dict[str, Any], kind: str) -> dict[str, Any]:
    """Constructor arguments of a U-Net checkpoint of ``kind`` (shipped files: top level)."""
    return constructor_args(checkpoint, kind, lambda c: {"base_channels": int(c["base_channels"])})
