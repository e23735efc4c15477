"""Post-processing of the crack network's probability, without retraining (issue 13, scratch).

``PYTHONPATH=$PWD python docs/diagnostics/crack_postprocessing.py [--fresh]``: the shipped
network's probabilities of every case are computed once, then the 'contact' crack map is
rebuilt from them with each variant, scored per set (crack IoU / found / inside particles,
false cracks on the crack-free volumes). ``--fresh`` adds 8 never-trained volumes of other seeds
(424005-424012, not used to choose anything). Variants:

- ``shipped``: ``CrackParams()`` (the script checks it equals ``map_cracks``);
- ``hysteresis L``: crack pixels >= L joined (8-connected, in-slice) to pixels >= 0.5;
- ``inlets 6``: ``CrackParams(inlet_radius_px=6)`` (``particle_mask.surface_inlets``);
- ``seeded gaps``: dark-or-not pixels outside the envelope in its closing of radius 3, in pieces
  that touch two envelope pieces and hold >= 20 % network pixels >= 0.5;
- ``dark growth``: the map's cracks grown (2 steps, 8-neighbours) within the envelope into
  pixels darker than half way from the slice's dark level (median below the solid threshold)
  to the particle's local solid level (Gaussian-weighted mean of its solid pixels, sigma 5);
- ``half scale``: the network also run on the slice averaged 2 x 2, its probability
  (upsampled) joining the full-scale one (maximum) for the crack and bridge candidates.

Not a test; the numbers of 2026-11-30 are in the README section of issue 13.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import apply_hysteresis_threshold
from skimage.morphology import disk

from benchmarks.validation_sets import Case, holdout_family, real_crops, training_family
from models.crack_unet import context_stacks, load_crack_unet, normalize_slices, reference_levels
from pipelines.cracks.evaluate import crack_scores
from pipelines.cracks.particle_mask import (
    binary_dilate,
    binary_erode,
    drop_edge_specks,
    particle_envelope_slice,
    solid_threshold,
    surface_inlets,
)
from pipelines.cracks.segment import CrackParams, map_cracks, reconstructed_area, unet_tile_model
from pipelines.cracks.tiling import apply_tiled

P = CrackParams()


def probabilities(net: Callable, vol: np.ndarray, half: bool = False) -> np.ndarray:
    low, high = reference_levels(vol)
    v = vol.astype(np.float32)
    if half:
        z, h, w = v.shape
        v = v[:, : h // 2 * 2, : w // 2 * 2].reshape(z, h // 2, 2, w // 2, 2).mean((2, 4))
    prob = np.asarray(
        apply_tiled(context_stacks(normalize_slices(v, low, high)), net, tile_size=512, overlap=32)
    )
    if not half:
        return prob
    up = np.zeros(vol.shape, np.float32)
    zoomed = ndimage.zoom(prob, (1, 2, 2), order=1)
    up[:, : zoomed.shape[1], : zoomed.shape[2]] = zoomed
    return up


def seeded_gaps(envelope: np.ndarray, prob: np.ndarray, inside: np.ndarray) -> np.ndarray:
    r = 3
    fp = disk(r).astype(bool)
    closed = binary_erode(binary_dilate(np.pad(envelope, r), fp), fp)[r:-r, r:-r]
    gaps, n = ndimage.label(closed & ~envelope & inside, np.ones((3, 3)))
    if not n:
        return np.zeros_like(envelope)
    seeds = np.bincount(gaps[(prob >= 0.5) & (gaps > 0)], minlength=n + 1)
    keep = (seeds >= 1) & (seeds >= 0.2 * np.bincount(gaps.ravel(), minlength=n + 1))
    pieces, _ = ndimage.label(envelope)
    near = ndimage.grey_dilation(gaps, size=(3, 3))
    ring = envelope & (near > 0)
    pairs = np.unique(np.stack([near[ring], pieces[ring]], 1), axis=0)
    keep &= np.bincount(pairs[:, 0], minlength=n + 1) >= 2
    keep[0] = False
    return keep[gaps]


def contact_slice(image, prob, half, thr, variant: str) -> tuple[np.ndarray, np.ndarray]:
    inside = image != 0
    if variant.startswith("half"):
        prob = np.maximum(prob, half)
    if variant.startswith("hysteresis"):
        crack = apply_hysteresis_threshold(prob, float(variant.split()[1]), P.threshold)
    else:
        crack = prob >= P.threshold
    crack &= inside
    bridge = ((prob >= P.bridge_threshold) | crack) & inside
    envelope, voids = particle_envelope_slice(image, thr, P.particle, bridge=bridge, cracks=crack)
    crack = (crack | voids) & envelope
    added = np.zeros_like(envelope)
    if variant == "inlets 6":
        added = surface_inlets(image, thr, envelope, radius=6) & inside
    if variant == "seeded gaps":
        added = seeded_gaps(envelope, prob, inside)
    envelope, crack = envelope | added, crack | added
    crack &= reconstructed_area(image)
    crack = drop_edge_specks(crack, envelope, P.min_edge_crack_px)
    if variant == "dark growth":
        crack = dark_growth(image, thr, crack, envelope)
    return crack, envelope


def dark_growth(image, thr, crack, envelope) -> np.ndarray:
    inside = image != 0
    solid = envelope & (image > thr)
    weight = ndimage.gaussian_filter(solid.astype(np.float32), 5)
    level = ndimage.gaussian_filter(np.where(solid, image, 0).astype(np.float32), 5)
    level /= np.maximum(weight, 1e-3)
    values = image[inside]
    dark_level = np.median(values[values <= thr])
    dark = envelope & inside & (weight > 0.05) & (image <= (dark_level + level) / 2)
    return ndimage.binary_dilation(crack, np.ones((3, 3), bool), iterations=2, mask=dark | crack)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    model = load_crack_unet()
    net = unet_tile_model(model)
    fresh = tuple(range(424_005, 424_013))
    sets: dict[str, list[Case]] = {
        "training family": training_family(),
        "never-trained family": holdout_family(),
        "real crops": real_crops(),
        "crack-free": holdout_family(cracked=False),
    }
    if "--fresh" in argv:
        sets["never-trained, seeds 424005-12"] = holdout_family(seeds=fresh)
        sets["crack-free, seeds 424005-12"] = holdout_family(seeds=fresh, cracked=False)
    variants = (
        "shipped",
        "hysteresis 0.3",
        "hysteresis 0.2",
        "inlets 6",
        "seeded gaps",
        "dark growth",
        "half",
    )
    print("| set | " + " | ".join(variants) + " |")  # noqa: T201 (a scratch script prints)
    for name, cases in sets.items():
        rows: dict[str, list] = {v: [] for v in variants}
        for c in cases:
            prob, half = probabilities(net, c.recon), probabilities(net, c.recon, half=True)
            thr = solid_threshold(c.recon)
            for v in variants:
                pairs = [
                    contact_slice(c.recon[z], prob[z], half[z], thr, v) for z in range(len(prob))
                ]
                crack = np.stack([p[0] for p in pairs])
                if v == "shipped":
                    ref = map_cracks(c.recon, P, model=model).crack_mask.astype(bool)
                    assert np.array_equal(ref, crack), (
                        "the rebuilt crack map differs from map_cracks"
                    )
                rows[v].append(crack_scores(crack, c.cracks, c.particle_ids > 0, c.valid))
        if name.startswith("crack-free"):
            cells = [f"{np.mean([s.false_crack_fraction for s in rows[v]]):.5f}" for v in variants]
        else:
            cells = [
                "/".join(
                    f"{np.nanmean([getattr(s, k) for s in rows[v]]):.3f}"
                    for k in ("iou", "found", "inside_particles")
                )
                for v in variants
            ]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1:])
