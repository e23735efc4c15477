"""Particle recall against particle diameter, and the stage of the instance pipeline that loses
the small ones: ``python -m benchmarks.small_particles [--family never-trained|training]
[--diameters 8 12 16 24] [--seeds 3] [--threads 1] [--json out.json]``.

The scenes come from the never-trained generator (:mod:`benchmarks.holdout_family`, its own
particle shapes, binder and detector model; no network trains on it), crack-free, with every
particle of one diameter (the longest axis; the other two 0.65 to 1 of it), or with
``--family training`` from the training generator
(:func:`synthetic.reconstructed.make_reconstructed_cathode`, crack-free, mean diameter fixed;
densely packed), the set to tune on. A true particle
counts when at least half of its drawn volume lies in the reconstruction circle's inscribed
square and no less than ``MIN_TRUE_SHARE`` of the median particle size (slivers cut by the
volume's faces are left out); it is *found* by a stage when a label of that stage covers it
with IoU > 0.5. The stages of :func:`pipelines.particles.instances.segment_instances`:

1. ``foreground``: a connected component of the particle U-Net's foreground (>= 0.5);
2. ``watershed``: the seeded watershed, before the size filter;
3. ``min_size``: after ``InstanceParams.min_size``;
4. ``merged``: after the contact and envelope merges and the hole fill;
5. ``accepted``: after :mod:`pipelines.particles.accept` (the acceptance and the voxel trim:
   the shipped output, ``segment_instances(recon).labels``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from benchmarks.holdout_family import make_holdout_volume
from benchmarks.validation_sets import inscribed_window
from models.envelope_unet import load_envelope_unet, predict_envelope
from models.particle_unet import load_particle_unet, predict_maps
from pipelines.particles.accept import drop_unlike_particles, trim_unlike_voxels
from pipelines.particles.instances import (
    InstanceParams,
    instances_from_maps,
    labels_from_maps,
    normalize_volume,
    remove_small,
)
from synthetic.reconstructed import make_reconstructed_cathode

DIAMETERS = (8, 12, 16, 24)
SHAPE = (32, 128, 128)
SEED0 = 515_000
TRAINING_SEED0 = 616_000
FAMILIES = ("never-trained", "training")
MIN_TRUE_SHARE = 0.5
STAGES = ("foreground", "watershed", "min_size", "merged", "accepted")


def small_scene(diameter: float, seed: int, shape: tuple[int, int, int] = SHAPE) -> Any:
    """A crack-free never-trained-family scan whose particles are all ``diameter`` px long."""
    return make_holdout_volume(
        shape,
        seed=seed,
        cracked=False,
        quantize_8bit=False,
        size_range=(diameter / 2, diameter / 2),
        density=0.5,
    )


def training_scene(
    diameter: float, seed: int, shape: tuple[int, int, int] = SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction, particle ids) of a crack-free training-generator scan of mean diameter
    ``diameter`` px."""
    s = make_reconstructed_cathode(
        shape, seed=seed, crack_density=0.0, diameter_px=(diameter, diameter)
    )
    return s.recon, s.truth.particle_ids


def counted_particles(ids: np.ndarray, window: tuple[slice, ...]) -> np.ndarray:
    """Ids of the true particles that are scored (see the module docstring)."""
    sizes = np.bincount(ids.ravel())
    in_window = np.bincount(ids[window].ravel(), minlength=sizes.size)
    present = np.flatnonzero(sizes)
    present = present[present > 0]
    if present.size == 0:
        return present
    typical = float(np.median(sizes[present]))
    ok = (in_window[present] >= 0.5 * sizes[present]) & (sizes[present] >= MIN_TRUE_SHARE * typical)
    return present[ok]


def found(labels: np.ndarray, ids: np.ndarray, wanted: np.ndarray) -> int:
    """How many of the ``wanted`` true ids a label of ``labels`` covers with IoU > 0.5."""
    lab = labels.astype(np.int64)
    both = (lab > 0) & (ids > 0)
    base = int(lab.max()) + 1
    pairs, overlap = np.unique(ids[both].astype(np.int64) * base + lab[both], return_counts=True)
    t, p = pairs // base, pairs % base
    t_size = np.bincount(ids.ravel())
    p_size = np.bincount(lab.ravel())
    iou = overlap / (t_size[t] + p_size[p] - overlap)
    hit = np.unique(t[iou > 0.5])
    return int(np.isin(wanted, hit).sum())


