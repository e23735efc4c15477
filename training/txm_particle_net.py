"""Train the TXM particle network on synthetic frames (issue 3, step 2: learned detector).

Run ``python -m training.train_txm_particle_net`` (at most 32 minutes plus about 2 minutes of data
on 1 CPU thread with the defaults; training stops at ``--steps`` or at the ``--minutes`` budget,
whichever comes first, so a slower machine takes fewer steps: the shipped weights stopped after
1958 of 3200 steps on a shared 2-core node). It writes ``models/weights/txm_particle_net.pt``
(float16, 0.6 MB) and ``.json`` next to it with the training configuration and the score on
held-out synthetic frames.

Data: a pool of synthetic frames (:func:`synthetic.txm_detection.detection_sample`
without perturbation; seeds ``seed * 10_000 + i``, all below the held-out seeds) drawn once.
Every training crop gets a fresh background perturbation
(:func:`synthetic.txm_detection.perturb_background`: slow gradients, bumps, an edge band,
haze, texture, noise), is normalised on its whole frame exactly as at inference
(:func:`models.txm_particle_net.normalize_frame`), then cropped, flipped, rotated by multiples of
90 degrees and given a random gain and offset. The loss is sigmoid cross-entropy plus soft Dice.

Score: whole held-out frames (seeds from ``HELD_OUT_SEED_START``, perturbed), probability >= 0.5,
connected components larger than ``--min-area`` px, matched to the true particles one to one at
IoU >= 0.5: object precision, recall and F1, mean IoU of the matched pairs and pixel IoU.
No real frame is used for training.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models.txm_particle_net import (
    DEFAULT_WEIGHTS,
    TxmParticleNet,
    float_state_dict,
    load_txm_particle_net,
    normalize_frame,
    predict_logits,
    save_txm_particle_net,
)
from synthetic.txm_detection import (
    HELD_OUT_SEED_START,
    DetectionSample,
    detection_sample,
    perturb_background,
)
from training import cli

logger = logging.getLogger(__name__)


def object_scores(
    predicted: np.ndarray, truth: np.ndarray, *, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Object-level detection scores of one labelled frame against its ground truth.

    Parameters
    ----------
    predicted, truth : numpy.ndarray
        int (H, W) label images, 0 background.
    iou_threshold : float
        A predicted and a true object match when their IoU reaches this (one to one: with a
        threshold >= 0.5 a true object has at most one such partner).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn`` counts, ``iou_sum`` (sum of matched IoUs), ``pixel_inter`` and
        ``pixel_union`` of the foregrounds; :func:`summarize_scores` turns sums into rates.
    """
    pred, n_pred = _compact(predicted)
    true, n_true = _compact(truth)
    both = (pred > 0) & (true > 0)
    pair = np.bincount(
        pred[both].astype(np.int64) * (n_true + 1) + true[both],
        minlength=(n_pred + 1) * (n_true + 1),
    ).reshape(n_pred + 1, n_true + 1)
    area_p = np.bincount(pred.ravel(), minlength=n_pred + 1)
    area_t = np.bincount(true.ravel(), minlength=n_true + 1)
    union = area_p[:, None] + area_t[None, :] - pair
    iou = np.where(union > 0, pair / np.maximum(union, 1), 0.0)[1:, 1:]
    matched = iou >= iou_threshold
    tp = int(matched.any(axis=1).sum())
    return {
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - int(matched.any(axis=0).sum()),
        "iou_sum": float(iou[matched].sum()),
        "pixel_inter": float(both.sum()),
        "pixel_union": float(((pred > 0) | (true > 0)).sum()),
    }


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 1..n (0 stays background) and n."""
    ids, inverse = np.unique(np.asarray(labels), return_inverse=True)
    if ids[0] != 0:
        return (inverse + 1).reshape(np.shape(labels)), int(ids.size)
    return inverse.reshape(np.shape(labels)), int(ids.size - 1)


def summarize_scores(per_frame: list[dict[str, float]]) -> dict[str, float]:
    """Precision, recall, F1, mean matched IoU and pixel IoU from :func:`object_scores` dicts."""
    tp = sum(s["tp"] for s in per_frame)
    fp = sum(s["fp"] for s in per_frame)
    fn = sum(s["fn"] for s in per_frame)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    union = sum(s["pixel_union"] for s in per_frame)
    return {
        "object_precision": precision,
        "object_recall": recall,
        "object_f1": f1,
        "matched_iou": sum(s["iou_sum"] for s in per_frame) / tp if tp else 0.0,
        "pixel_iou": sum(s["pixel_inter"] for s in per_frame) / union if union else 1.0,
        "true_objects": float(tp + fn),
    }


def net_labels(logits: np.ndarray, min_area: int) -> np.ndarray:
    """Connected components (holes filled) of ``logit >= 0`` larger than ``min_area`` px."""
    mask = ndimage.binary_fill_holes(logits >= 0.0)
    labels, n = ndimage.label(mask)
    if n == 0:
        return labels.astype(np.int32)
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def held_out_samples(n: int, size: int) -> list[DetectionSample]:
    """The held-out synthetic frames: seeds ``HELD_OUT_SEED_START + i``, perturbed."""
    return [detection_sample(HELD_OUT_SEED_START + i, size=size) for i in range(n)]


def evaluate(
    model: TxmParticleNet, samples: list[DetectionSample], min_area: int
) -> dict[str, float]:
    """Scores of the network (threshold 0.5, connected components) on whole frames."""
    was_training = model.training
    model.eval()
    per_frame = []
    for sample in samples:
        logits = predict_logits(model, normalize_frame(sample.od))[0]
        per_frame.append(object_scores(net_labels(logits, min_area), sample.labels))
    model.train(was_training)
    return summarize_scores(per_frame)


def wide_randomisation(od: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Beamline artefacts the synthetic scenes lack, each drawn with probability 1/2 (issue 12).

    Amplitudes are relative to the frame's particle contrast (99th percentile minus median):
    zone-plate-like ring systems centred outside the field (the flat field removes them only in
    part), an illumination gradient, low-count noise, a detector blur and dead or hot pixels.
    """
    od = od.astype(np.float64)
    h, w = od.shape
    contrast = float(np.percentile(od, 99) - np.median(od)) or 1.0
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    if rng.random() < 0.5:
        cy, cx = rng.uniform(-h, 2 * h), rng.uniform(-w, 2 * w)
        radius = np.hypot(rows - cy, cols - cx)
        period = rng.uniform(3.0, 14.0) * (1.0 + radius / max(h, w)) ** -0.5
        od += contrast * rng.uniform(0.1, 0.8) * np.cos(2 * np.pi * radius / period)
    if rng.random() < 0.5:
        slope = rng.normal(0.0, 1.0, 2) * contrast
        od += slope[0] * (rows / h - 0.5) + slope[1] * (cols / w - 0.5)
    if rng.random() < 0.5:
        od = ndimage.gaussian_filter(od, rng.uniform(0.3, 1.5))
    if rng.random() < 0.5:
        od += rng.normal(0.0, contrast * rng.uniform(0.05, 0.4), od.shape)
    if rng.random() < 0.5:
        n = int(rng.integers(1, 20))
        r, c = rng.integers(0, h, n), rng.integers(0, w, n)
        od[r, c] = np.where(rng.random(n) < 0.5, od.max() + 3 * contrast, od.min() - contrast)
    return od.astype(np.float32)


