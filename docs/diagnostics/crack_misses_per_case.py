"""Per case: why the crack pipeline misses what it misses (issue 13 diagnosis, scratch).

``PYTHONPATH=$PWD python docs/diagnostics/crack_misses_per_case.py [WEIGHTS]``: for every case
of the never-trained family and the real crops, the scan conditions (never-trained: angular
scheme, fringe sign and strength, 8 bit or float), the share of the true crack/void pixels the
bare network finds at probability >= 0.5 / 0.2 / 0.05 and the pipeline finds, the missed share
outside the pipeline's envelope, and found per local crack width, near the true outline
(<= 3 px) and (never-trained) per damage kind. Not a test; numbers in the README (issue 13).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy import ndimage

from benchmarks.holdout_family import make_holdout_volume
from benchmarks.validation_sets import holdout_family, real_crops
from models.crack_unet import context_stacks, load_crack_unet, normalize_slices, reference_levels
from pipelines.cracks.segment import CrackParams, map_cracks, unet_tile_model
from pipelines.cracks.tiling import apply_tiled


def conditions(seed: int) -> str:
    """The draws of ``holdout_family.scan_and_reconstruct`` made before any data-sized draw."""
    rng = np.random.default_rng(seed + 7)
    scheme = str(rng.choice(["full", "full", "sparse", "wedge"]))
    if scheme == "wedge":
        scheme += f" {rng.uniform(140, 165):.0f} deg"
    fringe = float(rng.uniform(0.0, 0.6)) * float(rng.choice([-1.0, 1.0]))
    photons = float(10 ** rng.uniform(3.6, 4.8))
    blur = (float(rng.uniform(0.3, 1.1)), float(rng.uniform(0.3, 1.1)))
    return (
        f"{scheme}, fringe {fringe:+.2f}, photons {photons:.0f}, blur {blur[0]:.1f}/{blur[1]:.1f}"
    )


def width_of(cracks: np.ndarray) -> np.ndarray:
    out = np.zeros(cracks.shape, np.float32)
    for z in range(len(cracks)):
        depth = ndimage.distance_transform_edt(cracks[z])
        out[z] = ndimage.maximum_filter(depth, size=5) * 2 * cracks[z]
    return out


def share(a: np.ndarray, b: np.ndarray) -> str:
    n = int(b.sum())
    return f"{a.sum() / n:.2f} ({n})" if n else "-"


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    model = load_crack_unet(argv[0]) if argv else load_crack_unet()
    net = unet_tile_model(model)
    for c in holdout_family() + real_crops():
        vol = c.recon
        low, high = reference_levels(vol)
        prob = np.asarray(
            apply_tiled(
                context_stacks(normalize_slices(vol.astype(np.float32), low, high)),
                net,
                tile_size=512,
                overlap=32,
            )
        )
        res = map_cracks(vol, CrackParams(), model=model)
        pred, env = res.crack_mask.astype(bool), res.particle_mask.astype(bool)
        truth = c.cracks & c.valid
        miss = truth & ~pred
        bits = "8 bit" if np.array_equal(vol, np.round(vol)) and vol.max() <= 255 else "float"
        head = f"{c.name}: {bits}"
        if c.name.startswith("holdout"):
            head += ", " + conditions(int(c.name.split()[1]))
        print(head)  # noqa: T201 (a scratch script prints)
        print(  # noqa: T201
            "  true px",
            int(truth.sum()),
            "| net>=0.5",
            share(truth & (prob >= 0.5), truth),
            "net>=0.2",
            share(truth & (prob >= 0.2), truth),
            "net>=0.05",
            share(truth & (prob >= 0.05), truth),
            "| pipeline",
            share(truth & pred, truth),
            "| missed outside envelope",
            share(miss & ~env, truth),
            "| predicted px",
            int((pred & c.valid).sum()),
        )
        w = width_of(truth)
        bands = ((0, 3), (3, 6), (6, 12), (12, 999))
        band = [truth & (w >= lo) & (w < hi) for lo, hi in bands]
        cells = [
            f"w {lo}-{hi}: {share(b & pred, b)}" for (lo, hi), b in zip(bands, band, strict=True)
        ]
        rim = np.stack([ndimage.distance_transform_edt(s) <= 3 for s in c.particle_ids > 0])
        cells.append(f"<=3px of outline: {share(truth & pred & rim, truth & rim)}")
        if c.name.startswith("holdout"):
            kinds = make_holdout_volume(vol.shape, seed=int(c.name.split()[1])).kinds
            for kind in ("through", "hollow", "fragmented", "surface"):
                sel = truth & np.isin(c.particle_ids, [i for i, k in kinds.items() if k == kind])
                cells.append(f"{kind}: {share(sel & pred, sel)}")
        print("  " + " | ".join(cells), flush=True)  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1:])
