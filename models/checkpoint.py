"""The one checkpoint format of every network: its kind, its constructor arguments, the
weights and JSON metadata (training config, held-out scores); one place for the path default,
the missing-file error and the device choice."""

from __future__ import annotations

import json
from collections.abc import Callable
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
    ValueError
        If the file holds no checkpoint dictionary.
    """
    weights = Path(path) if path is not None else default
    if not weights.is_file():
        raise FileNotFoundError(f"{what} weights not found: {weights}")
    dev = device if device is not None else pick_device()
    checkpoint = torch.load(weights, map_location="cpu" if map_to_cpu else dev, weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{weights} is not a {what} checkpoint (no state_dict)")
    return checkpoint, dev


def read_metadata(path: str | Path | None, default: Path) -> dict[str, Any]:
    """Training metadata stored with the weights (empty when none was stored)."""
    weights = Path(path) if path is not None else default
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    return dict(checkpoint.get("metadata", {}))


def save_checkpoint(
    model: torch.nn.Module,
    path: Path,
    *,
    kind: str,
    init: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the one checkpoint format: the network's kind, its constructor arguments, the
    weights and JSON metadata.

    Parameters
    ----------
    model : torch.nn.Module
        The network (its tensors are saved on the CPU, in their current dtype).
    path : pathlib.Path
        Destination ``.pt`` file.
    kind : str
        Which network (``"crack_unet"``, ``"particle_unet"``, ...); loaders refuse another kind.
    init : dict
        Keyword arguments of the network's constructor that rebuild it.
    metadata : dict, optional
        Training config, scores; reduced to plain JSON types so that
        ``torch.load(weights_only=True)`` accepts the file.
    extra : dict, optional
        Further plain entries a loader checks (e.g. the phase net's feature names).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    plain = json.loads(json.dumps(metadata or {}))
    torch.save(
        {
            **json.loads(json.dumps(extra or {})),
            "kind": kind,
            "init": json.loads(json.dumps(init)),
            "state_dict": state,
            "metadata": plain,
        },
        path,
    )


def constructor_args(
    checkpoint: dict[str, Any], kind: str, legacy: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """The constructor arguments stored in a checkpoint of ``kind``.

    Checkpoints written before the format named its kind (the shipped weights among them) keep
    the arguments at the top level; ``legacy`` reads them from there.

    Raises
    ------
    ValueError
        If the checkpoint names another kind of network, or lacks its arguments.
    """
    stored = checkpoint.get("kind")
    if stored is not None and stored != kind:
        raise ValueError(f"checkpoint holds a {stored} network, not a {kind}")
    try:
        return dict(checkpoint["init"]) if "init" in checkpoint else legacy(checkpoint)
    except KeyError as exc:
        raise ValueError(f"not a {kind} checkpoint: no {exc.args[0]!r} entry") from None