def training_batch(
    pool: list[DetectionSample],
    batch_size: int,
    tile: int,
    rng: np.random.Generator,
    *,
    wide: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturbed, normalised, cropped, flipped and rotated tiles with their particle masks.

    ``wide`` adds :func:`wide_randomisation` after the background perturbation.
    """
    images, masks = [], []
    for _ in range(batch_size):
        sample = pool[int(rng.integers(len(pool)))]
        particles = sample.labels > 0
        od = perturb_background(sample.od, particles, rng, strength=float(rng.uniform(0.3, 1.5)))
        if wide:
            od = wide_randomisation(od, rng)
        image = normalize_frame(od)
        h, w = image.shape
        r0, c0 = int(rng.integers(0, h - tile + 1)), int(rng.integers(0, w - tile + 1))
        image = image[r0 : r0 + tile, c0 : c0 + tile]
        mask = particles[r0 : r0 + tile, c0 : c0 + tile]
        turns = int(rng.integers(4))
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        gain = rng.uniform(0.7, 1.4)
        offset = rng.uniform(-0.2, 0.2)
        images.append(image * gain + offset)
        masks.append(mask)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images)[:, None], dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(np.stack(masks)[:, None], dtype=np.float32))
    return x, y


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy plus soft Dice."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1.0 - (2 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the training script."""
    parser = cli.trainer_parser(
        "Train the TXM particle network (models.txm_particle_net) on synthetic TXM frames "
        "with background augmentation; write the weights, a JSON sidecar with the training "
        "configuration and the held-out score.",
        prog="python -m training.train_txm_particle_net",
        out=DEFAULT_WEIGHTS,
        threads=1,
        minutes=32.0,
        batch=6,
        lr=3e-3,
        seed=11,
    )
    parser.add_argument(
        "--steps", type=int, default=3200, help="optimiser steps (fewer when --minutes runs out)"
    )
    parser.add_argument("--pool", type=int, default=600, help="synthetic frames in the pool")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic frames")
    cli.add_unet_options(parser, tile=192, base_channels=6)
    parser.add_argument("--held-out", type=int, default=24, help="held-out synthetic frames")
    parser.add_argument(
        "--min-area", type=int, default=40, help="smallest object (px) counted in the score"
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="wide domain randomisation: rings, gradients, low counts, blur, dead pixels",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars (log instead)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: build the pool, train, score on held-out frames, save weights."""
    args = build_parser().parse_args(argv)
    if args.seed * 10_000 + args.pool > HELD_OUT_SEED_START:
        raise SystemExit("--seed and --pool would reach the held-out seeds")
    rng = cli.start_training(args)
    t_start = time.monotonic()
    seeds = [args.seed * 10_000 + i for i in range(args.pool)]
    pool = [
        detection_sample(s, size=args.size, augment=False)
        for s in tqdm(seeds, desc="synthetic pool", unit="frame", disable=args.no_progress)
    ]
    held_out = held_out_samples(args.held_out, args.size)
    data_seconds = time.monotonic() - t_start
    logger.info(
        "pool of %d frames and %d held-out frames in %.0f s", len(pool), len(held_out), data_seconds
    )

    model = TxmParticleNet(base_channels=args.base_channels)
    if args.init is not None:
        checkpoint = torch.load(args.init, map_location="cpu", weights_only=True)
        model = TxmParticleNet(base_channels=int(checkpoint["base_channels"]))
        model.load_state_dict(float_state_dict(checkpoint))
    model.train()

    def loss_of_step() -> torch.Tensor:
        x, y = training_batch(pool, args.batch, args.tile, rng, wide=args.wide)
        return segmentation_loss(model(x), y)

    bar = tqdm(total=args.steps, desc="training", unit="step", disable=args.no_progress)
    with bar, logging_redirect_tqdm():
        run = cli.train_with_options(
            model, loss_of_step, args, max_steps=args.steps, progress=lambda _: bar.update()
        )
    if run.steps < args.steps:
        logger.info("time budget reached after %d steps", run.steps)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_txm_particle_net(model, args.out, {})
    scores = evaluate(
        load_txm_particle_net(args.out, device=torch.device("cpu")), held_out, args.min_area
    )
    logger.info("held-out scores: %s", scores)
    metadata = {
        **cli.run_metadata(args, run, data_seconds=data_seconds),
        "final_loss": round(run.final_loss, 4),
        "training_seeds": [seeds[0], seeds[-1]],
        "held_out": {
            "seeds": [HELD_OUT_SEED_START, HELD_OUT_SEED_START + args.held_out - 1],
            "size": args.size,
            "iou_threshold": 0.5,
            "min_area_px": args.min_area,
            **scores,
        },
        "normalization": "models.txm_particle_net.normalize_frame: (od - median) / (p99 - median)",
        "working_size_px": 256,
        "threshold": 0.5,
        "weights_dtype": "float16",
    }
    cli.save_trained(save_txm_particle_net, model, args.out, metadata)
    return 0
