"""Overlays of the shipped pipelines on the real labelled crops: ``python -m
benchmarks.real_overlays [--out docs/real_labels]``.

For each crop writes ``<out>/predicted_<name>.png``: labels (instance outlines in green, cracks
and voids in red) | crack map (red) and the crack pipeline's particle envelope (cyan outline) |
particle instances (yellow outlines); 2x size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from skimage import io
from skimage.segmentation import find_boundaries

from benchmarks.validation_sets import real_crops
from pipelines.cracks.segment import map_cracks
from pipelines.particles.instances import segment_instances


def _panel(grey: np.ndarray, outlines: np.ndarray, colour: tuple, red: np.ndarray) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    rgb[red] = 0.35 * rgb[red] + 0.65 * np.array([255.0, 0.0, 0.0])
    rgb[outlines] = colour
    return rgb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/real_labels"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for case in real_crops():
        grey = case.recon[0].astype(np.float32)
        cracks = map_cracks(case.recon)
        labels = segment_instances(case.recon).labels[0]
        none = np.zeros(grey.shape, dtype=bool)
        panels = [
            _panel(grey, find_boundaries(case.particle_ids[0]), (0, 220, 0), case.cracks[0]),
            _panel(
                grey,
                find_boundaries(cracks.particle_mask[0] > 0),
                (0, 230, 230),
                cracks.crack_mask[0] > 0,
            ),
            _panel(grey, find_boundaries(labels), (255, 230, 0), none),
        ]
        gap = np.full((grey.shape[0], 4, 3), 255.0)
        row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
        big = np.repeat(np.repeat(row, 2, axis=0), 2, axis=1)
        name = case.name.removeprefix("real ")
        io.imsave(args.out / f"predicted_{name}.png", np.clip(big, 0, 255).astype(np.uint8))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
