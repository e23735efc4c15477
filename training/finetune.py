"""What fine-tuning a shipped network on a user's labelled 2-D slices shares across networks.

Used by ``beamwatch train cracks`` (:mod:`training.crack_finetune`) and ``beamwatch train
particles`` (:mod:`training.particle_finetune`):

- :func:`slice_stack`: a lone slice as the 2.5-D networks' input, normalised on its own levels
  exactly as ``cracks map`` and ``particles analyze`` normalise a one-slice volume, repeated as
  its own z - 1 / z + 1 neighbours;
- :func:`tile_boxes` and :func:`split_indices`: non-overlapping tiles and a held-out share of
  them, stratified by whether a tile holds labelled objects; :func:`plan_tiles` both, with
  the training crop that fits the tiles; :func:`check_pairs` the slices and their labels;
- :func:`finetune_within_budget`: training in the one loop
  (:func:`training.loop.train_within_budget`): the held-out score at the start and every
  ``eval_seconds``, the best state kept (the initial one included: a run that does not improve
  gives back the initial weights), as a :class:`FinetuneResult` (the kept network and its
  held-out scores); :func:`save_kept` writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from models.crack_unet import context_stacks, normalize_slices, reference_levels
from training.loop import TrainingRun, train_within_budget

Net = TypeVar("Net", bound=torch.nn.Module)


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
class FinetuneResult:
    """Outcome of fine-tuning a network on labelled slices (``train cracks|particles``).

    ``model`` holds the kept state (training mode, CPU); ``initial`` and ``final`` are the
    held-out tiles' scores of the starting and the kept weights, ``key`` the score that chose.
    """

    model: torch.nn.Module
    initial: dict[str, float]
    final: dict[str, float]
    key: str
    steps: int
    best_step: int
    train_seconds: float
    n_train_tiles: int
    n_val_tiles: int
    val_boxes: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def of_run(
        cls,
        model: torch.nn.Module,
        run: TrainingRun,
        *,
        key: str,
        n_train_tiles: int,
        val_boxes: list[tuple[int, int, int, int, int]],
    ) -> FinetuneResult:
        """The result of a :func:`training.loop.train_within_budget` run."""
        return cls(
            model=model,
            initial=run.initial,
            final=run.final,
            key=key,
            steps=run.steps,
            best_step=run.best_step,
            train_seconds=run.train_seconds,
            n_train_tiles=n_train_tiles,
            n_val_tiles=len(val_boxes),
            val_boxes=val_boxes,
            history=run.history,
        )


def check_pairs(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], what: str) -> None:
    """Same count, 2-D, same shapes (``ValueError`` naming the pair); ``what``: "mask",
    "label"."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} {what}s")
    for i, (grey, lab) in enumerate(zip(images, labels, strict=True)):
        if grey.ndim != 2 or grey.shape != lab.shape:
            raise ValueError(
                f"pair {i}: image shape {grey.shape} and {what} shape {lab.shape} must be the "
                "same 2-D shape"
            )


@dataclass
class TilePlan:
    """The tiles of the labelled slices (:func:`tile_boxes`), which are held out
    (:func:`split_indices`), and the training crop reduced to fit the smallest tile."""

    boxes: list[tuple[int, int, int, int, int]]
    train_idx: list[int]
    val_idx: list[int]
    crop: int


def plan_tiles(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    tile: int,
    val_fraction: float,
    seed: int,
    crop: int,
    multiple: int,
) -> TilePlan:
    """Cut the slices into tiles of about ``tile`` px and hold out ``val_fraction`` of them,
    stratified by whether a tile has labelled (non-zero) pixels.

    ``crop`` is reduced to the largest multiple of ``multiple`` that fits the smallest tile;
    tiles smaller than 32 px are refused (``ValueError``).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    boxes = tile_boxes([im.shape for im in images], tile)
    labelled = [bool(np.any(np.asarray(labels[i])[y0:y1, x0:x1])) for i, y0, y1, x0, x1 in boxes]
    train_idx, val_idx = split_indices(labelled, val_fraction, seed)
    smallest = min(min(y1 - y0, x1 - x0) for _, y0, y1, x0, x1 in boxes)
    if smallest < 32:
        raise ValueError(f"tiles must be at least 32 px, got {smallest}: use a larger --tile")
    return TilePlan(boxes, train_idx, val_idx, crop=min(crop, multiple * (smallest // multiple)))


def finetune_within_budget(
    model: torch.nn.Module,
    loss_of_step: Callable[[], torch.Tensor],
    evaluate: Callable[[], dict[str, float]],
    *,
    key: str,
    plan: TilePlan,
    minutes: float,
    lr: float,
    eval_seconds: float | None,
    progress: Callable[[float], None] | None,
) -> FinetuneResult:
    """Fine-tune ``model`` with keep-best on the held-out tiles' ``key``.

    Parameters
    ----------
    model : torch.nn.Module
        The starting network (training mode); it ends with the kept state.
    loss_of_step : callable
        Loss of one step on a batch of the training tiles.
    evaluate : callable
        Held-out tiles' scores of the current state (higher ``key`` is better).
    key : str
        The score that selects the kept state.
    plan : TilePlan
        The tiles and which are held out.
    minutes, lr, eval_seconds, progress
        As :func:`training.loop.train_within_budget`.

    Returns
    -------
    FinetuneResult
        The kept network, its scores and the held-out tiles' boxes.
    """
    run = train_within_budget(
        model,
        loss_of_step,
        evaluate=evaluate,
        key=key,
        minutes=minutes,
        lr=lr,
        eval_seconds=eval_seconds,
        progress=progress,
        log_every=0,
    )
    return FinetuneResult.of_run(
        model,
        run,
        key=key,
        n_train_tiles=len(plan.train_idx),
        val_boxes=[plan.boxes[i] for i in plan.val_idx],
    )


def save_kept(
    result: FinetuneResult,
    path: Path,
    metadata: dict[str, Any],
    network: type[Net],
    save: Callable[[Net, Path, dict[str, Any]], None],
) -> None:
    """Write the kept network of ``result`` with ``save`` (the one checkpoint format of its
    ``network`` class: constructor arguments inside), in evaluation mode."""
    model = result.model
    if not isinstance(model, network):
        raise TypeError(f"expected a {network.__name__}, got {type(model).__name__}")
    save(model.eval(), path, metadata)
