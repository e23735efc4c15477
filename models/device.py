"""Device choice for every torch computation in beamwatch."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    """Return the device torch computations should run on.

    Returns
    -------
    torch.device
        ``cuda`` when a CUDA device is available, otherwise ``cpu``.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
