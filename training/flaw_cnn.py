"""Train the flaw (crack) slice classifier on particle slices of reconstructed synthetic cathodes.

Run ``python -m training.train_flaw_cnn`` (about 8 minutes on one CPU thread). It writes
``models/weights/flaw_cnn.pt`` and ``models/weights/flaw_cnn.json`` (training config, and the
slice and particle accuracy and ROC AUC on held-out volumes).

Data: synthetic cathode volumes with cracks are scanned and reconstructed
(``synthetic.reconstructed``). Each particle is sampled as at inference time
(:func:`models.flaw_cnn.slice_positions`: 10 slices over the central 80 % of its height), each
slice masked with the particle's mask (randomly eroded or dilated by one pixel, as a predicted
mask may be) and resized to 128 x 128 (:func:`models.flaw_cnn.prepare_slice`). A slice is
flawed when the particle's crack pixels in it are at least ``max(4, 1 %)`` of its area and
unflawed when there are none; slices in between are left out. Augmentations follow the paper:
rotation, width/height shift, zoom and orthogonal flips (plus small contrast changes and noise).
The checkpoint with the best validation accuracy is kept (early stopping in the paper).
A particle is flawed in the ground truth when cracks make up at least 0.5 % of its voxels and
unflawed when it has none; particles in between are not scored. Particles reaching outside the
reconstruction circle are left out (the reconstruction is 0 there).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from models.flaw_cnn import (
    DEFAULT_WEIGHTS,
    INPUT_SIZE,
    MIN_FLAWED_SLICES,
    FlawCNN,
    predict_flaw_scores,
    prepare_slice,
    roc_auc,
    save_flaw_cnn,
    slice_positions,
)
from synthetic.cathode import CRACK
from synthetic.reconstructed import make_reconstructed_cathode
from training import cli

logger = logging.getLogger(__name__)
VALIDATION_SEEDS = (870_001,)
TEST_SEEDS = (880_001, 880_002)
MIN_PARTICLE_VOXELS = 300
FLAWED_PARTICLE_FRACTION = 0.005
EVAL_EVERY = 200  # steps between the validation scores (keep-best)


@dataclass
class SliceSet:
    """Prepared slices with labels (1 flawed, 0 unflawed, -1 ambiguous) and particle keys."""

    images: np.ndarray  # float16 (N, 128, 128)
    labels: np.ndarray  # int8 (N,)
    particle: np.ndarray  # int64 (N,) particle key, unique within the set
    particle_label: np.ndarray  # int8 (N,) particle truth: 1, 0 or -1 (ambiguous)


def slice_label(crack_pixels: int, area: int) -> int:
    """1 flawed, 0 unflawed, -1 ambiguous (a few crack pixels)."""
    if crack_pixels == 0:
        return 0
    return 1 if crack_pixels >= max(4, 0.01 * area) else -1


def particle_slices(
    shape: tuple[int, int, int],
    seed: int,
    crack_density: float,
    rng: np.random.Generator | None,
    key_offset: int,
) -> SliceSet:
    """Sampled slices of every particle of one reconstructed volume."""
    sample = make_reconstructed_cathode(shape, seed=seed, crack_density=crack_density)
    return sample_particles(
        sample.normalized, sample.truth.particle_ids, sample.truth.phase == CRACK, key_offset, rng
    )


def sample_particles(
    normalized: np.ndarray,
    ids: np.ndarray,
    crack: np.ndarray,
    key_offset: int,
    rng: np.random.Generator | None = None,
    dtype: type[np.floating] = np.float16,
) -> SliceSet:
    """Slices of every particle of a labelled volume, sampled as at inference time.

    Parameters
    ----------
    normalized : numpy.ndarray
        ``(Z, Y, X)`` reconstruction in the network's input range.
    ids : numpy.ndarray
        True particle labels of the same shape (0 outside particles).
    crack : numpy.ndarray
        True crack mask of the same shape.
    key_offset : int
        Added to the particle labels to make keys unique across volumes.
    rng : numpy.random.Generator, optional
        When given, half the slice masks are eroded or dilated by one pixel (a predicted mask's
        error); the truth labels always use the true mask.
    dtype : numpy dtype
        Of the returned images.

    Particles smaller than :data:`MIN_PARTICLE_VOXELS` and particles reaching outside the
    reconstruction circle (where the reconstruction is 0, so they are not seen) are left out.
    """
    n = ids.shape[2]
    yy, xx = np.mgrid[:n, :n]
    unseen = (yy - n // 2) ** 2 + (xx - n // 2) ** 2 > (n // 2 - 2) ** 2
    images, labels, keys, plabels = [], [], [], []
    for k, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is None:
            continue
        inside = ids[box] == k
        n_voxels = int(inside.sum())
        if n_voxels < MIN_PARTICLE_VOXELS or (inside & unseen[box[1:]]).any():
            continue
        n_crack = int((crack[box] & inside).sum())
        fraction = n_crack / n_voxels
        plabel = 0 if n_crack == 0 else (1 if fraction >= FLAWED_PARTICLE_FRACTION else -1)
        for z in slice_positions(box[0].start, box[0].stop - 1):
            truth_mask = ids[z] == k
            mask = truth_mask
            if rng is not None and rng.random() < 0.5:
                op = ndimage.binary_erosion if rng.random() < 0.5 else ndimage.binary_dilation
                perturbed = op(mask)
                mask = perturbed if perturbed.any() else mask
            images.append(prepare_slice(normalized[z], mask).astype(dtype))
            labels.append(slice_label(int((crack[z] & truth_mask).sum()), int(truth_mask.sum())))
            keys.append(key_offset + k)
            plabels.append(plabel)
    return SliceSet(
        images=np.stack(images) if images else np.zeros((0, INPUT_SIZE, INPUT_SIZE), dtype),
        labels=np.asarray(labels, dtype=np.int8),
        particle=np.asarray(keys, dtype=np.int64),
        particle_label=np.asarray(plabels, dtype=np.int8),
    )


def concat(sets: list[SliceSet]) -> SliceSet:
    """Concatenate slice sets."""
    return SliceSet(
        images=np.concatenate([s.images for s in sets]),
        labels=np.concatenate([s.labels for s in sets]),
        particle=np.concatenate([s.particle for s in sets]),
        particle_label=np.concatenate([s.particle_label for s in sets]),
    )


def augment(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Rotation, shift, zoom and flips (the paper's augmentations), contrast and noise."""
    b = images.shape[0]
    angle = torch.from_numpy(rng.uniform(0, 2 * np.pi, b)).float()
    zoom = torch.from_numpy(rng.uniform(0.85, 1.15, b)).float()
    flip = torch.from_numpy(rng.choice([-1.0, 1.0], b)).float()
    shift = torch.from_numpy(rng.uniform(-0.1, 0.1, (b, 2))).float()
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / zoom * flip
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom * flip
    theta[:, 1, 1] = torch.cos(angle) / zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, [b, 1, INPUT_SIZE, INPUT_SIZE], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = (out != 0).float()
    gain = torch.from_numpy(rng.uniform(0.85, 1.2, (b, 1, 1, 1))).float()
    offset = torch.from_numpy(rng.uniform(-0.08, 0.08, (b, 1, 1, 1))).float()
    noise = torch.from_numpy(rng.normal(0, 0.03, out.shape).astype(np.float32))
    return (out * gain + offset + noise) * inside


