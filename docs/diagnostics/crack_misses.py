"""Where the shipped crack pipeline misses labelled crack pixels (issue 13 diagnosis, scratch).

``PYTHONPATH=$PWD python docs/diagnostics/crack_misses.py hold|real|train``: per case and pooled
over a set, the share of the true crack/void pixels missed, split by the network's probability
there, by whether they lie outside the pipeline's particle envelope, by local crack width, by
distance to the true particle outline and (never-trained family) by damage kind. Not a test;
the numbers of 2026-11-30 are in the README section of issue 13.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from scipy import ndimage

from benchmarks.holdout_family import make_holdout_volume
from benchmarks.validation_sets import holdout_family, real_crops, training_family
from models.crack_unet import (
    CrackUNet,
    context_stacks,
    load_crack_unet,
    normalize_slices,
    reference_levels,
)
from pipelines.cracks.segment import CrackParams, map_cracks, unet_tile_model
from pipelines.cracks.tiling import apply_tiled


def probabilities(model: CrackUNet, vol: np.ndarray) -> np.ndarray:
    low, high = reference_levels(vol)
    stacks = context_stacks(normalize_slices(vol, low, high), 0, len(vol))
    prob = np.asarray(apply_tiled(stacks, unet_tile_model(model), tile_size=512, overlap=32))
    return prob * (vol != 0)


def local_width(cracks: np.ndarray) -> np.ndarray:
    out = np.zeros(cracks.shape, np.float32)
    for z in range(cracks.shape[0]):
        depth = ndimage.distance_transform_edt(cracks[z])
        out[z] = ndimage.maximum_filter(depth, size=5) * 2 * cracks[z]
    return out


def main(which: str) -> None:
    torch.set_num_threads(1)
    model = load_crack_unet()
    cases = {"hold": holdout_family, "real": real_crops, "train": training_family}[which]()
    total: dict[str, int] = {}

    def add(key: str, value: np.ndarray | int) -> None:
        total[key] = total.get(key, 0) + int(np.sum(value))

    for c in cases:
        prob = probabilities(model, c.recon)
        res = map_cracks(c.recon, CrackParams(), model=model)
        pred, env = res.crack_mask.astype(bool), res.particle_mask.astype(bool)
        truth = c.cracks & c.valid
        miss = truth & ~pred
        add("true", truth)
        add("found", truth & pred)
        for lo, hi in ((0, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 1.01)):
            add(f"missed_prob_{lo}-{hi}", miss & (prob >= lo) & (prob < hi))
        add("missed_outside_envelope", miss & ~env)
        add("missed_outside_envelope_prob>=0.5", miss & ~env & (prob >= 0.5))
        width = local_width(truth)
        for lo, hi in ((0, 3), (3, 6), (6, 12), (12, 999)):
            sel = truth & (width >= lo) & (width < hi)
            add(f"true_width_{lo}-{hi}", sel)
            add(f"missed_width_{lo}-{hi}", miss & sel)
        rim = np.stack([ndimage.distance_transform_edt(s) <= 3 for s in c.particle_ids > 0])
        add("true_within_3px_of_outline", truth & rim)
        add("missed_within_3px_of_outline", miss & rim)
        if which == "hold":
            kinds = make_holdout_volume(c.recon.shape, seed=int(c.name.split()[1])).kinds
            for kind in ("through", "hollow", "fragmented", "surface"):
                ids = [i for i, k in kinds.items() if k == kind]
                sel = truth & np.isin(c.particle_ids, ids)
                add(f"true_{kind}", sel)
                add(f"found_{kind}", sel & pred)
                add(f"missed_outside_envelope_{kind}", sel & miss & ~env)
    n = total.pop("true")
    numbers = {"true_pixels": n, **{k: round(v / n, 3) for k, v in total.items()}}
    print(json.dumps(numbers))  # noqa: T201 (a scratch script prints its numbers)


if __name__ == "__main__":
    main(sys.argv[1])
