"""Particle benchmark: ``python -m benchmarks.particles_benchmark``.

Prints (and with ``--json PATH`` saves; with ``--record`` adds the instance scores to
``models/weights/particle_unet.json``):

0. validation sets side by side (``--sets-only`` runs only this): the training family's
   held-out seeds (a smoke test), the never-trained generator family
   (:mod:`benchmarks.holdout_family`) and the real labelled crops (``tests/data/real_labels``),
   for our U-Net + watershed and the classic distance watershed on the Otsu solid: F1 at IoU
   0.5, split rate, share of predicted particle pixels in carbon/binder and labels lying mostly
   in carbon/binder (synthetic sets only: the real crops have no binder label);
1. instance segmentation on held-out reconstructed synthetic cathodes with cracks (seeds never
   used in training): detection F1 at IoU 0.5 and split rate (share of true particles covered
   by more than one predicted label) of our U-Net + seeded watershed, beside the classic
   distance-transform watershed (markers at least 5 voxels apart) on the Otsu-thresholded
   reconstruction and on the true solid phase (ideal thresholding), and on the true solid with
   markers at least 10 voxels apart (fewer splits, more merges). Scores are computed inside
   the square inscribed in the reconstruction circle (outside it the reconstruction is 0);
2. flaw classification: slice and particle accuracy and ROC AUC of the shipped classifier on
   held-out synthetic particles (ground-truth masks), and the particle accuracy when the
   particles come from our instance segmentation instead (all particles, and those not
   touching the volume border or the outside of the reconstruction circle);
3. degree of detachment when no phase segmentation is given: mean absolute error (and bias) of
   the per-particle detachment against the one computed with the true phases, for the learned
   estimate (:func:`pipelines.particles.detachment.estimate_phase_learned`, the default) and
   the grey-level one (:func:`pipelines.particles.detachment.estimate_phase`), on the held-out
   volumes of 1; with the true particle labels, and with our instance labels (each matched to
   the true particle it overlaps most, at least half of it). Also the share of right pore/
   binder calls on the non-particle voxels within 2 px of a particle and on those sharing a
   face with one (true labels). ``--record-phase`` adds these to ``phase_net.json``;
4. time of :func:`pipelines.particles.analyze.analyze_particles` on a 64 x 192 x 192 volume and
   its linear extrapolation to 512^3 (the watershed and the network scale about linearly with
   the number of voxels), with the seconds of each stage, and of the two phase estimates on a
   64 x 512 x 512 slab extrapolated to 512^3; ``--full-size 512`` times a whole 512^3 volume as
   well (``--timing-only`` skips 1 to 3).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from benchmarks.validation_sets import (
    SETS,
    Case,
    holdout_family,
    markdown_table,
    mean_rows,
    real_crops,
    real_group_means,
    training_family,
)
from models.envelope_unet import load_envelope_unet
from models.flaw_cnn import load_flaw_cnn
from models.particle_unet import DEFAULT_WEIGHTS, load_particle_unet
from models.phase_net import DEFAULT_WEIGHTS as PHASE_WEIGHTS
from models.phase_net import load_phase_net
from pipelines.cracks.evaluate import particle_scores
from pipelines.cracks.particle_mask import solid_threshold
from pipelines.particles.analyze import analyze_particles
from pipelines.particles.detachment import (
    degree_of_detachment,
    estimate_phase,
    estimate_phase_learned,
)
from pipelines.particles.evaluate import instance_scores
from pipelines.particles.instances import InstanceParams, segment_instances, watershed_baseline
from pipelines.tomo.fbp import inside_circle
from synthetic.cathode import SOLID, make_cathode_volume
from synthetic.reconstructed import ReconstructedCathode, make_reconstructed_cathode
from training.flaw_cnn import TEST_SEEDS, particle_slices, scores

HELD_OUT_SEEDS = (990_101, 990_102, 990_103)
SHAPE = (48, 128, 128)


def inscribed_crop(n: int) -> slice:
    """Slice of the square inscribed in the reconstruction circle of an n x n slice."""
    margin = int(math.ceil(n / 2 - n / (2 * math.sqrt(2)))) + 2
    return slice(margin, n - margin)


def baseline_solid(recon: np.ndarray) -> np.ndarray:
    """Otsu-thresholded, lightly smoothed reconstruction: the conventional solid mask."""
    smooth = ndimage.gaussian_filter(recon.astype(np.float32), 1.0)
    return smooth > solid_threshold(smooth)


def instance_case(
    sample: ReconstructedCathode, model: Any, params: InstanceParams | None = None
) -> dict[str, dict[str, float]]:
    """Scores of ours and the two baselines on one reconstructed sample."""
    crop = inscribed_crop(sample.recon.shape[2])
    window = (slice(None), crop, crop)
    truth = sample.truth.particle_ids[window]
    ours = segment_instances(sample.recon, params, model=model).labels[window]
    otsu = watershed_baseline(baseline_solid(sample.recon))[window]
    ideal = watershed_baseline(sample.truth.phase == SOLID)[window]
    ideal_wide = watershed_baseline(sample.truth.phase == SOLID, min_distance=10)[window]
    out = {}
    for name, labels in (
        ("ours", ours),
        ("watershed_otsu", otsu),
        ("watershed_true_solid", ideal),
        ("watershed_true_solid_min_distance_10", ideal_wide),
    ):
        s = instance_scores(labels, truth)
        out[name] = {
            "f1": s.f1,
            "split_rate": s.split_rate,
            "precision": s.precision,
            "recall": s.recall,
            "n_true": s.n_true,
            "n_pred": s.n_pred,
        }
    return out


def set_case(
    case: Case,
    model: Any,
    params: InstanceParams | None = None,
    envelope_model: Any = None,
) -> dict[str, dict[str, float]]:
    """Scores of our instances and the Otsu watershed baseline on one validation case."""
    w = case.window
    ours = segment_instances(case.recon, params, model=model, envelope_model=envelope_model).labels
    otsu = watershed_baseline(baseline_solid(case.recon), min_size=case.min_size)
    binder = None if case.binder is None else case.binder[w]
    ignore = None if case.ignore is None else case.ignore[w]
    return {
        name: particle_scores(
            labels[w], case.particle_ids[w], binder=binder, ignore=ignore, min_size=case.min_size
        ).as_dict()
        for name, labels in (("ours", ours), ("watershed_otsu", otsu))
    }


def sets_benchmark(
    model: Any, params: InstanceParams | None = None, envelope_model: Any = None
) -> dict[str, Any]:
    """Instance scores on the three validation sets, per case and averaged per set."""
    out: dict[str, Any] = {}
    for name, cases in zip(SETS, (training_family(), holdout_family(), real_crops()), strict=True):
        per_case = {c.name: set_case(c, model, params, envelope_model) for c in cases}
        out[name] = {
            "cases": per_case,
            "mean": {
                m: mean_rows([v[m] for v in per_case.values()]) for m in ("ours", "watershed_otsu")
            },
        }
    out.update(real_group_means(out[SETS[2]]["cases"]))
    return out


SET_COLUMNS = (
    ("f1", "F1 @ IoU 0.5"),
    ("split_rate", "split rate"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("binder_share", "px in binder"),
    ("labels_in_binder", "labels in binder"),
)


def sets_table(sets: dict[str, Any]) -> str:
    """The validation sets side by side, one row per set and method."""
    lines = markdown_table(sets, SET_COLUMNS, ("ours", "watershed_otsu"))
    return "\n".join(lines)


def instance_benchmark(model: Any, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Instance scores per held-out volume and their mean."""
    per_volume = {}
    for seed in seeds:
        sample = make_reconstructed_cathode(SHAPE, seed=seed, crack_density=1.5)
        per_volume[str(seed)] = instance_case(sample, model)
    mean: dict[str, dict[str, float]] = {}
    for method in next(iter(per_volume.values())):
        mean[method] = {
            key: float(np.mean([v[method][key] for v in per_volume.values()]))
            for key in ("f1", "split_rate", "precision", "recall")
        }
    return {"shape": list(SHAPE), "crack_density": 1.5, "per_volume": per_volume, "mean": mean}


