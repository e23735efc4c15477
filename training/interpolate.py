"""Weights half-way between two checkpoints of one network (WiSE-FT).

``python -m training.interpolate BASE TUNED --alpha 0.5 --out W.pt`` writes
``(1 - alpha) * BASE + alpha * TUNED`` for every floating-point tensor of the two state dicts,
in the checkpoint format of :mod:`models.checkpoint`, with a JSON sidecar naming both parents.
Interpolating a fine-tune with the weights it started from keeps much of what it gained on new
data and loses less of what the start did well (Wortsman et al. 2022, "Robust fine-tuning of
zero-shot models"); both must be the same network (kind, constructor arguments, tensor shapes).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _read(path: Path) -> dict[str, Any]:
    """A checkpoint dictionary (tensors and plain types only, never arbitrary pickles)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a checkpoint (no state_dict)")
    return checkpoint


def interpolate_checkpoints(base: Path, tuned: Path, alpha: float) -> dict[str, Any]:
    """The checkpoint ``(1 - alpha) * base + alpha * tuned``.

    Parameters
    ----------
    base, tuned : pathlib.Path
        Checkpoints of the same network (same kind, constructor arguments and tensors).
    alpha : float
        Weight of ``tuned``, in [0, 1] (0 gives ``base``, 1 gives ``tuned``).

    Returns
    -------
    dict
        A checkpoint dictionary with ``base``'s entries (``tuned``'s when only it names its
        kind), the interpolated ``state_dict`` and metadata naming both parents.

    Raises
    ------
    ValueError
        If ``alpha`` is outside [0, 1] or the two checkpoints are not the same network.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    a, b = _read(base), _read(tuned)
    for key in ("kind", "init"):
        # a checkpoint written before the format named its kind (the shipped weights among
        # them) has neither: the tensors' names and shapes are then the check
        if key in a and key in b and a[key] != b[key]:
            raise ValueError(
                f"{base} and {tuned} are not the same network: "
                f"{key} {a.get(key)!r} != {b.get(key)!r}"
            )
    sa, sb = a["state_dict"], b["state_dict"]
    if sa.keys() != sb.keys():
        raise ValueError(
            f"{base} and {tuned} hold different tensors: {sorted(sa.keys() ^ sb.keys())}"
        )
    state = {}
    for name, ta in sa.items():
        tb = sb[name]
        if ta.shape != tb.shape:
            raise ValueError(
                f"tensor {name}: shape {tuple(ta.shape)} in {base}, {tuple(tb.shape)} in {tuned}"
            )
        # integer buffers (batch-norm step counts) are not interpolated: the base's are kept
        state[name] = (1.0 - alpha) * ta + alpha * tb if ta.is_floating_point() else ta.clone()
    metadata = {
        "interpolated": {
            "alpha": alpha,
            "base": {"path": str(base), "metadata": a.get("metadata", {})},
            "tuned": {"path": str(tuned), "metadata": b.get("metadata", {})},
        }
    }
    entries = a if "kind" in a or "kind" not in b else b
    return {**entries, "state_dict": state, "metadata": json.loads(json.dumps(metadata))}


def main(argv: list[str] | None = None) -> int:
    """Entry point: write the interpolated checkpoint and its JSON sidecar."""
    parser = argparse.ArgumentParser(
        prog="python -m training.interpolate",
        description="Weights between two checkpoints of one network: "
        "(1 - alpha) * BASE + alpha * TUNED (WiSE-FT).",
    )
    parser.add_argument("base", type=Path, help="the weights the fine-tune started from")
    parser.add_argument("tuned", type=Path, help="the fine-tuned weights")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of TUNED (0 to 1)")
    parser.add_argument("--out", type=Path, required=True, help="destination .pt file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    checkpoint = interpolate_checkpoints(args.base, args.tuned, args.alpha)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.out)
    sidecar = {**checkpoint["metadata"], "torch": str(torch.__version__)}
    args.out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    logger.info("saved %s (alpha %.2f of %s)", args.out, args.alpha, args.tuned)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