def stage_labels(
    recon: np.ndarray, params: InstanceParams, model: Any, envelope_model: Any
) -> dict[str, np.ndarray]:
    """The labels after each stage of ``segment_instances`` (same steps, same order; a test checks
    that the last equals its output)."""
    vol = np.asarray(recon, dtype=np.float32)
    normalized = normalize_volume(vol)
    foreground, distance = predict_maps(model, normalized, batch_size=params.batch_size)
    envelope = predict_envelope(envelope_model, normalized, batch_size=params.batch_size)
    foreground[vol == 0] = 0.0
    envelope[vol == 0] = 0.0
    components, _ = ndimage.label(foreground >= params.foreground_threshold)
    unfiltered = params.model_copy(update={"min_size": 0})
    watershed = instances_from_maps(foreground, distance, unfiltered)
    merged = labels_from_maps(
        foreground,
        distance,
        params,
        envelope=envelope >= params.envelope_threshold,
        envelope_probability=envelope,
    )
    bounds = {
        "min_envelope": params.min_envelope_probability,
        "min_solid_reach": params.min_solid_reach,
        "valid": vol != 0,
    }
    accepted = drop_unlike_particles(merged, normalized, foreground, envelope=envelope, **bounds)
    if params.trim_unlike_voxels:
        trimmed = trim_unlike_voxels(accepted, normalized, foreground, envelope, **bounds)
        accepted = remove_small(trimmed, params.min_size)
    return {
        "foreground": components,
        "watershed": watershed,
        "min_size": remove_small(watershed, params.min_size),
        "merged": merged,
        "accepted": accepted,
    }


def recall_by_diameter(
    diameters: tuple[float, ...] = DIAMETERS,
    seeds: int = 3,
    params: InstanceParams | None = None,
    family: str = "never-trained",
) -> dict[str, Any]:
    """Per diameter: counted true particles, their median size and the recall of each stage."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    p = params if params is not None else InstanceParams()
    model, envelope_model = load_particle_unet(), load_envelope_unet()
    window = inscribed_window(SHAPE[2])
    out: dict[str, Any] = {}
    for d in diameters:
        n_true = 0
        hits = dict.fromkeys(STAGES, 0)
        sizes: list[int] = []
        for k in range(seeds):
            if family == "training":
                recon, ids = training_scene(d, TRAINING_SEED0 + 100 * k + int(d))
            else:
                scene = small_scene(d, SEED0 + 100 * k + int(d))
                recon, ids = scene.recon, scene.particle_ids
            wanted = counted_particles(ids, window)
            n_true += int(wanted.size)
            sizes += np.bincount(ids.ravel())[wanted].tolist()
            for stage, labels in stage_labels(recon, p, model, envelope_model).items():
                hits[stage] += found(labels, ids, wanted)
        out[str(d)] = {
            "n_true": n_true,
            "median_voxels": float(np.median(sizes)) if sizes else float("nan"),
            **{f"recall_{s}": hits[s] / n_true if n_true else float("nan") for s in STAGES},
        }
    return out


def table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`recall_by_diameter`."""
    lines = [
        "| diameter px | particles | median voxels | " + " | ".join(STAGES) + " |",
        "|---|---|---|" + "---|" * len(STAGES),
    ]
    for d, row in result.items():
        cells = " | ".join(f"{row[f'recall_{s}']:.2f}" for s in STAGES)
        lines.append(f"| {d} | {row['n_true']} | {row['median_voxels']:.0f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="never-trained")
    parser.add_argument("--diameters", type=float, nargs="+", default=list(DIAMETERS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-size", type=int, default=None, help="InstanceParams.min_size")
    parser.add_argument(
        "--bridge-envelope",
        type=float,
        default=None,
        help="InstanceParams.merge_bridge_envelope",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    update: dict[str, Any] = {}
    if args.min_size is not None:
        update["min_size"] = args.min_size
    if args.bridge_envelope is not None:
        update["merge_bridge_envelope"] = args.bridge_envelope
    params = InstanceParams(**update)
    result = recall_by_diameter(tuple(args.diameters), args.seeds, params, args.family)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
