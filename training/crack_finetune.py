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
- Optionally (``replay_volumes``) a share of the steps trains on synthetic slices drawn with the
  shipped weights' training recipe (:func:`replay_set`), so that the network does not forget
  what it knew while it adapts to the user's slices (rehearsal). Keep-best still scores the
  user's held-out tiles only.
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
    gap_pixels,
    inflate_input,
    make_slice_set,
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
#: the shipped weights' training recipe (README "Fringes of both signs, a longer run"), used for
#: the replayed synthetic slices: volume shape, crack-free last volume, gap weight
REPLAY_SHAPE = (12, 192, 192)
REPLAY_GAP_WEIGHT = 4.0


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


def replay_set(volumes: int, seed: int) -> SliceSet:
    """Synthetic reconstructed slices drawn as the shipped crack weights were trained on.

    ``volumes`` volumes of :data:`REPLAY_SHAPE` (the last one crack-free) by
    :func:`training.crack_unet.make_slice_set` with that run's options: 60 % with split,
    hollow-core and fragmented particles, 40 % 8-bit renders (30 % of those JPEG), particles 18
    to 70 px, phase fringes of either sign or none, outline bays and debris, the project's own
    FBP, 20 % missing-wedge scans. About 2 s per volume on one core.
    """
    if volumes < 1:
        raise ValueError(f"volumes must be >= 1, got {volumes}")
    rng = np.random.default_rng(seed)
    sets = []
    for i in range(volumes):
        last = i == volumes - 1
        damaged = not last and rng.random() < 0.6
        sets.append(
            make_slice_set(
                REPLAY_SHAPE,
                seed=seed * 100 + i,
                rng=rng,
                crack_density=0.0 if last else float(rng.uniform(0.4, 1.6)),
                damage_share=float(rng.uniform(0.3, 0.8)) if damaged else 0.0,
                quantize=bool(rng.random() < 0.4),
                diameter_px=(18.0, 70.0),
                recon_method="fbp",
                negative_fringe_share=0.4,
                no_fringe_share=0.1,
                outline_share=0.8,
                jpeg_share=0.3,
                wedge_share=0.2,
            )
        )
    return SliceSet.concatenate(sets)


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
    replay_volumes: int = 0,
    replay_share: float = 0.5,
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
    replay_volumes : int
        0: train on the user's tiles only. Otherwise a share ``replay_share`` of the steps
        trains on synthetic slices of this many volumes (:func:`replay_set`, drawn before the
        budget starts), so that the network keeps what it knew.
    replay_share : float
        Share of the steps on the replayed synthetic slices (0 < share < 1).

    Returns
    -------
    FinetuneResult
        The best network (train mode, CPU) and the held-out scores.
    """
    check_pairs(images, masks, "mask")
    if replay_volumes < 0:
        raise ValueError(f"replay_volumes must be >= 0, got {replay_volumes}")
    if replay_volumes and not 0.0 < replay_share < 1.0:
        raise ValueError(f"replay_share must be between 0 and 1, got {replay_share}")
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
    replay = replay_set(replay_volumes, seed) if replay_volumes else None
    replay_cracks = crack_pixels(replay) if replay is not None else None
    replay_gaps = gap_pixels(replay) if replay is not None else None

    model = load_trainable(init)
    thresholds = [THRESHOLD]

    def loss_of_step() -> torch.Tensor:
        if replay is not None and rng.random() < replay_share:
            image, label, valid, gap = augment_batch(
                replay,
                batch,
                plan.crop,
                rng,
                cracks=replay_cracks,
                crack_share=0.5,
                gaps=replay_gaps,
                gap_share=0.3,
            )
            return crack_loss(model(image), label, valid, gap, REPLAY_GAP_WEIGHT)
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
