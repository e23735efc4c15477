"""Train the crack U-Net on reconstructed synthetic cathode volumes.

Run ``python -m training.train_crack_unet`` (about 15-20 minutes on 2 CPU threads). It writes
``models/weights/crack_unet.pt`` and ``models/weights/crack_unet.json`` (training config and
the score on a held-out volume).

Training data: synthetic cathode volumes (``synthetic.cathode``) are projected
(``skimage.transform.radon``, the same parallel-beam geometry as
``pipelines.tomo.project.forward_project``), turned into raw phase-contrast-like frames with
noise, blur, fringes and ring-causing column gains (``simulate_detector``), flat/dark
normalised, and reconstructed by filtered back projection (``skimage.transform.iradon``, which
``pipelines.tomo.fbp`` matches to float32 precision; :func:`synthetic.scan.reconstruct_synthetic`).
Slices are normalised with ``reference_levels`` of their volume, exactly as at inference time.

The network is 2.5-D: each training sample is a slice with its two neighbours (channels
``z - 1, z, z + 1``, :func:`models.crack_unet.context_stacks`), the label that of the middle
slice. Augmentations follow the seed paper (shift, rotation, scaling, cropping) plus flips, a
reversed slice order, Gaussian noise and contrast/brightness changes. The loss is the sigmoid
cross-entropy plus a soft Dice term, ignoring pixels outside the reconstruction circle. About a
third of the crops are centred near a crack pixel (``--crack-share``): the labels are visible
in the reconstructions (within the true particle mask, a plain threshold halfway between pore
and solid reproduces them with IoU ~0.89), and the errors of a starved network sit where
cracks meet particle surfaces and on thin pore gaps between touching particles, which look
like cracks in a single slice. Those gaps (:func:`touching_gaps`) are the hard negatives: a
share of the crops is centred on them (``--gap-share``) and their cross-entropy counts
``--gap-weight`` times.

``--recon fbp`` reconstructs the training scans with the project's own FBP
(:func:`pipelines.tomo.fbp.reconstruct`) instead of ``iradon``; ``--damage-width-max`` opens
the damaged particles' cracks and fragment boundaries up to that width; ``--negative-fringe-share``
and ``--jpeg-share`` add fringes of the other sign and JPEG-compressed 8-bit renders. A 24-min
fine-tune with them (fragment gaps up to 7 px) found more cracks everywhere but called real
inter-particle gaps cracks, so it is not shipped
(``docs/training_logs/crack_unet_fbp_widefrag_2026-11-30.log``).

``--outline-share`` adds outline bays, matrix pores and fragment debris as hard negatives
(:mod:`synthetic.outlines`) and ``--wedge-share`` missing-wedge scans; two 40-45 min runs with
them and fringes of both signs (``docs/training_logs/crack_unet_outline_negatives_2026-11-30.log``,
``crack_unet_fringe_wedge_2026-11-30.log``) gained on the never-trained family and lost on the
real crops, so they are not shipped either.

``--wide`` draws the volumes and scans from a much wider range (:func:`wide_volume` and the
scan settings of ``_wide_slice_set``: particles 12-120 px, packing, binder texture, surface
cracks and void clusters, fringes of either sign, sparse-angle / missing-wedge scans, JPEG).
A 40-min fine-tune with it was better on the never-trained family and worse on the real
crops, so it is not the shipped run (``docs/training_logs/crack_unet_wide_2026-11-29.log``).

``--init`` with single-slice weights starts the 2.5-D network from them
(:func:`inflate_input`: the neighbours' input weights start at zero, so the first step gives
the old outputs). The shipped weights: the single-slice weights (about 95 minutes of training
in earlier sessions) inflated and trained for 70 minutes on one thread with ``--volumes 16
--depth 16 --seed 2027 --lr 1e-3`` (see ``crack_unet.json``).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from models.crack_unet import (
    CONTEXT_SLICES,
    DEFAULT_WEIGHTS,
    CrackUNet,
    context_stacks,
    load_crack_unet,
    load_crack_unet_metadata,
    normalize_slices,
    predict_probabilities,
    reference_levels,
    save_crack_unet,
)
from synthetic.cathode import (
    BINDER,
    SOLID,
    CathodeParams,
    CathodeVolume,
    DetectorParams,
)
from synthetic.damage import WIDE_DAMAGE, damaged_cathode_volume
from synthetic.outlines import roughen_outlines
from synthetic.reconstructed import random_cathode_params
from synthetic.scan import jpeg_roundtrip, quantize_8bit, reconstruct_synthetic
from training import cli

logger = logging.getLogger(__name__)
KEY = "iou@0.50"  # the held-out score of --eval-every's keep-best


@dataclass
class SliceSet:
    """Normalised reconstructed context stacks with crack labels, valid pixels and gaps."""

    images: np.ndarray  # float32 (S, CONTEXT_SLICES, H, W): slices z - 1, z, z + 1
    labels: np.ndarray  # float32 (S, H, W)
    valid: np.ndarray  # float32 (S, H, W)
    gaps: np.ndarray  # float32 (S, H, W): 1 on matrix pixels between touching particles

    @classmethod
    def concatenate(cls, sets: Sequence[SliceSet]) -> SliceSet:
        """The slices of several sets, in order, as one set."""
        return cls(
            images=np.concatenate([s.images for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            valid=np.concatenate([s.valid for s in sets]),
            gaps=np.concatenate([s.gaps for s in sets]),
        )


def touching_gaps(particle_ids: np.ndarray, radius: int = 2) -> np.ndarray:
    """Matrix pixels within ``radius`` (in-slice) of two different particles.

    These thin gaps between touching particles are dark and narrow like cracks; they are the
    hard negatives of the training crops and loss.

    Parameters
    ----------
    particle_ids : numpy.ndarray
        int (Z, Y, X) instance labels, 0 = no particle.
    radius : int
        Half-width of the square in-slice neighbourhood.

    Returns
    -------
    numpy.ndarray
        bool (Z, Y, X).
    """
    ids = np.asarray(particle_ids)
    footprint = np.ones((1, 2 * radius + 1, 2 * radius + 1), dtype=bool)
    highest = ndimage.maximum_filter(ids, footprint=footprint)
    # background above every label (not the dtype's maximum: scipy mangles int64's)
    lowest = ndimage.minimum_filter(np.where(ids > 0, ids, ids.max() + 1), footprint=footprint)
    return (ids == 0) & (highest > 0) & (lowest < highest)


def _fine_texture(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-std Gaussian-filtered white noise (grain size ~``sigma`` px), float32."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def wide_volume(
    shape: tuple[int, int, int],
    seed: int,
    rng: np.random.Generator,
    crack_density: float,
    *,
    damage_share: float,
    diameter_px: tuple[float, float],
) -> CathodeVolume:
    """A training volume with the wider domain randomisation (``--wide``).

    Particle diameter log-uniform in ``diameter_px``, size spread, packing, gap width,
    binder share and contrast, crack widths (scaled down for small particles), all five kinds
    of damage (:data:`synthetic.damage.WIDE_DAMAGE`) with larger hollow cores, a
    granular texture of the carbon/binder and a primary-grain texture inside the particles.
    """
    diameter = float(np.exp(rng.uniform(np.log(diameter_px[0]), np.log(diameter_px[1]))))
    width_scale = float(np.clip(diameter / 30.0, 0.5, 1.0))
    params = CathodeParams(
        particle_diameter_px=diameter,
        diameter_spread=float(rng.uniform(0.1, 0.35)),
        packing_variation=float(rng.uniform(0.2, 1.0)),
        shape_irregularity=float(rng.uniform(0.05, 0.3)),
        gap_px=float(rng.uniform(0.6, 3.5)),
        binder_fraction=float(rng.uniform(0.2, 0.8)),
        crack_width_px=(
            float(rng.uniform(0.8, 1.8)),
            float(rng.uniform(2.0, 4.5)) * width_scale + 0.8 * (1 - width_scale),
        ),
        mu_binder=0.012 * float(rng.uniform(0.1, 0.5)),
    )
    vol = damaged_cathode_volume(
        shape,
        rng,
        seed=seed,
        crack_density=crack_density,
        depth_gradient=bool(rng.random() < 0.5),
        params=params,
        damage_share=damage_share,
        width_px=(0.8, 1.0 + 2.5 * width_scale),
        kinds=WIDE_DAMAGE,
        core_share=(0.4, 0.8),
    )
    attenuation = vol.attenuation.copy()
    binder = vol.phase == BINDER
    grain = _fine_texture(shape, float(rng.uniform(0.6, 1.6)), rng)
    attenuation[binder] *= np.clip(1.0 + float(rng.uniform(0.0, 0.8)) * grain[binder], 0.1, None)
    solid = vol.phase == SOLID
    grain = _fine_texture(shape, float(rng.uniform(1.0, 3.0)), rng)
    attenuation[solid] *= np.clip(1.0 + float(rng.uniform(0.0, 0.15)) * grain[solid], 0.5, None)
    return replace(vol, attenuation=attenuation.astype(np.float32))


def make_slice_set(
    shape: tuple[int, int, int],
    seed: int,
    rng: np.random.Generator,
    crack_density: float,
    *,
    damage_share: float = 0.0,
    quantize: bool = False,
    diameter_px: tuple[float, float] = (18.0, 34.0),
    wide: bool = False,
    recon_method: Literal["iradon", "fbp"] = "iradon",
    damage_width_px: tuple[float, float] = (1.0, 2.6),
    negative_fringe_share: float = 0.0,
    jpeg_share: float = 0.0,
    outline_share: float = 0.0,
    wedge_share: float = 0.0,
    fringe_max: float = 1.2,
    no_fringe_share: float = 0.0,
) -> SliceSet:
    """One synthetic volume -> normalised reconstructed slices with labels.

    ``damage_share`` > 0 adds split, hollow-core and fragmented particles
    (:func:`synthetic.damage.add_damage`); ``quantize`` renders the reconstruction as
    8-bit (:func:`quantize_8bit`), of which a share ``jpeg_share`` is JPEG-compressed;
    ``damage_width_px`` is the range of the damage's crack widths (fragment boundaries as
    wide, :func:`synthetic.damage.add_damage`); ``negative_fringe_share`` of the scans get
    phase fringes of the other sign; the fringe strength is uniform in ``[0, fringe_max]``
    and a share ``no_fringe_share`` of the scans has none (pure absorption contrast);
    ``recon_method`` picks the reconstruction
    (:func:`synthetic.scan.reconstruct_synthetic`: "fbp" is the project's own).
    ``outline_share`` of the volumes get outline bays, matrix pores and fragment debris
    (:func:`synthetic.outlines.roughen_outlines`), counted with the touching gaps as hard
    negatives. ``wedge_share`` of the scans cover 140 to 170 degrees only (missing wedge).
    ``wide`` draws the volume with :func:`wide_volume` and the
    scan from a wider range: photons, phase fringes of either sign, blur, rings, sparse-angle
    or missing-wedge scans, 8-bit renders half of them JPEG-compressed, extra blur.
    """
    if wide:
        return _wide_slice_set(shape, seed, rng, crack_density, damage_share, quantize, diameter_px)
    vol = damaged_cathode_volume(
        shape,
        rng,
        seed=seed,
        crack_density=crack_density,
        params=random_cathode_params(rng, diameter_px),
        depth_gradient=bool(rng.random() < 0.5),
        damage_share=damage_share,
        **(
            {"width_px": damage_width_px, "wide_fragments": True}
            if damage_width_px != (1.0, 2.6)
            else {}
        ),
    )
    # extra draws only when asked for, so the default data of a seed stay the same
    negatives = None
    if outline_share > 0 and rng.random() < outline_share:
        vol, negatives = roughen_outlines(vol, rng)
    sign = -1.0 if negative_fringe_share > 0 and rng.random() < negative_fringe_share else 1.0
    if no_fringe_share > 0 and rng.random() < no_fringe_share:
        sign = 0.0
    detector = DetectorParams(
        photons=float(10 ** rng.uniform(3.7, 4.7)),
        phase_fringe=sign * float(rng.uniform(0.0, fringe_max)),
        blur_sigma_px=float(rng.uniform(0.4, 1.0)),
        ring_fraction=float(rng.uniform(0.0, 0.08)),
    )
    n_angles = int(rng.choice([shape[2], int(shape[2] * 1.4), int(shape[2] * 1.6)]))
    angle_range = 180.0
    if wedge_share > 0 and rng.random() < wedge_share:
        angle_range = float(rng.uniform(140.0, 170.0))
    recon = _scan(vol.attenuation, seed, rng, detector, n_angles, angle_range, method=recon_method)
    if quantize:
        recon = quantize_8bit(recon, rng)
        if jpeg_share > 0 and rng.random() < jpeg_share:
            inside = recon != 0
            recon = jpeg_roundtrip(recon, int(rng.integers(25, 91)))
            recon[~inside] = 0.0
    return _labelled_slices(recon, vol, negatives)


def _wide_slice_set(
    shape: tuple[int, int, int],
    seed: int,
    rng: np.random.Generator,
    crack_density: float,
    damage_share: float,
    quantize: bool,
    diameter_px: tuple[float, float],
) -> SliceSet:
    vol = wide_volume(
        shape, seed, rng, crack_density, damage_share=damage_share, diameter_px=diameter_px
    )
    recon = wide_scan(vol.attenuation, seed, rng, quantize)
    return _labelled_slices(recon, vol)


def wide_scan(
    attenuation: np.ndarray, seed: int, rng: np.random.Generator, quantize: bool
) -> np.ndarray:
    """Reconstruction of a simulated scan drawn from the wide range of ``--wide``: photons,
    phase fringes of either sign, blur, rings, sparse-angle or missing-wedge scans, filters,
    extra blur, and (``quantize``) 8-bit renders of which half are JPEG-compressed."""
    sign = -1.0 if rng.random() < 0.35 else 1.0
    detector = DetectorParams(
        photons=float(10 ** rng.uniform(3.6, 4.8)),
        phase_fringe=sign * float(rng.uniform(0.0, 2.0)),
        blur_sigma_px=float(rng.uniform(0.3, 1.8)),
        ring_fraction=float(rng.uniform(0.0, 0.15)),
        ring_amplitude=float(rng.uniform(0.01, 0.06)),
    )
    n = attenuation.shape[2]
    scan = rng.random()
    if scan < 0.2:  # sparse angles: streaks
        n_angles, angle_range = int(n * rng.uniform(0.2, 0.5)), 180.0
    elif scan < 0.35:  # missing wedge
        n_angles, angle_range = int(n * 1.4), float(rng.uniform(110.0, 165.0))
    else:
        n_angles, angle_range = int(rng.choice([n, int(n * 1.4), int(n * 1.6)])), 180.0
    recon = _scan(attenuation, seed, rng, detector, n_angles, angle_range)
    if rng.random() < 0.25:
        inside = recon != 0
        recon = ndimage.gaussian_filter(recon, (0, *(2 * [float(rng.uniform(0.5, 1.3))])))
        recon[~inside] = 0.0
    if quantize:
        recon = quantize_8bit(recon, rng)
        if rng.random() < 0.5:
            inside = recon != 0
            recon = jpeg_roundtrip(recon, int(rng.integers(25, 91)))
            recon[~inside] = 0.0
    return recon


def _scan(
    attenuation: np.ndarray,
    seed: int,
    rng: np.random.Generator,
    detector: DetectorParams,
    n_angles: int,
    angle_range: float = 180.0,
    *,
    method: Literal["iradon", "fbp"] = "iradon",
) -> np.ndarray:
    """Reconstruction of a simulated scan of ``attenuation`` with a filter drawn from ``rng``."""
    filter_name = str(rng.choice(["ramp", "ramp", "shepp-logan", "hann"]))
    return reconstruct_synthetic(
        attenuation,
        seed=seed + 1,
        n_angles=n_angles,
        detector=detector,
        filter_name=filter_name,
        angle_range=angle_range,
        method=method,
    )


def _labelled_slices(
    recon: np.ndarray, vol: CathodeVolume, negatives: np.ndarray | None = None
) -> SliceSet:
    """Context stacks of ``recon`` normalised on its own levels, as at inference, with the
    crack labels, the reconstruction circle as the valid pixels and the touching gaps (and
    the other hard ``negatives``, if given) as gaps."""
    low, high = reference_levels(recon)
    images = context_stacks(normalize_slices(recon, low, high))
    shape = vol.crack_mask.shape
    n = shape[2]
    yy, xx = np.mgrid[:n, :n]
    circle = ((yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= (n // 2 - 1) ** 2).astype(np.float32)
    gaps = touching_gaps(vol.particle_ids)
    if negatives is not None:
        gaps |= negatives
    return SliceSet(
        images=images,
        labels=vol.crack_mask.astype(np.float32),
        valid=np.broadcast_to(circle, shape).copy(),
        gaps=gaps.astype(np.float32),
    )


def crack_pixels(data: SliceSet) -> np.ndarray:
    """(K, 3) int64 coordinates (z, y, x) of the crack pixels of a slice set."""
    return np.argwhere(data.labels > 0.5)


def gap_pixels(data: SliceSet) -> np.ndarray:
    """(K, 3) int64 coordinates (z, y, x) of the touching-particle gap pixels."""
    return np.argwhere(data.gaps > 0.5)


def augment_batch(
    data: SliceSet,
    batch_size: int,
    tile: int,
    rng: np.random.Generator,
    *,
    cracks: np.ndarray | None = None,
    crack_share: float = 0.0,
    gaps: np.ndarray | None = None,
    gap_share: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random shifted, rotated, scaled, flipped crops with noise and contrast changes.

    A share ``crack_share`` of the crops is centred near a random crack pixel (``cracks``,
    see :func:`crack_pixels`) and a share ``gap_share`` near a gap between touching
    particles (``gaps``, :func:`gap_pixels`), the others anywhere: cracks are a few percent
    of the pixels, and their mouths at particle surfaces and the gaps are the hard cases.
    The order of the context slices is reversed at random (z flip).

    Returns
    -------
    tuple of torch.Tensor
        Images (B, CONTEXT_SLICES, tile, tile), labels, valid mask and gap mask
        (B, 1, tile, tile).
    """
    n_slices, n_context, height, width = data.images.shape
    patch = int(math.ceil(tile * 1.42 * 1.25)) + 2
    half = patch // 2
    stacks = []
    for _ in range(batch_size):
        z = int(rng.integers(n_slices))
        cy = int(rng.integers(half // 2, height - half // 2))
        cx = int(rng.integers(half // 2, width - half // 2))
        draw = rng.random()
        centres = cracks if draw < crack_share else gaps if draw < crack_share + gap_share else None
        if centres is not None and len(centres):
            z, cy, cx = (int(v) for v in centres[rng.integers(len(centres))])
            cy = int(np.clip(cy + rng.integers(-tile // 3, tile // 3 + 1), 0, height - 1))
            cx = int(np.clip(cx + rng.integers(-tile // 3, tile // 3 + 1), 0, width - 1))
        context = data.images[z] if rng.random() < 0.5 else data.images[z, ::-1]
        chans = np.concatenate((context, np.stack((data.labels[z], data.valid[z], data.gaps[z]))))
        padded = np.pad(chans, ((0, 0), (half, half), (half, half)))
        stacks.append(padded[:, cy : cy + patch, cx : cx + patch])
    inp = torch.from_numpy(np.stack(stacks))
    angle = torch.from_numpy(rng.uniform(0, 2 * np.pi, batch_size)).float()
    scale = torch.from_numpy(np.exp(rng.uniform(np.log(0.8), np.log(1.25), batch_size))).float()
    flip = torch.from_numpy(rng.choice([-1.0, 1.0], batch_size)).float()
    ratio = tile / patch
    cos, sin = torch.cos(angle) * ratio / scale, torch.sin(angle) * ratio / scale
    theta = torch.zeros(batch_size, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    grid = F.affine_grid(theta, [batch_size, inp.shape[1], tile, tile], align_corners=False)
    out = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    image = out[:, :n_context]
    label = (out[:, n_context : n_context + 1] > 0.5).float()
    valid = (out[:, n_context + 1 : n_context + 2] > 0.99).float()
    gap = (out[:, n_context + 2 : n_context + 3] > 0.5).float()
    gain = torch.from_numpy(rng.uniform(0.75, 1.3, (batch_size, 1, 1, 1))).float()
    offset = torch.from_numpy(rng.uniform(-0.12, 0.12, (batch_size, 1, 1, 1))).float()
    sigma = torch.from_numpy(rng.uniform(0.0, 0.06, (batch_size, 1, 1, 1))).float()
    noise = torch.from_numpy(rng.standard_normal(image.shape).astype(np.float32))
    image = (image * gain + offset + sigma * noise) * valid
    return image, label, valid, gap


def crack_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    valid: torch.Tensor,
    gap: torch.Tensor | None = None,
    gap_weight: float = 1.0,
) -> torch.Tensor:
    """Masked sigmoid cross-entropy (``gap_weight`` times on gap pixels) plus soft Dice."""
    bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    weight = valid if gap is None else valid * (1.0 + (gap_weight - 1.0) * gap)
    bce = (bce * weight).sum() / valid.sum().clamp(min=1.0)
    prob = torch.sigmoid(logits) * valid
    inter = (prob * label).sum()
    dice = 1.0 - (2 * inter + 1.0) / (prob.sum() + (label * valid).sum() + 1.0)
    return bce + dice


def evaluate(model: CrackUNet, data: SliceSet, thresholds: list[float]) -> dict[str, float]:
    """Crack IoU and Dice over whole held-out slices for several probability thresholds."""
    model.eval()
    probs = np.concatenate(
        [
            predict_probabilities(model, data.images[i : i + 4])
            for i in range(0, len(data.images), 4)
        ]
    )
    truth = (data.labels > 0.5) & (data.valid > 0)
    scores: dict[str, float] = {}
    for thr in thresholds:
        pred = (probs >= thr) & (data.valid > 0)
        inter = float((pred & truth).sum())
        union = float((pred | truth).sum())
        total = float(pred.sum() + truth.sum())
        scores[f"iou@{thr:.2f}"] = inter / union if union else 1.0
        scores[f"dice@{thr:.2f}"] = 2 * inter / total if total else 1.0
    model.train()
    return scores


def inflate_input(model: CrackUNet, single_slice: CrackUNet) -> CrackUNet:
    """Start a 2.5-D network from single-slice weights: same outputs at the first step.

    The first convolution's weights go to the middle input channel, the neighbours' channels
    start at zero; every other layer is copied.
    """
    state = single_slice.state_dict()
    key = "encoders.0.0.weight"
    weight = torch.zeros_like(model.state_dict()[key])
    weight[:, CONTEXT_SLICES // 2] = state[key][:, 0]
    model.load_state_dict({**state, key: weight})
    return model


def build_datasets(args: argparse.Namespace, rng: np.random.Generator) -> tuple[SliceSet, SliceSet]:
    """Training slices from ``args.volumes`` volumes (the last crack-free) and a held-out set."""
    shape = (args.depth, args.size, args.size)
    sets = []
    for i in range(args.volumes):
        density = 0.0 if i == args.volumes - 1 else float(rng.uniform(0.4, 1.6))
        damaged = i < args.volumes - 1 and rng.random() < args.damaged_volumes
        sets.append(
            make_slice_set(
                shape,
                seed=args.seed * 100 + i,
                rng=rng,
                crack_density=density,
                damage_share=float(rng.uniform(0.3, 0.8)) if damaged else 0.0,
                quantize=bool(rng.random() < args.quantize_share),
                diameter_px=(args.min_diameter, args.max_diameter),
                wide=args.wide,
                **_scan_options(args),
            )
        )
        logger.info(
            "training volume %d/%d ready (crack density %.2f)", i + 1, args.volumes, density
        )
    train = SliceSet.concatenate(sets)
    held_out = make_slice_set(
        (12, args.size, args.size),
        seed=991_000,
        rng=rng,
        crack_density=1.0,
        recon_method=args.recon,
    )
    return train, held_out


def _scan_options(args: argparse.Namespace) -> dict:
    """The keywords of :func:`make_slice_set` set by the command line (defaults: as before)."""
    return {
        "recon_method": args.recon,
        "damage_width_px": (1.0, args.damage_width_max),
        "negative_fringe_share": args.negative_fringe_share,
        "jpeg_share": args.jpeg_share,
        "outline_share": args.outline_share,
        "wedge_share": args.wedge_share,
        "fringe_max": args.fringe_max,
        "no_fringe_share": args.no_fringe_share,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: build data, train, evaluate on a held-out volume, save weights."""
    parser = cli.trainer_parser(
        __doc__.splitlines()[0],
        out=DEFAULT_WEIGHTS,
        threads=2,
        minutes=13.0,
        batch=8,
        lr=3e-3,
        seed=2024,
    )
    cli.add_volume_options(parser, volumes=8, size=256, depth=20)
    cli.add_unet_options(parser, tile=128, base_channels=8)
    cli.add_keep_best_option(parser, default=1000, scored="the held-out volume")
    parser.add_argument(
        "--crack-share", type=float, default=0.35, help="share of crops centred near cracks"
    )
    parser.add_argument(
        "--gap-share",
        type=float,
        default=0.15,
        help="share of crops centred near gaps between touching particles",
    )
    parser.add_argument(
        "--gap-weight", type=float, default=2.0, help="cross-entropy weight of gap pixels"
    )
    parser.add_argument(
        "--damaged-volumes",
        type=float,
        default=0.0,
        help="share of the cracked training volumes with split, hollow-core and fragmented "
        "particles (synthetic.damage)",
    )
    parser.add_argument(
        "--quantize-share", type=float, default=0.0, help="share of volumes rendered as 8 bit"
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="wider domain randomisation of the training volumes and scans (wide_volume)",
    )
    parser.add_argument(
        "--recon",
        choices=("iradon", "fbp"),
        default="iradon",
        help="reconstruction of the training scans: skimage iradon or the project's own FBP "
        "(pipelines.tomo.fbp, what inference uses)",
    )
    parser.add_argument(
        "--damage-width-max",
        type=float,
        default=2.6,
        help="widest crack of the damaged particles (px; fragment boundaries as wide)",
    )
    parser.add_argument(
        "--negative-fringe-share",
        type=float,
        default=0.0,
        help="share of the scans with phase fringes of the other sign (not with --wide)",
    )
    parser.add_argument(
        "--jpeg-share",
        type=float,
        default=0.0,
        help="share of the 8-bit volumes that are also JPEG-compressed (not with --wide)",
    )
    parser.add_argument(
        "--outline-share",
        type=float,
        default=0.0,
        help="share of the volumes with outline bays, matrix pores and fragment debris as hard "
        "negatives (synthetic.outlines; not with --wide)",
    )
    parser.add_argument(
        "--wedge-share",
        type=float,
        default=0.0,
        help="share of the scans over 140 to 170 degrees only (missing wedge; not with --wide)",
    )
    parser.add_argument(
        "--fringe-max",
        type=float,
        default=1.2,
        help="strongest phase fringe of the scans (px^2; strength uniform from 0; not with --wide)",
    )
    parser.add_argument(
        "--no-fringe-share",
        type=float,
        default=0.0,
        help="share of the scans without phase fringes (absorption only; not with --wide)",
    )
    parser.add_argument("--min-diameter", type=float, default=18.0)
    parser.add_argument("--max-diameter", type=float, default=34.0)
    parser.add_argument(
        "--cache", type=Path, default=None, help="npz file to reuse/save the prepared slices"
    )
    args = parser.parse_args(argv)
    rng = cli.start_training(args)
    t_start = time.monotonic()

    if args.cache is not None and args.cache.is_file():
        cached = np.load(args.cache)
        train = SliceSet(cached["images"], cached["labels"], cached["valid"], cached["gaps"])
        held_out = SliceSet(
            cached["ho_images"], cached["ho_labels"], cached["ho_valid"], cached["ho_gaps"]
        )
        logger.info("loaded %d training slices from %s", len(train.images), args.cache)
    else:
        train, held_out = build_datasets(args, rng)
        if args.cache is not None:
            np.savez(
                args.cache,
                images=train.images,
                labels=train.labels,
                valid=train.valid,
                gaps=train.gaps,
                ho_images=held_out.images,
                ho_labels=held_out.labels,
                ho_valid=held_out.valid,
                ho_gaps=held_out.gaps,
            )
    data_seconds = time.monotonic() - t_start

    cracks, gaps = crack_pixels(train), gap_pixels(train)
    model = CrackUNet(base_channels=args.base_channels)
    previous: dict = {}
    if args.init is not None:
        previous = load_crack_unet_metadata(args.init)
        start = load_crack_unet(args.init, device=torch.device("cpu"))
        model = start if start.in_channels == CONTEXT_SLICES else inflate_input(model, start)
        model.train()

    def loss_of_step() -> torch.Tensor:
        image, label, valid, gap = augment_batch(
            train,
            args.batch,
            args.tile,
            rng,
            cracks=cracks,
            crack_share=args.crack_share,
            gaps=gaps,
            gap_share=args.gap_share,
        )
        return crack_loss(model(image), label, valid, gap, args.gap_weight)

    run = cli.train_with_options(
        model, loss_of_step, args, evaluate=lambda: evaluate(model, held_out, [0.5]), key=KEY
    )

    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
    scores = evaluate(model, held_out, thresholds)
    logger.info("held-out scores: %s", scores)
    metadata = {
        **cli.run_metadata(args, run, data_seconds=data_seconds, key=KEY),
        "held_out": {"shape": [12, args.size, args.size], "seed": 991_000, **scores},
        "normalization": "models.crack_unet.reference_levels (1st, 99.5th percentile) per volume",
        "threshold": 0.5,
    }
    if previous:
        metadata["initialised_from"] = previous
    cli.save_trained(save_crack_unet, model, args.out, metadata)
    return 0
