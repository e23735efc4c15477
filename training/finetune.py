"""What fine-tuning a shipped network on a user's labelled 2-D slices shares across networks.

Used by ``beamwatch train cracks`` (:mod:`training.crack_finetune`) and ``beamwatch train
particles`` (:mod:`training.particle_finetune`):

- :func:`slice_stack`: a lone slice as the 2.5-D networks' input, normalised on its own levels
  exactly as ``cracks map`` and ``particles analyze`` normalise a one-slice volume, repeated as
  its own z - 1 / z + 1 neighbours;
- :func:`tile_boxes` and :func:`split_indices`: non-overlapping tiles and a held-out share of
  them, stratified by whether a tile holds labelled objects;
- :func:`train_keep_best`: AdamW with cosine decay inside a wall-clock budget, the held-out
  score at the start and every ``eval_seconds``, the best state kept (the initial one
  included: a run that does not improve gives back the initial weights).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.crack_unet import context_stacks, normalize_slices, reference_levels


def slice_stack(image: np.ndarray) -> np.ndarray:
    """(3, Y, X) float32 network input of one 2-D slice, as the pipelines build it."""
    vol = np.asarray(image, dtype=np.float32)[np.newaxis]
    low, high = reference_levels(vol)
    return context_stacks(normalize_slices(vol, low, high))[0]


def _bounds(n: int, tile: int) -> list[tuple[int, int]]:
    pieces = max(1, round(n / tile))
    edges = np.linspace(0, n, pieces + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def tile_boxes(
    shapes: Sequence[tuple[int, ...]], tile: int
) -> list[tuple[int, int, int, int, int]]:
    """(image index, y0, y1, x0, x1) of non-overlapping tiles of about ``tile`` px."""
    return [
        (i, y0, y1, x0, x1)
        for i, shape in enumerate(shapes)
        for y0, y1 in _bounds(shape[0], tile)
        for x0, x1 in _bounds(shape[1], tile)
    ]


def split_indices(
    has_objects: Sequence[bool], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices of training and held-out tiles, stratified by ``has_objects``.

    ``val_fraction`` of the tiles with labelled objects and of those without are held out (at
    least one tile in total, and one with objects when two or more have them), so the
    held-out score measures objects found, not only false alarms on empty tiles.
    """
    if len(has_objects) < 2:
        raise ValueError(
            f"need at least 2 tiles to hold some out, got {len(has_objects)}: "
            "give more or larger slices, or a smaller --tile"
        )
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for wanted in (True, False):
        group = [i for i, has in enumerate(has_objects) if bool(has) == wanted]
        n = round(val_fraction * len(group))
        if wanted and len(group) >= 2:
            n = min(len(group) - 1, max(1, n))
        val += [group[int(k)] for k in rng.permutation(len(group))[:n]]
    if not val:
        val = [int(rng.integers(len(has_objects)))]
    if len(val) == len(has_objects):
        val = val[:-1]
    return sorted(set(range(len(has_objects))) - set(val)), sorted(val)


@dataclass
class KeepBestRun:
    """Outcome of :func:`train_keep_best` (the model itself holds the best state)."""

    initial: dict[str, float]
    final: dict[str, float]
    steps: int
    best_step: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_keep_best(
    model: torch.nn.Module,
    loss_of_step: Callable[[], torch.Tensor],
    evaluate: Callable[[], dict[str, float]],
    key: str,
    *,
    minutes: float,
    lr: float,
    eval_seconds: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> KeepBestRun:
    """Train inside a wall-clock budget and keep the state with the best held-out ``key``.

    Parameters
    ----------
    model : torch.nn.Module
        Network in training mode; it ends with the best state loaded.
    loss_of_step : callable
        Draws a batch, runs the model and returns the loss of one step.
    evaluate : callable
        Held-out scores of the current state (higher ``key`` is better); it must leave the
        model in training mode.
    key : str
        Score that selects the kept state.
    minutes : float
        Wall-clock budget.
    lr : float
        AdamW learning rate at the start (cosine decay to 5 %).
    eval_seconds : float, optional
        Evaluate every this many seconds (default a tenth of the budget) and at the end.
    progress : callable, optional
        Called with the elapsed share of the budget (0..1) after each step.

    Returns
    -------
    KeepBestRun
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    initial = evaluate()
    best_score, best_step = initial[key], 0
    best_state = copy.deepcopy(model.state_dict())
    history = [{"step": 0.0, "seconds": 0.0, **initial}]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget = minutes * 60.0
    every = eval_seconds if eval_seconds is not None else budget / 10.0
    t0 = time.monotonic()
    next_eval = every
    step = 0
    while (elapsed := time.monotonic() - t0) < budget:
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        loss = loss_of_step()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        elapsed = time.monotonic() - t0
        if progress is not None:
            progress(min(elapsed / budget, 1.0))
        if elapsed >= next_eval or elapsed >= budget:
            next_eval = elapsed + every
            scores = evaluate()
            history.append({"step": float(step), "seconds": round(elapsed, 1), **scores})
            if scores[key] > best_score:
                best_score, best_step = scores[key], step
                best_state = copy.deepcopy(model.state_dict())
    train_seconds = time.monotonic() - t0
    model.load_state_dict(best_state)
    return KeepBestRun(
        initial=initial,
        final=evaluate(),
        steps=step,
        best_step=best_step,
        train_seconds=train_seconds,
        history=history,
    )
