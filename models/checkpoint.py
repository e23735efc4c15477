"""Reading the shipped ``.pt`` checkpoints: one place for the path default, the missing-file
error, the device choice and the metadata (training config, held-out scores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.device import pick_device


def read_checkpoint(
    path: str | Path | None,
    default: Path,
    what: str,
    *,
    device: torch.device | None = None,
    map_to_cpu: bool = False,
) -> tuple[dict[str, Any], torch.device]:
    """Load a checkpoint dictionary (tensors only, never arbitrary pickles).

    Parameters
    ----------
    path : str or pathlib.Path or None
        Weights file; None for ``default``.
    default : pathlib.Path
        The shipped weights.
    what : str
        Name of the network for the error message.
    device : torch.device, optional
        Where the network will run; default :func:`models.device.pick_device`.
    map_to_cpu : bool
        Load the tensors on the CPU (to convert them before moving the network).

    Returns
    -------
    checkpoint, device

    Raises
    ------
    FileNotFoundError
        If the weights file does not exist.
    """
    weights = Path(path) if path is not None else default
    if not weights.is_file():
        raise FileNotFoundError(f"{what} weights not found: {weights}")
    dev = device if device is not None else pick_device()
    checkpoint = torch.load(weights, map_location="cpu" if map_to_cpu else dev, weights_only=True)
    return checkpoint, dev


def read_metadata(path: str | Path | None, default: Path) -> dict[str, Any]:
    """Training metadata stored with the weights (empty when none was stored)."""
    weights = Path(path) if path is not None else default
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    return dict(checkpoint.get("metadata", {}))
