"""Train the particle U-Net (foreground + boundary distance) on reconstructed synthetic cathodes.

Run ``python -m training.train_particle_unet`` (about 12 minutes on one CPU thread). It writes
``models/weights/particle_unet.pt`` and ``models/weights/particle_unet.json`` (training config
and pixel scores on a held-out volume). Instance scores of the full pipeline (F1 at IoU 0.5,
split rate) are measured by ``python -m benchmarks.particles_benchmark --record``, which adds
them to the JSON file.

Training data: synthetic cathode volumes with cracks (``synthetic.reconstructed``: the
same simulated scan and filtered back projection as the crack U-Net's training data),
normalised with ``models.crack_unet.reference_levels`` as at inference time. Targets: the
particle foreground with its cracks, and the 3-D distance to the particle boundary in which
cracks are not boundaries (:func:`models.particle_unet.instance_distance`). Augmentations:
random crops, 90-degree rotations, flips, contrast/brightness changes and Gaussian noise.

Wider domain (all off by default): ``--damaged-volumes`` gives a share of the cracked volumes
through-cracked, hollow-core or fragmented particles (``--damage-kinds``, cracks up to
``--damage-width-max`` px; :mod:`synthetic.damage`), ``--quantize-share`` renders volumes
as 8-bit images, ``--min-diameter`` / ``--max-diameter`` set the particle sizes; ``--init``
starts from existing weights. Two such fine-tunings (README, issue 13 section) scored better on
the never-trained family and worse on the real crops, so the shipped weights are not theirs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from models.particle_unet import (
    DEFAULT_WEIGHTS,
    DISTANCE_SCALE_PX,
    ParticleUNet,
    context_stack,
    instance_distance,
    load_trainable_particle_unet,
    predict_maps,
    save_particle_unet,
)
from synthetic.damage import DAMAGE
from synthetic.reconstructed import make_reconstructed_cathode
from training import cli

logger = logging.getLogger(__name__)
HELD_OUT_SEED = 990_001
KEY = "foreground_iou"  # the held-out score of --eval-every's keep-best


@dataclass
class VolumeSet:
    """Normalised volume with its foreground and scaled-distance targets."""

    images: np.ndarray  # float32 (Z, Y, X)
    foreground: np.ndarray  # float32 (Z, Y, X)
    distance: np.ndarray  # float32 (Z, Y, X), in units of DISTANCE_SCALE_PX


def make_volume_set(
    shape: tuple[int, int, int],
    seed: int,
    crack_density: float,
    *,
    diameter_px: tuple[float, float] = (18.0, 34.0),
    damage_share: float = 0.0,
    damage_width_px: tuple[float, float] = (1.0, 2.6),
    damage_kinds: tuple[str, ...] = DAMAGE,
    quantize: bool = False,
) -> VolumeSet:
    """One reconstructed synthetic volume and its targets (the keywords widen the domain:
    :func:`synthetic.reconstructed.make_reconstructed_cathode`)."""
    sample = make_reconstructed_cathode(
        shape,
        seed=seed,
        crack_density=crack_density,
        diameter_px=diameter_px,
        damage_share=damage_share,
        damage_width_px=damage_width_px,
        damage_kinds=damage_kinds,
        quantize=quantize,
    )
    ids = sample.truth.particle_ids
    return VolumeSet(
        images=sample.normalized,
        foreground=(ids > 0).astype(np.float32),
        distance=instance_distance(ids) / np.float32(DISTANCE_SCALE_PX),
    )


def sample_batch(
    sets: list[VolumeSet], batch_size: int, tile: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crops with rotations, flips, contrast changes and noise."""
    images, fgs, dists = [], [], []
    for _ in range(batch_size):
        data = sets[int(rng.integers(len(sets)))]
        depth, height, width = data.images.shape
        z = int(rng.integers(depth))
        y = int(rng.integers(0, height - tile + 1))
        x = int(rng.integers(0, width - tile + 1))
        img = context_stack(data.images, z)[:, y : y + tile, x : x + tile]
        fg = data.foreground[z, y : y + tile, x : x + tile]
        dist = data.distance[z, y : y + tile, x : x + tile]
        k = int(rng.integers(4))
        flip = bool(rng.random() < 0.5)
        if rng.random() < 0.5:
            img = img[::-1]  # reverse the z context: the target is symmetric in z
        arrays = [np.rot90(a, k, axes=(-2, -1)) for a in (img, fg, dist)]
        if flip:
            arrays = [a[..., ::-1] for a in arrays]
        images.append(np.ascontiguousarray(arrays[0]))
        fgs.append(np.ascontiguousarray(arrays[1]))
        dists.append(np.ascontiguousarray(arrays[2]))
    image = torch.from_numpy(np.stack(images))
    gain = torch.from_numpy(rng.uniform(0.8, 1.25, (batch_size, 1, 1, 1))).float()
    offset = torch.from_numpy(rng.uniform(-0.1, 0.1, (batch_size, 1, 1, 1))).float()
    sigma = torch.from_numpy(rng.uniform(0.0, 0.05, (batch_size, 1, 1, 1))).float()
    noise = torch.from_numpy(rng.standard_normal(image.shape).astype(np.float32))
    image = image * gain + offset + sigma * noise
    return (
        image,
        torch.from_numpy(np.stack(fgs))[:, None],
        torch.from_numpy(np.stack(dists))[:, None],
    )