def flaw_benchmark(flaw_model: Any, particle_model: Any) -> dict[str, Any]:
    """Flaw classifier scores on ground-truth particle masks and on our instances."""
    from training.flaw_cnn import concat

    shape = (48, 128, 128)
    truth_masks = concat(
        [particle_slices(shape, s, 1.0, None, i * 10_000) for i, s in enumerate(TEST_SEEDS)]
    )
    on_truth = scores(flaw_model, truth_masks)
    # whole pipeline: our instances, matched to true particles by their largest overlap; all
    # particles, and those not touching the volume border or the outside of the circle
    correct, total, correct_inner, total_inner = 0, 0, 0, 0
    for seed in TEST_SEEDS:
        sample = make_reconstructed_cathode(shape, seed=seed, crack_density=1.0)
        result = analyze_particles(
            sample.recon, particle_model=particle_model, flaw_model=flaw_model
        )
        ids, crack = sample.truth.particle_ids, sample.truth.crack_mask
        for row in result.table:
            inside = result.labels == row["label"]
            true_ids, counts = np.unique(ids[inside], return_counts=True)
            best = int(true_ids[np.argmax(counts)])
            if best == 0 or counts.max() < 0.5 * inside.sum():
                continue
            true_mask = ids == best
            frac = float((crack & true_mask).sum()) / float(true_mask.sum())
            if 0 < frac < 0.005:
                continue  # ambiguous, as in training
            right = int(bool(row["flawed"]) == (frac >= 0.005))
            total += 1
            correct += right
            if not row["touches_border"]:
                total_inner += 1
                correct_inner += right
    return {
        "ground_truth_masks": on_truth,
        "pipeline_particle_accuracy": correct / total if total else float("nan"),
        "pipeline_particles": total,
        "pipeline_particle_accuracy_not_touching_border": (
            correct_inner / total_inner if total_inner else float("nan")
        ),
        "pipeline_particles_not_touching_border": total_inner,
    }


