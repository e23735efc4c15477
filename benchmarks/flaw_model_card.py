"""Model card numbers of the shipped flaw classifier: ``python -m benchmarks.flaw_model_card``.

Confusion matrices and ROC curves of :mod:`models.flaw_cnn` (shipped weights) on two
validation sets it never trained on:

1. ``training family, held-out seeds``: volumes of the training generator
   (:func:`synthetic.reconstructed.make_reconstructed_cathode`) with the seeds
   :data:`training.flaw_cnn.TEST_SEEDS`, used neither for training nor for choosing the
   checkpoint;
2. ``never-trained family``: :mod:`benchmarks.holdout_family` volumes (other particle shapes,
   damage kinds and detector model), written apart and used by no training script.

Each particle is sampled as at inference (10 slices over the central 80 % of its height, the
true particle mask); a slice is flawed when its crack pixels are at least ``max(4, 1 %)`` of its
area and unflawed when it has none (in between: not scored); a particle is flawed when cracks
are at least 0.5 % of its voxels and unflawed without any (the training script's truth). The
particle call is the shipped rule (at least 4 of 10 slices scoring >= 0.5); its ROC curve uses
the mean slice score. Particles reaching outside the reconstruction circle are left out.

Writes ``docs/model_card/flaw_cnn_confusion.png``, ``flaw_cnn_roc.png`` and
``flaw_cnn_validation.json`` (``--out DIR`` elsewhere); ``docs/model_card/flaw_cnn.md`` quotes
them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.holdout_family import make_holdout_volume
from models.crack_unet import normalize_slices, reference_levels
from models.flaw_cnn import (
    MIN_FLAWED_SLICES,
    load_flaw_cnn,
    load_flaw_cnn_metadata,
    predict_flaw_scores,
    roc_auc,
)
from pipelines.particles.evaluate import confusion_matrix, roc_curve
from training.flaw_cnn import (
    TEST_SEEDS,
    SliceSet,
    concat,
    particle_slices,
    sample_particles,
)

OUT = Path(__file__).resolve().parents[1] / "docs" / "model_card"
TRAINING_SHAPE = (48, 128, 128)
HOLDOUT_SHAPE = (48, 160, 160)
HOLDOUT_SEEDS = (515_001, 515_002, 515_003, 515_004, 515_005, 515_006)
SLICE_THRESHOLD = 0.5


def training_family() -> SliceSet:
    sets = [
        particle_slices(TRAINING_SHAPE, s, 1.0, None, i * 10_000) for i, s in enumerate(TEST_SEEDS)
    ]
    merged = concat(sets)
    merged.images = merged.images.astype(np.float32)
    return merged


def holdout_slices(seed: int, key_offset: int) -> SliceSet:
    """Sampled slices of every particle of one never-trained volume."""
    sample = make_holdout_volume(HOLDOUT_SHAPE, seed=seed)
    recon = np.asarray(sample.recon, dtype=np.float32)
    normalized = normalize_slices(recon, *reference_levels(recon))
    return sample_particles(
        normalized, sample.particle_ids, sample.crack_mask, key_offset, dtype=np.float32
    )


def holdout_family() -> SliceSet:
    return concat([holdout_slices(s, i * 10_000) for i, s in enumerate(HOLDOUT_SEEDS)])


def _rates(matrix: np.ndarray) -> dict[str, float]:
    (tn, fp), (fn, tp) = matrix
    total = matrix.sum()
    return {
        "accuracy": float((tp + tn) / total) if total else float("nan"),
        "precision": float(tp / (tp + fp)) if tp + fp else float("nan"),
        "recall": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
    }


def evaluate(model: Any, data: SliceSet) -> dict[str, Any]:
    """Slice and particle confusion matrices, ROC curves and AUCs."""
    prob = predict_flaw_scores(model, data.images)
    known = data.labels >= 0
    y = data.labels[known] == 1
    slice_matrix = confusion_matrix(y, prob[known] >= SLICE_THRESHOLD)
    fpr, tpr, _ = roc_curve(prob[known], y)
    keys = np.unique(data.particle)
    n_flawed = np.array([(prob[data.particle == k] >= SLICE_THRESHOLD).sum() for k in keys])
    mean_score = np.array([prob[data.particle == k].mean() for k in keys])
    truth = np.array([data.particle_label[data.particle == k][0] for k in keys])
    scored = truth >= 0
    particle_matrix = confusion_matrix(truth[scored] == 1, n_flawed[scored] >= MIN_FLAWED_SLICES)
    p_fpr, p_tpr, _ = roc_curve(mean_score[scored], truth[scored] == 1)
    return {
        "slices": {
            "confusion": slice_matrix.tolist(),
            "auc": roc_auc(prob[known], y),
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
            "n": int(known.sum()),
            "n_ambiguous": int((~known).sum()),
            **_rates(slice_matrix),
        },
        "particles": {
            "confusion": particle_matrix.tolist(),
            "auc": roc_auc(mean_score[scored], truth[scored] == 1),
            "roc": {"fpr": p_fpr.tolist(), "tpr": p_tpr.tolist()},
            "n": int(scored.sum()),
            "n_ambiguous": int((~scored).sum()),
            **_rates(particle_matrix),
        },
    }


def plot(results: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7.5))
    for j, name in enumerate(names):
        for i, level in enumerate(("slices", "particles")):
            ax = axes[i, j]
            matrix = np.asarray(results[name][level]["confusion"])
            ax.imshow(matrix, cmap="Blues", vmin=0)
            for (r, c), value in np.ndenumerate(matrix):
                colour = "white" if value > matrix.max() / 2 else "black"
                ax.text(c, r, str(value), ha="center", va="center", color=colour, fontsize=14)
            ax.set_xticks([0, 1], ["unflawed", "flawed"])
            ax.set_yticks([0, 1], ["unflawed", "flawed"])
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            rule = (
                f"score >= {SLICE_THRESHOLD}"
                if level == "slices"
                else f">= {MIN_FLAWED_SLICES} of 10 slices"
            )
            acc = results[name][level]["accuracy"]
            ax.set_title(f"{name}\n{level} ({rule}), accuracy {acc:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "flaw_cnn_confusion.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, level in zip(axes, ("slices", "particles"), strict=True):
        for name in names:
            r = results[name][level]
            ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], label=f"{name}: AUC {r['auc']:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        what = "slice score" if level == "slices" else "mean slice score of the particle"
        ax.set_title(f"{level}: ROC of the {what}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "flaw_cnn_roc.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    model = load_flaw_cnn(device=torch.device("cpu"))
    sets = {
        "training family, held-out seeds": (training_family, list(TEST_SEEDS), TRAINING_SHAPE),
        "never-trained family": (holdout_family, list(HOLDOUT_SEEDS), HOLDOUT_SHAPE),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, (build, seeds, shape) in sets.items():
        results[name] = {"seeds": seeds, "shape": list(shape), **evaluate(model, build())}
        summary = {lvl: results[name][lvl]["confusion"] for lvl in ("slices", "particles")}
        print(name, json.dumps(summary), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out)
    record = {
        "weights": "models/weights/flaw_cnn.pt",
        "trained_with": load_flaw_cnn_metadata().get("config"),
        "slice_threshold": SLICE_THRESHOLD,
        "particle_rule": f">= {MIN_FLAWED_SLICES} of 10 slices score >= {SLICE_THRESHOLD}",
        "seconds": round(time.monotonic() - t0, 1),
        "torch": str(torch.__version__),
        "sets": results,
    }
    (args.out / "flaw_cnn_validation.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
