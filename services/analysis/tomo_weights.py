"""Network weights a tomography run asks for in its start document.

``crack_weights``     a crack U-Net checkpoint (as written by ``beamwatch train cracks``)
``particle_weights``  a particle U-Net checkpoint (``beamwatch train particles``)

Each is a file name under the consumer's data dir. It is checked when the run starts: the path
must stay inside the data dir (no absolute path, no ``..``, no symlink out), the file must
exist and load as a checkpoint of that network. A refused one is logged with the reason,
counted in ``beamwatch_start_options_rejected{option}``, written under ``weights`` in the
metadata of ``analysis/<uid>/cracks`` (``errors``), and the run goes on with the shipped
weights, which the same metadata says (``crack_weights: "shipped"``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "CRACK_WEIGHTS_KEY",
    "PARTICLE_WEIGHTS_KEY",
    "SHIPPED",
    "RunWeights",
    "run_weights",
]

CRACK_WEIGHTS_KEY = "crack_weights"
PARTICLE_WEIGHTS_KEY = "particle_weights"
SHIPPED = "shipped"


@dataclass
class RunWeights:
    """The checked networks of one run: a loaded model, or None for the shipped weights."""

    crack_model: Any = None
    particle_model: Any = None
    #: option -> the checked file (for the slab path, whose workers load it themselves)
    paths: dict[str, str] = field(default_factory=dict)
    #: option -> file name under the data dir, or "shipped"
    used: dict[str, str] = field(
        default_factory=lambda: {CRACK_WEIGHTS_KEY: SHIPPED, PARTICLE_WEIGHTS_KEY: SHIPPED}
    )
    #: option -> why the start document's value was refused
    errors: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """What the run's metadata says about its weights (``errors`` only when any)."""
        out: dict[str, Any] = dict(self.used)
        if self.errors:
            out["errors"] = dict(self.errors)
        return out


# on the device the shipped networks use (models.device.pick_device), so a run with named
# weights runs where a run without them would
def _crack_loader(path: Path) -> Any:
    from models.crack_unet import load_crack_unet

    return load_crack_unet(path)


def _particle_loader(path: Path) -> Any:
    from models.particle_unet import load_particle_unet

    return load_particle_unet(path)


_LOADERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    CRACK_WEIGHTS_KEY: ("crack U-Net", _crack_loader),
    PARTICLE_WEIGHTS_KEY: ("particle U-Net", _particle_loader),
}


class WeightsRequestError(ValueError):
    """A start document's weights option that cannot be used; ``option`` names the key."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


def _load(option: str, spec: Any, data_dir: Path | None) -> tuple[Path, Any]:
    from services.core.identifiers import InvalidIdentifier, confined_path

    what, loader = _LOADERS[option]
    if not isinstance(spec, str) or not spec:
        raise WeightsRequestError(option, f"expected a file name, got {spec!r:.80}")
    if data_dir is None:
        raise WeightsRequestError(option, "this consumer has no data dir to read weights from")
    try:
        path = confined_path(data_dir, spec)
    except InvalidIdentifier:
        # named as the start document gave it, never by the data dir's own path (the message
        # reaches the run's metadata and the live page)
        raise WeightsRequestError(
            option,
            f"{spec[:200]!r} is not under the data dir "
            "(an absolute path, or one that leaves it through '..' or a link)",
        ) from None
    if not path.is_file():
        raise WeightsRequestError(option, f"no file {spec[:200]!r} under the data dir")
    try:
        return path, loader(path)
    except Exception as exc:  # any failure to read the file is a refusal of the option
        message = f"{type(exc).__name__}: {exc}"
        raise WeightsRequestError(
            option, f"{spec[:200]!r} is not a {what} checkpoint: {message}"
        ) from None


def run_weights(
    start: Mapping[str, Any],
    *,
    data_dir: Path | None,
    on_rejected: Callable[[str], None] | None = None,
) -> RunWeights:
    """Check and load the weights a start document names (see the module docstring).

    Parameters
    ----------
    start : mapping
        The run's start document.
    data_dir : pathlib.Path or None
        The consumer's data dir; weights files must lie under it (None: every named file is
        refused).
    on_rejected : callable, optional
        Called with the option name of every refused value (the metric).

    Returns
    -------
    RunWeights
        Loaded models for the accepted options; the shipped weights (None) for the others.
    """
    weights = RunWeights()
    uid = str(start.get("uid", ""))
    for option in _LOADERS:
        if option not in start:
            continue
        try:
            path, model = _load(option, start[option], data_dir)
        except WeightsRequestError as exc:
            weights.errors[option] = f"{exc}; using the shipped weights"
            logger.error("weights refused: %s", exc, extra={"run_uid": uid})
            if on_rejected is not None:
                on_rejected(option)
            continue
        if option == CRACK_WEIGHTS_KEY:
            weights.crack_model = model
        else:
            weights.particle_model = model
        weights.used[option] = str(start[option])
        weights.paths[option] = str(path)
    return weights
