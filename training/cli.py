"""What the trainers' entry points share (``python -m training.train_<net>``).

- :func:`trainer_parser`: the options every trainer has (``--out``, ``--threads``, ``--lr``,
  ``--batch``, ``--seed``, and ``--minutes``, the wall-clock budget of
  :func:`training.loop.train_within_budget`), :func:`add_volume_options` those of the
  trainers on synthetic volumes (``--volumes``, ``--size``, ``--depth``),
  :func:`add_unet_options` those of the U-Nets (``--tile``, ``--base-channels``, ``--init``) and
  :func:`add_keep_best_option` ``--eval-every``;
- :func:`start_training`: logging, torch threads and the seeds;
- :func:`train_with_options`: the one loop with those options (every trainer decays the
  learning rate to 2 % of ``--lr``);
- :func:`run_metadata` and :func:`save_trained`: the common part of the JSON sidecar and the
  weights with that sidecar next to them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from training.loop import TrainingRun, train_within_budget

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


def add_unet_options(parser: argparse.ArgumentParser, *, tile: int, base_channels: int) -> None:
    """``--tile`` (training crops), ``--base-channels`` (U-Net width), ``--init`` (weights to
    start from)."""
    parser.add_argument("--tile", type=int, default=tile, help="side of the training crops (px)")
    parser.add_argument("--base-channels", type=int, default=base_channels, help="U-Net width")
    parser.add_argument("--init", type=Path, default=None, help="start from these weights")


def add_keep_best_option(parser: argparse.ArgumentParser, *, default: int, scored: str) -> None:
    """``--eval-every N``: score ``scored`` every N steps and keep the best state (0: the last)."""
    parser.add_argument(
        "--eval-every",
        type=int,
        default=default,
        help=f"score {scored} every N steps and keep the best state (0: keep the last)",
    )


def start_training(args: argparse.Namespace) -> np.random.Generator:
    """Log to stderr, use ``args.threads`` torch threads, seed torch; the numpy generator."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return np.random.default_rng(args.seed)


def train_with_options(
    model: torch.nn.Module,
    loss_of_step: Callable[[], torch.Tensor],
    args: argparse.Namespace,
    *,
    evaluate: Callable[[], dict[str, float]] | None = None,
    key: str | None = None,
    **loop: Any,
) -> TrainingRun:
    """:func:`training.loop.train_within_budget` with ``--minutes`` (None: no time limit),
    ``--lr`` decaying to 2 % of it, and keep-best on ``evaluate``'s ``key`` every
    ``--eval-every`` steps when the trainer has that option and it is > 0; ``loop``: the
    loop's other keywords (``max_steps``, ``weight_decay``, ``progress``, ``log_every``)."""
    every = getattr(args, "eval_every", 0)
    keep_best = evaluate is not None and every > 0
    return train_within_budget(
        model,
        loss_of_step,
        evaluate=evaluate if keep_best else None,
        key=key if keep_best else None,
        eval_steps=every if keep_best else None,
        minutes=math.inf if args.minutes is None else args.minutes,
        lr=args.lr,
        lr_floor=0.02,
        **loop,
    )


def run_metadata(
    args: argparse.Namespace, run: TrainingRun, *, data_seconds: float, key: str | None = None
) -> dict[str, Any]:
    """The sidecar's common part: options, steps, the kept state (the best held-out ``key``
    when the run kept the best, else the last step) and times."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "config": config,
        "steps": run.steps,
        "best_step": run.best_step,
        "kept": f"best held-out {key}" if run.history and key else "last step",
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