def matched_detachment(
    labels: np.ndarray, truth_ids: np.ndarray, estimated: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Detachment of our labels paired with the true particle each overlaps most (>= half)."""
    ours, theirs = [], []
    n = int(truth_ids.max()) + 1
    for label, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        inside = labels[sl] == label
        counts = np.bincount(truth_ids[sl][inside].ravel(), minlength=n)
        best = int(np.argmax(counts))
        if best == 0 or counts[best] < 0.5 * inside.sum():
            continue
        ours.append(estimated[label])
        theirs.append(reference[best])
    return np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)


def error_of(estimated: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean absolute error and bias over the particles where both are defined."""
    ok = np.isfinite(estimated) & np.isfinite(reference)
    diff = estimated[ok] - reference[ok]
    return {
        "mae": float(np.abs(diff).mean()),
        "bias": float(diff.mean()),
        "particles": int(ok.sum()),
    }


def detachment_case(sample: ReconstructedCathode, phase_model: Any, particle_model: Any) -> dict:
    """Detachment errors and pore/binder accuracy of both estimates on one sample."""
    ids, truth_phase = sample.truth.particle_ids, sample.truth.phase
    reference = degree_of_detachment(ids, truth_phase).detachment
    solid = ids > 0
    within_2 = ~solid & (ndimage.distance_transform_edt(~solid) <= 2.0)
    faces = ~solid & ndimage.binary_dilation(solid, ndimage.generate_binary_structure(3, 1))
    ours = segment_instances(sample.recon, model=particle_model).labels
    out: dict[str, Any] = {}
    for name, estimate in (
        ("learned", lambda lab: estimate_phase_learned(sample.recon, lab, model=phase_model)),
        ("grey", lambda lab: estimate_phase(sample.recon, lab)),
    ):
        phase = estimate(ids)
        det = degree_of_detachment(ids, phase).detachment
        pipeline = degree_of_detachment(ours, estimate(ours)).detachment
        out[name] = {
            "true_labels": error_of(det, reference),
            "pipeline_labels": error_of(*matched_detachment(ours, ids, pipeline, reference)),
            "accuracy_within_2px": float((phase[within_2] == truth_phase[within_2]).mean()),
            "accuracy_surface_neighbours": float((phase[faces] == truth_phase[faces]).mean()),
        }
    return out


def detachment_benchmark(
    phase_model: Any, particle_model: Any, seeds: tuple[int, ...]
) -> dict[str, Any]:
    """Detachment errors per held-out volume and their mean, learned vs grey-level estimate."""
    per_volume = {}
    for seed in seeds:
        sample = make_reconstructed_cathode(SHAPE, seed=seed, crack_density=1.5)
        per_volume[str(seed)] = detachment_case(sample, phase_model, particle_model)
    first = next(iter(per_volume.values()))
    mean: dict[str, dict[str, float]] = {}
    for method, entries in first.items():
        mean[method] = {}
        for key, value in entries.items():
            if isinstance(value, dict):
                for sub in ("mae", "bias"):
                    mean[method][f"{key}_{sub}"] = float(
                        np.mean([v[method][key][sub] for v in per_volume.values()])
                    )
            else:
                mean[method][key] = float(np.mean([v[method][key] for v in per_volume.values()]))
    return {"shape": list(SHAPE), "crack_density": 1.5, "per_volume": per_volume, "mean": mean}


def noisy_cathode(shape: tuple[int, int, int], seed: int) -> tuple[Any, np.ndarray]:
    """A synthetic cathode and its attenuation with reconstruction-like noise, 0 outside the
    reconstruction circle (for timings: no projection and reconstruction needed)."""
    truth = make_cathode_volume(shape, seed=seed, crack_density=1.0)
    rng = np.random.default_rng(seed)
    volume = truth.attenuation + rng.normal(0.0, 0.001, shape).astype(np.float32)
    volume[:, ~inside_circle(shape[1])] = 0
    return truth, volume


def phase_timing(phase_model: Any) -> dict[str, Any]:
    """Seconds of both phase estimates on a 64 x 512 x 512 slab, extrapolated to 512^3.

    The slab is a synthetic cathode's attenuation with reconstruction-like noise and zeros
    outside the reconstruction circle, its true particle instances as labels.
    """
    shape = (64, 512, 512)
    truth, volume = noisy_cathode(shape, seed=990_302)
    labels = truth.particle_ids
    out: dict[str, Any] = {"shape": list(shape), "threads": torch.get_num_threads()}
    for name, estimate in (
        ("learned", lambda: estimate_phase_learned(volume, labels, model=phase_model)),
        ("grey", lambda: estimate_phase(volume, labels)),
    ):
        t0 = time.perf_counter()
        estimate()
        seconds = time.perf_counter() - t0
        out[name] = {
            "seconds": seconds,
            "seconds_per_512_slice": seconds / shape[0],
            "estimated_seconds_512_cubed": seconds * 512 / shape[0],
        }
    return out


def timing_benchmark(particle_model: Any, flaw_model: Any) -> dict[str, Any]:
    """Seconds for analyze_particles on 64 x 192 x 192 (reconstructed), extrapolated to 512^3."""
    shape = (64, 192, 192)
    sample = make_reconstructed_cathode(shape, seed=990_201, crack_density=1.0, randomize=False)
    t0 = time.perf_counter()
    result = analyze_particles(sample.recon, particle_model=particle_model, flaw_model=flaw_model)
    seconds = time.perf_counter() - t0
    scale = 512**3 / float(np.prod(shape))
    return {
        "shape": list(shape),
        "seconds": seconds,
        "stage_seconds": result.seconds,
        "particles": len(result.table),
        "estimated_seconds_512_cubed": seconds * scale,
        "threads": torch.get_num_threads(),
    }


def full_size_timing(size: int, particle_model: Any, flaw_model: Any) -> dict[str, Any]:
    """Seconds for analyze_particles on a whole size^3 volume.

    Projecting and reconstructing a 512^3 phantom would take longer than the analysis, so the
    volume is the synthetic cathode's attenuation with reconstruction-like noise and zeros
    outside the reconstruction circle (the particle density, hence the work per voxel, is that
    of a reconstructed scan).
    """
    t0 = time.perf_counter()
    truth, volume = noisy_cathode((size, size, size), seed=990_301)
    generate = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = analyze_particles(
        volume, crack_mask=truth.crack_mask, particle_model=particle_model, flaw_model=flaw_model
    )
    seconds = time.perf_counter() - t0
    return {
        "shape": [size] * 3,
        "seconds": seconds,
        "stage_seconds": result.seconds,
        "particles": len(result.table),
        "generate_seconds": generate,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also save the results here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None, help="particle U-Net weights")
    parser.add_argument(
        "--envelope-merge",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="merge instances by the learned envelope (default InstanceParams' default)",
    )
    parser.add_argument(
        "--envelope-fill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with the envelope merge, fill envelope components holding one instance",
    )
    parser.add_argument(
        "--bridge-envelope",
        type=float,
        default=None,
        help="InstanceParams.merge_bridge_envelope (bridging pixels need this envelope "
        "probability)",
    )
    parser.add_argument(
        "--trim-dark-outline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="InstanceParams.trim_dark_outline (half-maximum outline pixels)",
    )
    parser.add_argument("--envelope-weights", type=Path, default=None)
    parser.add_argument("--flaw-weights", type=Path, default=None)
    parser.add_argument("--phase-weights", type=Path, default=None, help="phase net weights")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--sets-only", action="store_true", help="only the validation sets (0)")
    parser.add_argument("--timing-only", action="store_true", help="skip the accuracy parts")
    parser.add_argument(
        "--detachment-only", action="store_true", help="only the detachment errors (part 3)"
    )
    parser.add_argument(
        "--full-size",
        type=int,
        default=0,
        metavar="N",
        help="also time a whole N^3 volume (512 for the goal; about 6 min and 10 GB of RAM)",
    )
    parser.add_argument(
        "--record", action="store_true", help="add the instance scores to particle_unet.json"
    )
    parser.add_argument(
        "--record-phase", action="store_true", help="add the detachment scores to phase_net.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    particle_model = load_particle_unet(args.weights, device=cpu)
    flaw_model = load_flaw_cnn(args.flaw_weights, device=cpu)
    phase_model = load_phase_net(args.phase_weights, device=cpu)
    results: dict[str, Any] = {"threads": args.threads}
    chosen = {
        k: v
        for k, v in (
            ("envelope_merge", args.envelope_merge),
            ("envelope_fill", args.envelope_fill),
            ("merge_bridge_envelope", args.bridge_envelope),
            ("trim_dark_outline", args.trim_dark_outline),
        )
        if v is not None
    }
    params = InstanceParams(**chosen)
    results["instance_params"] = params.model_dump()
    envelope_model = (
        load_envelope_unet(args.envelope_weights, device=cpu) if params.envelope_merge else None
    )
    if not args.timing_only and not args.detachment_only:
        results["validation_sets"] = sets_benchmark(particle_model, params, envelope_model)
        print("validation sets (means; per case in --json):")
        print(sets_table(results["validation_sets"]))
    if args.sets_only:
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if not args.timing_only and not args.detachment_only:
        results["instances"] = instance_benchmark(particle_model, HELD_OUT_SEEDS)
        print("instances (mean):", json.dumps(results["instances"]["mean"], indent=1))
        results["flaw"] = flaw_benchmark(flaw_model, particle_model)
        print("flaw:", json.dumps(results["flaw"], indent=1))
    if not args.timing_only:
        results["detachment"] = detachment_benchmark(phase_model, particle_model, HELD_OUT_SEEDS)
        print("detachment:", json.dumps(results["detachment"], indent=1))
    if not args.skip_timing and not args.detachment_only:
        results["timing"] = timing_benchmark(particle_model, flaw_model)
        print("timing:", json.dumps(results["timing"], indent=1))
        results["phase_timing"] = phase_timing(phase_model)
        print("phase timing:", json.dumps(results["phase_timing"], indent=1))
    if args.full_size and not args.detachment_only:
        results["full_size"] = full_size_timing(args.full_size, particle_model, flaw_model)
        print("full size:", json.dumps(results["full_size"], indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.record and "instances" in results:
        path = (args.weights or DEFAULT_WEIGHTS).with_suffix(".json")
        meta = json.loads(path.read_text())
        meta["held_out_instances"] = {
            "seeds": list(HELD_OUT_SEEDS),
            **{k: v for k, v in results["instances"].items() if k != "per_volume"},
            "measured_by": "python -m benchmarks.particles_benchmark --record",
        }
        path.write_text(json.dumps(meta, indent=2) + "\n")
    if args.record_phase and ("detachment" in results or "phase_timing" in results):
        path = (args.phase_weights or PHASE_WEIGHTS).with_suffix(".json")
        meta = json.loads(path.read_text())
        measured_by = "python -m benchmarks.particles_benchmark --record-phase"
        if "detachment" in results:
            meta["held_out_detachment"] = {
                "seeds": list(HELD_OUT_SEEDS),
                **results["detachment"],
                "measured_by": measured_by,
            }
        if "phase_timing" in results:
            meta["timing"] = {**results["phase_timing"], "measured_by": measured_by}
        path.write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
