"""The crack network against the imaging conditions, on the TRAINING generator (issue 13).

``PYTHONPATH=$PWD python docs/diagnostics/crack_conditions.py [WEIGHTS ...]``: for 3 volumes of
the training generator (seeds 61-63, 12 x 160 x 160, half the particles damaged, seeds no
training run uses), each scanned and reconstructed (project FBP) under one condition at a time:
phase fringes +0.6 / 0 / -0.6, a 150-degree missing wedge, 53 sparse angles, 8 bit; the bare
network's crack IoU and found share at probability 0.5. This is the training-family validation
used to choose weights: it uses neither the never-trained family nor the real crops.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from models.crack_unet import load_crack_unet, predict_probabilities
from synthetic.cathode import DetectorParams
from synthetic.damage import damaged_cathode_volume
from synthetic.reconstructed import random_cathode_params
from synthetic.scan import quantize_8bit
from training.crack_unet import SliceSet, _labelled_slices, _scan

# name: (phase fringe, angle range, number of angles, 8 bit)
CONDITIONS = {
    "fringe +0.6": (0.6, 180.0, 224, False),
    "fringe 0": (0.0, 180.0, 224, False),
    "fringe -0.6": (-0.6, 180.0, 224, False),
    "wedge 150": (0.6, 150.0, 224, False),
    "sparse 53": (0.6, 180.0, 53, False),
    "8 bit, fringe -0.3": (-0.3, 180.0, 224, True),
}


def scores(model: torch.nn.Module, data: SliceSet) -> tuple[float, float]:
    probs = np.concatenate(
        [
            predict_probabilities(model, data.images[i : i + 4])
            for i in range(0, len(data.images), 4)
        ]
    )
    truth = (data.labels > 0.5) & (data.valid > 0)
    pred = (probs >= 0.5) & (data.valid > 0)
    inter = float((pred & truth).sum())
    return inter / max(float((pred | truth).sum()), 1.0), inter / max(float(truth.sum()), 1.0)


def condition_sets() -> dict[str, list[SliceSet]]:
    out: dict[str, list[SliceSet]] = {k: [] for k in CONDITIONS}
    for seed in (61, 62, 63):
        rng = np.random.default_rng(seed)
        vol = damaged_cathode_volume(
            (12, 160, 160),
            rng,
            seed=seed,
            crack_density=1.2,
            params=random_cathode_params(rng, (18.0, 50.0)),
            depth_gradient=False,
            damage_share=0.5,
        )
        for name, (fringe, degrees, n_angles, eight_bit) in CONDITIONS.items():
            det = DetectorParams(
                photons=2e4, phase_fringe=fringe, blur_sigma_px=0.7, ring_fraction=0.03
            )
            recon = _scan(
                vol.attenuation,
                seed,
                np.random.default_rng(seed + 1),
                det,
                n_angles,
                degrees,
                method="fbp",
            )
            if eight_bit:
                recon = quantize_8bit(recon, np.random.default_rng(seed + 2))
            out[name].append(_labelled_slices(recon, vol))
    return out


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    sets = condition_sets()
    print("| weights | " + " | ".join(CONDITIONS) + " | mean IoU |")  # noqa: T201
    for path in argv or [None]:
        model = load_crack_unet(path)
        cells, ious = [], []
        for name in CONDITIONS:
            pairs = [scores(model, s) for s in sets[name]]
            iou, found = (
                float(np.mean([p[0] for p in pairs])),
                float(np.mean([p[1] for p in pairs])),
            )
            ious.append(iou)
            cells.append(f"{iou:.3f} / {found:.3f}")
        label = path or "shipped"
        print(f"| {label} | " + " | ".join(cells) + f" | {np.mean(ious):.3f} |", flush=True)  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1:])