def scores(model: FlawCNN, data: SliceSet) -> dict[str, float]:
    """Slice and particle accuracy and ROC AUC; particles use the 4-of-10 rule."""
    model.eval()
    prob = predict_flaw_scores(model, data.images.astype(np.float32))
    model.train()
    known = data.labels >= 0
    y = data.labels[known] == 1
    result = {
        "slice_accuracy": float(((prob[known] >= 0.5) == y).mean()),
        "slice_auc": roc_auc(prob[known], y),
        "n_slices": int(known.sum()),
    }
    keys = np.unique(data.particle)
    n_flawed = np.array([(prob[data.particle == k] >= 0.5).sum() for k in keys])
    mean_score = np.array([prob[data.particle == k].mean() for k in keys])
    truth = np.array([data.particle_label[data.particle == k][0] for k in keys])
    scored = truth >= 0
    result.update(
        {
            "particle_accuracy": float(
                ((n_flawed[scored] >= MIN_FLAWED_SLICES) == (truth[scored] == 1)).mean()
            ),
            "particle_auc": roc_auc(mean_score[scored], truth[scored] == 1),
            "n_particles": int(scored.sum()),
            "n_flawed_particles": int((truth == 1).sum()),
            "n_ambiguous_particles": int((~scored).sum()),
        }
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: build slices, train, keep the best validation checkpoint, test, save."""
    parser = cli.trainer_parser(
        __doc__.splitlines()[0],
        out=DEFAULT_WEIGHTS,
        threads=1,
        minutes=7.0,
        batch=16,
        lr=2e-3,
        seed=11,
    )
    cli.add_volume_options(parser, volumes=10, size=128, depth=48)
    cli.add_keep_best_option(parser, default=EVAL_EVERY, scored="the validation volume")
    args = parser.parse_args(argv)
    rng = cli.start_training(args)
    t_start = time.monotonic()
    shape = (args.depth, args.size, args.size)
    train_sets = []
    for i in range(args.volumes):
        density = float(rng.uniform(0.3, 2.0))
        train_sets.append(particle_slices(shape, args.seed * 1000 + i, density, rng, i * 10_000))
        logger.info("volume %d/%d: %d slices", i + 1, args.volumes, len(train_sets[-1].labels))
    train = concat(train_sets)
    known = train.labels >= 0
    train = SliceSet(
        train.images[known], train.labels[known], train.particle[known], train.particle_label[known]
    )
    validation = concat(
        [particle_slices(shape, s, 1.0, None, i * 10_000) for i, s in enumerate(VALIDATION_SEEDS)]
    )
    test = concat(
        [particle_slices(shape, s, 1.0, None, i * 10_000) for i, s in enumerate(TEST_SEEDS)]
    )
    data_seconds = time.monotonic() - t_start
    logger.info("%d training slices, %.1f %% flawed", len(train.labels), 100 * train.labels.mean())

    model = FlawCNN()
    labels_t = torch.from_numpy(train.labels.astype(np.float32))

    def loss_of_step() -> torch.Tensor:
        idx = rng.integers(len(train.labels), size=args.batch)
        images = torch.from_numpy(train.images[idx].astype(np.float32)).unsqueeze(1)
        return F.binary_cross_entropy_with_logits(model(augment(images, rng)), labels_t[idx])

    run = cli.train_with_options(
        model,
        loss_of_step,
        args,
        evaluate=lambda: scores(model, validation),
        key="slice_accuracy",
        log_every=EVAL_EVERY,
    )

    test_scores = scores(model, test)
    logger.info("held-out test scores: %s", test_scores)
    metadata = {
        **cli.run_metadata(args, run, data_seconds=data_seconds, key="validation slice_accuracy"),
        "n_training_slices": int(len(train.labels)),
        "validation": {"seeds": list(VALIDATION_SEEDS), **(run.final or scores(model, validation))},
        "held_out": {"seeds": list(TEST_SEEDS), "shape": list(shape), **test_scores},
        "rule": f"particle flawed when >= {MIN_FLAWED_SLICES} of 10 slices score >= 0.5",
    }
    cli.save_trained(save_flaw_cnn, model, args.out, metadata)
    return 0
