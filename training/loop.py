"""The one training loop: AdamW with cosine decay inside a wall-clock budget, and keep-best.

Used by every trainer (``python -m training.train_<net>``: crack and particle U-Nets, flaw
classifier, phase net, TXM particle detector) and by ``beamwatch train cracks|particles``
(:mod:`training.crack_finetune`, :mod:`training.particle_finetune`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """Outcome of :func:`train_within_budget` (the model itself holds the kept state).

    ``initial`` and ``final`` are the held-out scores before training and of the kept state
    (empty without an ``evaluate``); ``best_step`` is the step of the kept state (0 = the
    starting weights); ``final_loss`` the running training loss at the last step (NaN when
    no step was made).
    """

    initial: dict[str, float]
    final: dict[str, float]
    steps: int
    best_step: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    final_loss: float = math.nan


def cosine_lr(lr: float, share: float, floor: float) -> float:
    """Learning rate at ``share`` (0..1) of the budget: cosine from ``lr`` to ``floor * lr``."""
    share = min(max(share, 0.0), 1.0)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * share)))


def train_within_budget(
    model: torch.nn.Module,
    loss_of_step: Callable[[], torch.Tensor],
    *,
    minutes: float,
    lr: float,
    evaluate: Callable[[], dict[str, float]] | None = None,
    key: str | None = None,
    eval_seconds: float | None = None,
    eval_steps: int | None = None,
    max_steps: int | None = None,
    lr_floor: float = 0.05,
    weight_decay: float = 1e-4,
    progress: Callable[[float], None] | None = None,
    log_every: int = 100,
) -> TrainingRun:
    """Train inside a wall-clock budget; with ``evaluate``, keep the state with the best ``key``.

    Parameters
    ----------
    model : torch.nn.Module
        Network in training mode; it ends with the kept state loaded (the best held-out
        ``key`` with ``evaluate``, else the last).
    loss_of_step : callable
        Draws a batch, runs the model and returns the loss of one step.
    evaluate : callable, optional
        Held-out scores of the current state (higher ``key`` is better); it must leave the
        model in training mode. Called before training, on the schedule below, at the end of
        the budget, and once more on the kept state.
    key : str, optional
        Score that selects the kept state; required with ``evaluate``.
    minutes : float
        Wall-clock budget (> 0; ``math.inf`` with ``max_steps``: no time limit).
    lr : float
        AdamW learning rate at the start; cosine decay to ``lr_floor * lr`` at the end.
    eval_seconds : float, optional
        Evaluate every this many seconds (default a tenth of the budget unless ``eval_steps``).
    eval_steps : int, optional
        Evaluate every this many steps instead.
    max_steps : int, optional
        Stop after this many steps if the time budget lasts that long; the learning rate then
        follows the larger of the spent shares of the time and of the steps.
    lr_floor : float
        Share of ``lr`` left at the end of the budget.
    weight_decay : float
        AdamW weight decay.
    progress : callable, optional
        Called with the elapsed share of the budget (0..1) after each step.
    log_every : int
        Log the running loss every this many steps (0: never).

    Returns
    -------
    TrainingRun
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    if evaluate is not None and key is None:
        raise ValueError("key is required with evaluate")
    if eval_steps is not None and eval_steps <= 0:
        raise ValueError(f"eval_steps must be > 0, got {eval_steps}")
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max_steps must be > 0, got {max_steps}")
    if max_steps is None and not math.isfinite(minutes):
        raise ValueError("an infinite budget needs max_steps")
    initial = evaluate() if evaluate is not None else {}
    best_score = initial[key] if evaluate is not None and key is not None else math.nan
    best_step = 0
    best_state = copy.deepcopy(model.state_dict()) if evaluate is not None else None
    history = [{"step": 0.0, "seconds": 0.0, **initial}] if evaluate is not None else []
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    budget = minutes * 60.0
    every = eval_seconds if eval_seconds is not None else budget / 10.0
    t0 = time.monotonic()
    next_eval = every
    step, running = 0, math.nan
    while (elapsed := time.monotonic() - t0) < budget and step < (max_steps or math.inf):
        step_lr = cosine_lr(lr, _spent(elapsed, budget, step, max_steps), lr_floor)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        loss = loss_of_step()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        running = value if step == 0 else 0.98 * running + 0.02 * value
        step += 1
        elapsed = time.monotonic() - t0
        if log_every and step % log_every == 0:
            logger.info("step %d  %.0fs  lr %.2e  loss %.4f", step, elapsed, step_lr, running)
        if progress is not None:
            progress(_spent(elapsed, budget, step, max_steps))
        if evaluate is None or key is None:
            continue
        due = step % eval_steps == 0 if eval_steps is not None else elapsed >= next_eval
        if due or elapsed >= budget or step == max_steps:
            next_eval = elapsed + every
            scores = evaluate()
            history.append({"step": float(step), "seconds": round(elapsed, 1), **scores})
            logger.info("step %d held-out %s", step, scores)
            if scores[key] > best_score or math.isnan(best_score):
                best_score, best_step = scores[key], step
                best_state = copy.deepcopy(model.state_dict())
    train_seconds = time.monotonic() - t0
    if best_state is None:
        return TrainingRun({}, {}, step, step, train_seconds, history, running)
    model.load_state_dict(best_state)
    return TrainingRun(
        initial=initial,
        final=evaluate() if evaluate is not None else {},
        steps=step,
        best_step=best_step,
        train_seconds=train_seconds,
        history=history,
        final_loss=running,
    )


def _spent(elapsed: float, budget: float, step: int, max_steps: int | None) -> float:
    """Spent share (0..1) of the budget: of the time, or of the steps when that is larger."""
    share = elapsed / budget
    if max_steps is not None:
        share = max(share, step / max_steps)
    return min(share, 1.0)
