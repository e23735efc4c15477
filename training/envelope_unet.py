"""Train the particle-envelope U-Net (each particle's undamaged shape, cracks and core inside).

Run ``python -m training.train_envelope_unet`` (``--help`` for the options). It starts from
the shipped particle U-Net (``models/weights/particle_unet.pt``: same architecture) and writes
``models/weights/envelope_unet.pt`` and ``.json`` (config, held-out scores, history).

Training data come from the training generators only (:mod:`synthetic.cathode`,
:mod:`synthetic.damage`, :mod:`synthetic.reconstructed`, :mod:`synthetic.scan`), never from
``benchmarks/holdout_family.py`` or the real crops. Each volume is drawn either from the wide
randomisation of the crack trainer (:func:`training.crack_unet.wide_volume` and
:func:`training.crack_unet.wide_scan`: particles 12-120 px, packing, gaps, binder texture,
fringes of either sign, sparse-angle / missing-wedge scans, 8-bit and JPEG) or from the
standard reconstructed cathode (:func:`synthetic.reconstructed.make_reconstructed_cathode`),
and a share of its particles gets through-cracks, hollow cores, fragmentation, surface cracks or
void clusters (:func:`synthetic.damage.add_damage`) up to ``--damage-width-max`` px wide.

Targets: the envelope (:func:`models.envelope_unet.envelope_target`: the particle ids, which
keep their cracks and cores, with the contacts between particles cut) and, as an auxiliary
output, the particle U-Net's boundary distance. Crack and core voxels inside particles (hard
positives) and matrix pixels between touching particles (hard negatives) count
``--hard-weight`` times in the cross-entropy.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models.crack_unet import normalize_slices, reference_levels
from models.envelope_unet import (
    DEFAULT_WEIGHTS,
    EnvelopeUNet,
    envelope_target,
    load_trainable_envelope_unet,
    predict_envelope,
    save_envelope_unet,
)
from models.particle_unet import DEFAULT_WEIGHTS as PARTICLE_WEIGHTS
from models.particle_unet import DISTANCE_SCALE_PX, context_stack, instance_distance
from synthetic.cathode import CathodeVolume
from synthetic.damage import WIDE_DAMAGE, add_damage
from synthetic.reconstructed import make_reconstructed_cathode
from synthetic.scan import quantize_8bit
from training.crack_unet import touching_gaps, wide_scan, wide_volume
from training.loop import train_within_budget

logger = logging.getLogger(__name__)
HELD_OUT_SEEDS = (880_001, 880_002)


@dataclass
class EnvelopeSet:
    """Normalised volume with its envelope, distance and weight targets."""

    images: np.ndarray  # float32 (Z, Y, X)
    envelope: np.ndarray  # float32 (Z, Y, X)
    distance: np.ndarray  # float32 (Z, Y, X), in units of DISTANCE_SCALE_PX
    weight: np.ndarray  # float32 (Z, Y, X): cross-entropy weight
    cracks: np.ndarray  # bool (Z, Y, X): crack/core voxels inside particles
    gaps: np.ndarray  # bool (Z, Y, X): matrix between touching particles


def _targets(truth: CathodeVolume, normalized: np.ndarray, hard_weight: float) -> EnvelopeSet:
    ids = truth.particle_ids
    cracks = truth.crack_mask & (ids > 0)
    gaps = touching_gaps(ids) & (ids == 0)
    weight = np.ones(ids.shape, dtype=np.float32)
    weight[cracks | gaps] = hard_weight
    return EnvelopeSet(
        images=normalized.astype(np.float32),
        envelope=envelope_target(ids).astype(np.float32),
        distance=instance_distance(ids) / np.float32(DISTANCE_SCALE_PX),
        weight=weight,
        cracks=cracks,
        gaps=gaps,
    )


def make_envelope_set(
    shape: tuple[int, int, int],
    seed: int,
    *,
    wide: bool,
    damage_share: float,
    damage_width_px: tuple[float, float],
    diameter_px: tuple[float, float],
    quantize: bool,
    hard_weight: float = 4.0,
) -> EnvelopeSet:
    """One reconstructed training volume and its targets.

    ``wide`` draws it with the crack trainer's wide randomisation, else with the standard
    reconstructed cathode; ``damage_share`` of its particles get one of the five kinds of
    damage of :data:`synthetic.damage.WIDE_DAMAGE`.
    """
    rng = np.random.default_rng(seed)
    density = float(rng.uniform(0.0, 2.0))
    if wide:
        truth = wide_volume(shape, seed, rng, density, damage_share=0.0, diameter_px=diameter_px)
        if damage_share > 0:
            truth = add_damage(
                truth,
                rng,
                share=damage_share,
                width_px=damage_width_px,
                kinds=WIDE_DAMAGE,
                core_share=(0.35, 0.8),
            )
        recon = wide_scan(truth.attenuation, seed, rng, quantize)
    else:
        sample = make_reconstructed_cathode(
            shape,
            seed=seed,
            crack_density=density,
            diameter_px=(diameter_px[0], min(diameter_px[1], 60.0)),
            damage_share=damage_share,
            damage_width_px=damage_width_px,
            damage_kinds=WIDE_DAMAGE,
        )
        truth, recon = sample.truth, sample.recon
        if quantize:
            recon = quantize_8bit(recon, rng)
    low, high = reference_levels(recon)
    return _targets(truth, normalize_slices(recon, low, high), hard_weight)


def sample_batch(
    sets: list[EnvelopeSet], batch_size: int, tile: int, rng: np.random.Generator
) -> tuple[torch.Tensor, ...]:
    """Random crops with rotations, flips, a reversed slice order, contrast changes, noise."""
    out: list[list[np.ndarray]] = [[], [], [], []]
    for _ in range(batch_size):
        data = sets[int(rng.integers(len(sets)))]
        depth, height, width = data.images.shape
        z = int(rng.integers(depth))
        y = int(rng.integers(0, height - tile + 1))
        x = int(rng.integers(0, width - tile + 1))
        window = (slice(y, y + tile), slice(x, x + tile))
        img = context_stack(data.images, z)[(slice(None), *window)]
        arrays = [img] + [a[z][window] for a in (data.envelope, data.distance, data.weight)]
        if rng.random() < 0.5:
            arrays[0] = arrays[0][::-1]
        k = int(rng.integers(4))
        arrays = [np.rot90(a, k, axes=(-2, -1)) for a in arrays]
        if rng.random() < 0.5:
            arrays = [a[..., ::-1] for a in arrays]
        for dest, a in zip(out, arrays, strict=True):
            dest.append(np.ascontiguousarray(a))
    image = torch.from_numpy(np.stack(out[0]))
    gain = torch.from_numpy(rng.uniform(0.8, 1.25, (batch_size, 1, 1, 1))).float()
    offset = torch.from_numpy(rng.uniform(-0.1, 0.1, (batch_size, 1, 1, 1))).float()
    sigma = torch.from_numpy(rng.uniform(0.0, 0.06, (batch_size, 1, 1, 1))).float()
    noise = torch.from_numpy(rng.standard_normal(image.shape).astype(np.float32))
    image = image * gain + offset + sigma * noise
    env, dist, weight = (torch.from_numpy(np.stack(a))[:, None] for a in out[1:])
    return image, env, dist, weight


def envelope_loss(
    out: torch.Tensor, env: torch.Tensor, dist: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Weighted envelope cross-entropy plus the auxiliary smooth-L1 distance regression."""
    bce = F.binary_cross_entropy_with_logits(out[:, 0:1], env, weight=weight)
    reg = F.smooth_l1_loss(out[:, 1:2], dist, beta=0.25)
    return bce + reg