def particle_loss(out: torch.Tensor, fg: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Foreground cross-entropy plus smooth-L1 distance regression."""
    bce = F.binary_cross_entropy_with_logits(out[:, 0:1], fg)
    reg = F.smooth_l1_loss(out[:, 1:2], dist, beta=0.25)
    return bce + 2.0 * reg


def evaluate(model: ParticleUNet, data: VolumeSet) -> dict[str, float]:
    """Foreground IoU and distance mean absolute error (voxels) on a held-out volume."""
    model.eval()
    prob, dist = predict_maps(model, data.images)
    model.train()
    pred, true = prob >= 0.5, data.foreground > 0.5
    inter, union = float((pred & true).sum()), float((pred | true).sum())
    mae = float(np.abs(dist - data.distance * DISTANCE_SCALE_PX)[true].mean())
    return {"foreground_iou": inter / union if union else 1.0, "distance_mae_px": mae}


def main(argv: list[str] | None = None) -> int:
    """Entry point: build data, train, evaluate on a held-out volume, save weights."""
    parser = cli.trainer_parser(
        __doc__.splitlines()[0],
        out=DEFAULT_WEIGHTS,
        threads=1,
        minutes=11.0,
        batch=8,
        lr=3e-3,
        seed=7,
    )
    cli.add_volume_options(parser, volumes=10, size=128, depth=40)
    cli.add_unet_options(parser, tile=80, base_channels=8)
    cli.add_keep_best_option(parser, default=0, scored="the held-out volume")
    parser.add_argument(
        "--damaged-volumes",
        type=float,
        default=0.0,
        help="share of the cracked volumes with through-cracked, hollow-core and fragmented "
        "particles (synthetic.damage)",
    )
    parser.add_argument(
        "--damage-width-max", type=float, default=2.6, help="widest crack of that damage (px)"
    )
    parser.add_argument(
        "--damage-kinds",
        nargs="+",
        choices=DAMAGE,
        default=list(DAMAGE),
        help="kinds of that damage drawn from",
    )
    parser.add_argument(
        "--quantize-share", type=float, default=0.0, help="share of volumes rendered as 8 bit"
    )
    parser.add_argument("--min-diameter", type=float, default=18.0)
    parser.add_argument("--max-diameter", type=float, default=34.0)
    args = parser.parse_args(argv)
    rng = cli.start_training(args)
    t_start = time.monotonic()
    shape = (args.depth, args.size, args.size)
    sets = []
    widen = {
        "diameter_px": (args.min_diameter, args.max_diameter),
        "damage_width_px": (1.0, args.damage_width_max),
        "damage_kinds": tuple(args.damage_kinds),
    }
    for i in range(args.volumes):
        density = 0.0 if i == args.volumes - 1 else float(rng.uniform(0.5, 2.0))
        damaged = i < args.volumes - 1 and rng.random() < args.damaged_volumes
        sets.append(
            make_volume_set(
                shape,
                seed=args.seed * 1000 + i,
                crack_density=density,
                damage_share=float(rng.uniform(0.3, 0.8)) if damaged else 0.0,
                quantize=bool(rng.random() < args.quantize_share),
                **widen,  # type: ignore[arg-type]
            )
        )
        logger.info(
            "volume %d/%d ready (crack density %.2f%s)",
            i + 1,
            args.volumes,
            density,
            ", damaged" if damaged else "",
        )
    held_out = make_volume_set(
        shape,
        seed=HELD_OUT_SEED,
        crack_density=1.5,
        damage_share=0.5 if args.damaged_volumes > 0 else 0.0,
        **widen,  # type: ignore[arg-type]
    )
    data_seconds = time.monotonic() - t_start

    model = (
        ParticleUNet(base_channels=args.base_channels)
        if args.init is None
        else load_trainable_particle_unet(args.init)
    )

    def loss_of_step() -> torch.Tensor:
        image, fg, dist = sample_batch(sets, args.batch, args.tile, rng)
        return particle_loss(model(image), fg, dist)

    run = cli.train_with_options(
        model, loss_of_step, args, evaluate=lambda: evaluate(model, held_out), key=KEY
    )

    scores = evaluate(model, held_out)
    logger.info("held-out pixel scores: %s", scores)
    metadata = {
        **cli.run_metadata(args, run, data_seconds=data_seconds, key=KEY),
        "held_out": {
            "shape": list(shape),
            "seed": HELD_OUT_SEED,
            "crack_density": 1.5,
            "damage_share": 0.5 if args.damaged_volumes > 0 else 0.0,
            **scores,
        },
        "normalization": "models.crack_unet.reference_levels (1st, 99.5th percentile) per volume",
        "distance_scale_px": DISTANCE_SCALE_PX,
    }
    cli.save_trained(save_particle_unet, model, args.out, metadata)
    return 0
