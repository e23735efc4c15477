"""Fine-tune the particle U-Net on a user's labelled 2-D slices (``beamwatch train particles``).

The batch sampling (crops, rotations, flips, contrast and noise), the loss, the targets and the
checkpoint format are those of :mod:`training.particle_unet` and
:mod:`models.particle_unet`; the slice input, the tiles, the held-out split and the keep-best
loop are those of ``train cracks`` (:mod:`training.finetune`). What is specific here:

- The labels are particle instances (0 = not particle; a particle's label covers its cracks and
  core voids). The targets are the particle foreground and the distance to each instance's
  boundary within the slice (:func:`models.particle_unet.instance_distance` of the slice): the
  network is taught that a crack or a core void inside a labelled particle is particle.
- Keep-best needs a score of the held-out tiles. By default it is the foreground IoU of the
  network; ``beamwatch train particles`` passes the instance F1 of the whole
  ``particles analyze`` instance step (:func:`pipelines.particles.instances.tile_instance_scores`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.particle_unet import (
    DISTANCE_SCALE_PX,
    SIZE_MULTIPLE,
    ParticleUNet,
    instance_distance,
    load_trainable_particle_unet,
    predict_maps,
    save_particle_unet,
)
from training.finetune import (
    FinetuneResult,
    check_pairs,
    finetune_within_budget,
    plan_tiles,
    save_kept,
    slice_stack,
    tile_boxes,
)
from training.particle_unet import VolumeSet, particle_loss, sample_batch

TileMaps = list[tuple[np.ndarray, np.ndarray]]
"""Per held-out tile: (1, h, w) foreground probability and distance (px)."""
Scorer = Callable[[TileMaps, list[np.ndarray]], dict[str, float]]
"""Held-out scores from the tiles' predicted maps and their (1, h, w) instance labels."""


def tile_set(stack: np.ndarray, labels: np.ndarray) -> VolumeSet:
    """A one-slice :class:`~training.particle_unet.VolumeSet` of a tile and its targets."""
    ids = np.asarray(labels)[np.newaxis]
    return VolumeSet(
        images=np.ascontiguousarray(stack[1][np.newaxis], dtype=np.float32),
        foreground=(ids > 0).astype(np.float32),
        distance=instance_distance(ids) / np.float32(DISTANCE_SCALE_PX),
    )


def cut_tiles(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], tile: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping tiles (about ``tile`` px) of the normalised stacks and their labels."""
    stacks = [slice_stack(image) for image in images]
    return [
        (stacks[i][:, y0:y1, x0:x1], np.asarray(labels[i])[y0:y1, x0:x1])
        for i, y0, y1, x0, x1 in tile_boxes([im.shape for im in images], tile)
    ]


def pixel_scores(maps: TileMaps, truths: list[np.ndarray]) -> dict[str, float]:
    """Foreground IoU (probability >= 0.5) pooled over the tiles; the default keep-best score."""
    inter = union = 0
    for (prob, _), truth in zip(maps, truths, strict=True):
        pred, true = prob >= 0.5, truth > 0
        inter += int((pred & true).sum())
        union += int((pred | true).sum())
    return {"foreground_iou": inter / union if union else 1.0}


def tile_maps(model: ParticleUNet, sets: Sequence[VolumeSet]) -> TileMaps:
    """The network's maps of each tile (evaluation mode, back to training mode after)."""
    model.eval()
    try:
        return [predict_maps(model, s.images) for s in sets]
    finally:
        model.train()


def finetune_particles(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    init: str | Path | None = None,
    minutes: float = 3.0,
    val_fraction: float = 0.25,
    tile: int = 128,
    crop: int = 96,
    batch: int = 4,
    lr: float = 3e-4,
    seed: int = 0,
    eval_seconds: float | None = None,
    progress: Callable[[float], None] | None = None,
    score: Scorer | None = None,
    key: str = "foreground_iou",
) -> FinetuneResult:
    """Fine-tune the particle U-Net on instance-labelled 2-D slices, keep-best on held-out tiles.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        2-D grey slices, any real dtype (particles bright).
    labels : sequence of numpy.ndarray
        2-D int instance labels of the same shapes, 0 = not particle.
    init : str or pathlib.Path, optional
        Starting weights; default the shipped ones.
    minutes : float
        Wall-clock training budget.
    val_fraction : float
        Share of the tiles held out (stratified: tiles with and without particles).
    tile : int
        Approximate tile size of the split (px).
    crop : int
        Training crop size (px; reduced to the smallest tile, a multiple of 8).
    batch, lr, seed
        Batch size, AdamW learning rate (cosine decay), random seed.
    eval_seconds : float, optional
        Score the held-out tiles every this many seconds (default a tenth of the budget).
    progress : callable, optional
        Called with the elapsed share of the budget (0..1) after each step.
    score : callable, optional
        Held-out scores from the tiles' maps and labels (default :func:`pixel_scores`).
    key : str
        The score of ``score`` that selects the kept state (higher is better).

    Returns
    -------
    FinetuneResult
        The best network (training mode, CPU) and the held-out scores.
    """
    check_pairs(images, labels, "label")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    plan = plan_tiles(
        images,
        labels,
        tile=tile,
        val_fraction=val_fraction,
        seed=seed,
        crop=crop,
        multiple=SIZE_MULTIPLE,
    )
    tiles = cut_tiles(images, labels, tile)
    train = [tile_set(*tiles[i]) for i in plan.train_idx]
    val = [tile_set(*tiles[i]) for i in plan.val_idx]
    truths = [np.asarray(tiles[i][1])[np.newaxis] for i in plan.val_idx]
    scorer = score if score is not None else pixel_scores

    model = load_trainable_particle_unet(init)

    def loss_of_step() -> torch.Tensor:
        image, fg, dist = sample_batch(train, batch, plan.crop, rng)
        return particle_loss(model(image), fg, dist)

    return finetune_within_budget(
        model,
        loss_of_step,
        lambda: scorer(tile_maps(model, val), truths),
        key=key,
        plan=plan,
        minutes=minutes,
        lr=lr,
        eval_seconds=eval_seconds,
        progress=progress,
    )


def save_finetuned(result: FinetuneResult, path: Path, metadata: dict[str, Any]) -> None:
    """Write the weights in the one checkpoint format (constructor arguments inside)."""
    save_kept(result, path, metadata, ParticleUNet, save_particle_unet)