def evaluate(model: EnvelopeUNet, held_out: list[EnvelopeSet]) -> dict[str, float]:
    """Envelope IoU, share of the crack/core voxels inside the predicted envelope and share of
    the gaps between touching particles outside it, over the held-out volumes; ``score`` is
    their mean."""
    model.eval()
    inter = union = cracks_in = cracks = gaps_out = gaps = 0.0
    for data in held_out:
        pred = predict_envelope(model, data.images) >= 0.5
        true = data.envelope > 0.5
        inter += float((pred & true).sum())
        union += float((pred | true).sum())
        cracks_in += float((pred & data.cracks).sum())
        cracks += float(data.cracks.sum())
        gaps_out += float((~pred & data.gaps).sum())
        gaps += float(data.gaps.sum())
    model.train()
    scores = {
        "envelope_iou": inter / union if union else float("nan"),
        "cracks_inside": cracks_in / cracks if cracks else float("nan"),
        "gaps_outside": gaps_out / gaps if gaps else float("nan"),
    }
    scores["score"] = float(np.nanmean(list(scores.values())))
    return scores


def main(argv: list[str] | None = None) -> int:
    """Entry point: build data, train within the budget keeping the best held-out state, save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument(
        "--init", type=Path, default=PARTICLE_WEIGHTS, help="particle or envelope U-Net weights"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=35.0, help="training time budget")
    parser.add_argument("--volumes", type=int, default=14)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--wide-share", type=float, default=0.6, help="share of wide volumes")
    parser.add_argument("--damage-width-max", type=float, default=6.0)
    parser.add_argument("--quantize-share", type=float, default=0.4)
    parser.add_argument("--min-diameter", type=float, default=12.0)
    parser.add_argument("--max-diameter", type=float, default=100.0)
    parser.add_argument("--hard-weight", type=float, default=4.0)
    parser.add_argument("--eval-every", type=int, default=200, help="held-out scoring (steps)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.monotonic()
    shape = (args.depth, args.size, args.size)
    widen = {
        "damage_width_px": (1.0, args.damage_width_max),
        "diameter_px": (args.min_diameter, args.max_diameter),
        "hard_weight": args.hard_weight,
    }
    sets = []
    for i in range(args.volumes):
        wide = bool(rng.random() < args.wide_share)
        sets.append(
            make_envelope_set(
                shape,
                seed=args.seed * 1000 + i,
                wide=wide,
                damage_share=float(rng.uniform(0.3, 0.9)),
                quantize=bool(rng.random() < args.quantize_share),
                **widen,  # type: ignore[arg-type]
            )
        )
        logger.info("volume %d/%d ready (%s)", i + 1, args.volumes, "wide" if wide else "standard")
    held_out = [
        make_envelope_set(
            shape,
            seed=s,
            wide=w,
            damage_share=0.6,
            quantize=False,
            **widen,  # type: ignore[arg-type]
        )
        for s, w in zip(HELD_OUT_SEEDS, (False, True), strict=True)
    ]
    data_seconds = time.monotonic() - t_start
    model = load_trainable_envelope_unet(args.init)

    def loss_of_step() -> torch.Tensor:
        image, env, dist, weight = sample_batch(sets, args.batch, args.tile, rng)
        return envelope_loss(model(image), env, dist, weight)

    run = train_within_budget(
        model,
        loss_of_step,
        evaluate=lambda: evaluate(model, held_out),
        key="score",
        eval_steps=args.eval_every,
        minutes=args.minutes,
        lr=args.lr,
        lr_floor=0.02,
    )
    logger.info("held-out scores of the kept state (step %d): %s", run.best_step, run.final)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    metadata = {
        "config": config,
        "steps": run.steps,
        "best_step": run.best_step,
        "kept": "best held-out score (mean of envelope IoU, cracks inside, gaps outside)",
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(run.train_seconds, 1),
        "held_out": {"shape": list(shape), "seeds": list(HELD_OUT_SEEDS), **run.final},
        "initial": run.initial,
        "history": run.history,
        "normalization": "models.crack_unet.reference_levels (1st, 99.5th percentile) per volume",
        "torch": str(torch.__version__),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_envelope_unet(model, args.out, metadata)
    args.out.with_suffix(".json").write_text(json.dumps(metadata, indent=2) + "\n")
    logger.info("saved %s (%.1f kB)", args.out, args.out.stat().st_size / 1e3)
    return 0
