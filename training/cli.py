"""What the trainers' entry points share (``python -m training.train_<net>``).

- :func:`trainer_parser`: the options every trainer has (``--out``, ``--threads``, ``--lr``,
  ``--batch``, ``--seed``, and ``--minutes``, the wall-clock budget of
  :func:`training.loop.train_within_budget`), :func:`add_volume_options` those of the
  trainers on synthetic volumes (``--volumes``, ``--size``, ``--depth``);
- :func:`start_training`: logging, torch threads and the seeds;
- :func:`run_metadata` and :func:`save_trained`: the common part of the JSON sidecar and the
  weights with that sidecar next to them.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from training.loop import TrainingRun

logger = logging.getLogger(__name__)

Net = TypeVar("Net", bound=torch.nn.Module)


def trainer_parser(
    description: str,
    *,
    out: Path,
    threads: int,
    minutes: float | None,
    batch: int,
    lr: float,
    seed: int,
    seed_help: str = "seed of the data and the batches",
    prog: str | None = None,
) -> argparse.ArgumentParser:
    """An argument parser with the options every trainer has, defaults shown in ``--help``.

    ``minutes`` None: the budget defaults to no time limit (the trainer stops at its
    ``--steps``).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=out, help="weights file (.pt); a .json sidecar goes next to it"
    )
    parser.add_argument("--threads", type=int, default=threads, help="torch CPU threads")
    parser.add_argument(
        "--minutes",
        type=float,
        default=minutes,
        help="training time budget (wall clock)" + ("" if minutes else "; none: stop at --steps"),
    )
    parser.add_argument("--batch", type=int, default=batch, help="samples per step")
    parser.add_argument(
        "--lr", type=float, default=lr, help="peak learning rate (cosine decay over the budget)"
    )
    parser.add_argument("--seed", type=int, default=seed, help=seed_help)
    return parser


def add_volume_options(
    parser: argparse.ArgumentParser, *, volumes: int, size: int, depth: int
) -> None:
    """``--volumes``, ``--size``, ``--depth``: the synthetic training volumes."""
    parser.add_argument("--volumes", type=int, default=volumes, help="synthetic training volumes")
    parser.add_argument("--size", type=int, default=size, help="their side (px)")
    parser.add_argument("--depth", type=int, default=depth, help="their slices")


def start_training(args: argparse.Namespace) -> np.random.Generator:
    """Log to stderr, use ``args.threads`` torch threads, seed torch; the numpy generator."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return np.random.default_rng(args.seed)


def run_metadata(
    args: argparse.Namespace, run: TrainingRun, *, data_seconds: float, kept: str | None
) -> dict[str, Any]:
    """The sidecar's common part: options, steps, the kept state (``kept``: the held-out score
    that chose it, None: the last step) and times."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "config": config,
        "steps": run.steps,
        "best_step": run.best_step,
        "kept": f"best held-out {kept}" if kept else "last step",
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(run.train_seconds, 1),
    }


def save_trained(
    save: Callable[[Net, Path, dict[str, Any]], None],
    model: Net,
    out: Path,
    metadata: dict[str, Any],
) -> None:
    """Write the weights with ``save`` (the network's checkpoint format) and ``metadata`` as
    the JSON sidecar ``out.with_suffix(".json")``."""
    metadata = {**metadata, "torch": str(torch.__version__)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save(model, out, metadata)
    out.with_suffix(".json").write_text(json.dumps(metadata, indent=2) + "\n")
    logger.info("saved %s (%.1f kB)", out, out.stat().st_size / 1e3)
