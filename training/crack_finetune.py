"""Fine-tune the crack U-Net on a user's labelled 2-D slices (``beamwatch train cracks``).

The training step, augmentation, loss, evaluation and checkpoint format are those of
:mod:`training.crack_unet` (imported, not copied); the slice input, the tiles, the held-out
split and the keep-best loop are shared with ``train particles`` (:mod:`training.finetune`). What
is specific here:

- Each slice is normalised on its own with :func:`models.crack_unet.reference_levels`, exactly
  as ``cracks map`` normalises a one-slice volume, and becomes a context stack with the slice
  repeated as its own neighbours (:func:`models.crack_unet.context_stacks` on a (1, Y, X)
  volume: the first and last slice stand in for their missing neighbours).
- The slices are cut into tiles; a share of the tiles (``val_fraction``, stratified: tiles
  with and without labelled cracks) is held out. The
  initial and every evaluated state are scored on the held-out tiles (crack IoU / Dice at
  threshold 0.5) and the best one is kept (the initial weights included: a run that does not
  improve returns the initial weights and says so).
- Training stops at a wall-clock budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import read_checkpoint
from models.crack_unet import (
    CONTEXT_SLICES,
    DEFAULT_WEIGHTS,
    CrackUNet,
    crack_unet_args,
    save_crack_unet,
)
from training.crack_unet import (
    SliceSet,
    augment_batch,
    crack_loss,
    crack_pixels,
    evaluate,
    inflate_input,
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

THRESHOLD = 0.5


def load_trainable(path: str | Path | None) -> CrackUNet:
    """The crack U-Net of a checkpoint, batch normalisation kept, in training mode, on the CPU.

    Single-slice (1-channel) weights are inflated to the 2.5-D network
    (:func:`training.crack_unet.inflate_input`).
    """
    checkpoint, _ = read_checkpoint(
        path, DEFAULT_WEIGHTS, "crack U-Net", device=torch.device("cpu"), map_to_cpu=True
    )
    loaded = CrackUNet(**crack_unet_args(checkpoint))
    loaded.load_state_dict(checkpoint["state_dict"])
    if loaded.in_channels == CONTEXT_SLICES:
        model = loaded
    else:
        model = inflate_input(CrackUNet(loaded.base_channels), loaded)
    return model.train()


def cut_tiles(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], tile: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping tiles (about ``tile`` px) of the normalised stacks and their masks."""
    stacks = [slice_stack(image) for image in images]
    return [
        (stacks[i][:, y0:y1, x0:x1], masks[i][y0:y1, x0:x1] != 0)
        for i, y0, y1, x0, x1 in tile_boxes([im.shape for im in images], tile)
    ]


def tile_set(tiles: Sequence[tuple[np.ndarray, np.ndarray]]) -> SliceSet:
    """Tiles padded to a common size (padding not valid) as a :class:`SliceSet`."""
    h = max(t[0].shape[1] for t in tiles)
    w = max(t[0].shape[2] for t in tiles)
    n = len(tiles)
    images = np.zeros((n, CONTEXT_SLICES, h, w), dtype=np.float32)
    labels = np.zeros((n, h, w), dtype=np.float32)
    valid = np.zeros((n, h, w), dtype=np.float32)
    for i, (stack, mask) in enumerate(tiles):
        _, th, tw = stack.shape
        images[i, :, :th, :tw] = stack
        labels[i, :th, :tw] = mask
        valid[i, :th, :tw] = 1.0
    return SliceSet(images=images, labels=labels, valid=valid, gaps=np.zeros_like(labels))


def finetune_cracks(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
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
) -> FinetuneResult:
    """Fine-tune the crack U-Net on labelled 2-D slices with keep-best on held-out tiles.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        2-D grey slices, any real dtype.
    masks : sequence of numpy.ndarray
        2-D masks of the same shapes; non-zero = crack.
    init : str or pathlib.Path, optional
        Starting weights; default the shipped ones.
    minutes : float
        Wall-clock training budget.
    val_fraction : float
        Share of the tiles held out for validation and keep-best.
    tile : int
        Approximate tile size of the train/validation split (px).
    crop : int
        Training crop size (px, a multiple of 16; at most the smallest tile).
    batch, lr, seed
        Batch size, AdamW learning rate (cosine decay), random seed.
    eval_seconds : float, optional
        Score the held-out tiles every this many seconds (default a tenth of the budget).
    progress : callable, optional
        Called with the elapsed share of the budget (0..1) after each step.

    Returns
    -------
    FinetuneResult
        The best network (train mode, CPU) and the held-out scores.
    """
    check_pairs(images, masks, "mask")
    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    if crop % 16:
        raise ValueError(f"crop must be a multiple of 16, got {crop}")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # the crops' centres must fit in the tiles
    plan = plan_tiles(
        images, masks, tile=tile, val_fraction=val_fraction, seed=seed, crop=crop, multiple=16
    )
    tiles = cut_tiles(images, masks, tile)
    train = tile_set([tiles[i] for i in plan.train_idx])
    val = tile_set([tiles[i] for i in plan.val_idx])
    cracks = crack_pixels(train)

    model = load_trainable(init)
    thresholds = [THRESHOLD]

    def loss_of_step() -> torch.Tensor:
        image, label, valid, gap = augment_batch(
            train, batch, plan.crop, rng, cracks=cracks, crack_share=0.5 if len(cracks) else 0.0
        )
        return crack_loss(model(image), label, valid, gap)

    key = f"iou@{THRESHOLD:.2f}"
    return finetune_within_budget(
        model,
        loss_of_step,
        lambda: evaluate(model, val, thresholds),
        key=key,
        plan=plan,
        minutes=minutes,
        lr=lr,
        eval_seconds=eval_seconds,
        progress=progress,
    )


def save_finetuned(result: FinetuneResult, path: Path, metadata: dict[str, Any]) -> None:
    """Write the weights in the one checkpoint format (constructor arguments inside)."""
    save_kept(result, path, metadata, CrackUNet, save_crack_unet)
