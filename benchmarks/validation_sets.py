"""The three validation sets the crack and particle benchmarks score side by side.

1. ``training family``: held-out seeds of the generator the networks train on
   (:func:`synthetic.reconstructed.make_reconstructed_cathode`) -- a smoke test only;
2. ``never-trained family``: :mod:`benchmarks.holdout_family`, written apart, used by no
   training script;
3. ``real crops``: the labelled crops of the real APS nano-CT slices (``tests/data/real_labels``);
   the benchmarks also print their means over the first four crops and over the five added on
   2026-12-01 (:data:`REAL_GROUPS`), because the added crops hold few labelled cracks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.holdout_family import make_holdout_volume
from pipelines.tomo.fbp import inside_circle
from synthetic.cathode import BINDER
from synthetic.reconstructed import make_reconstructed_cathode

TRAINING_FAMILY_SEEDS = (777_001, 777_002)
HOLDOUT_SEEDS = (424_001, 424_002, 424_003, 424_004)
TRAINING_SHAPE = (16, 160, 160)
HOLDOUT_SHAPE = (16, 192, 192)
SETS = ("training family", "never-trained family", "real crops")
# the real crops labelled first (until 2026-11-30); the others were added on 2026-12-01
FIRST_REAL_CROPS = ("nmc87_hollow", "nmc87_voids", "nmc86_fragments", "nmc86_large")
REAL_GROUPS = ("real crops: first four", "real crops: added 2026-12-01")


@dataclass
class Case:
    """One scored volume: the input, its truth, and where to score.

    ``valid`` marks the voxels that are scored (inside the reconstruction circle, outside the
    unlabelled region); ``window`` is the box the instance scores are computed on; ``min_size``
    the smallest instance counted.
    """

    name: str
    recon: np.ndarray
    particle_ids: np.ndarray
    cracks: np.ndarray
    binder: np.ndarray | None
    valid: np.ndarray
    window: tuple[slice, ...]
    min_size: int = 60
    ignore: np.ndarray | None = None


def inscribed_window(n: int) -> tuple[slice, ...]:
    """(all z, the square inscribed in the reconstruction circle of an n x n slice)."""
    margin = int(math.ceil(n / 2 - n / (2 * math.sqrt(2)))) + 2
    return (slice(None), slice(margin, n - margin), slice(margin, n - margin))


def training_family(
    shape: tuple[int, int, int] = TRAINING_SHAPE,
    seeds: tuple[int, ...] = TRAINING_FAMILY_SEEDS,
    *,
    crack_density: float = 1.5,
) -> list[Case]:
    """Held-out seeds of the training generator."""
    out = []
    for seed in seeds:
        s = make_reconstructed_cathode(shape, seed=seed, crack_density=crack_density)
        out.append(
            Case(
                name=f"train-family {seed}",
                recon=s.recon,
                particle_ids=s.truth.particle_ids,
                cracks=s.truth.crack_mask.astype(bool),
                binder=s.truth.phase == BINDER,
                valid=np.broadcast_to(inside_circle(shape[2]), shape),
                window=inscribed_window(shape[2]),
            )
        )
    return out


def holdout_family(
    shape: tuple[int, int, int] = HOLDOUT_SHAPE,
    seeds: tuple[int, ...] = HOLDOUT_SEEDS,
    *,
    cracked: bool = True,
) -> list[Case]:
    """The never-trained generator family (crack-free variant with ``cracked=False``)."""
    out = []
    for seed in seeds:
        v = make_holdout_volume(shape, seed=seed, cracked=cracked)
        out.append(
            Case(
                name=f"holdout {seed}" + ("" if cracked else " crack-free"),
                recon=v.recon,
                particle_ids=v.particle_ids,
                cracks=v.crack_mask,
                binder=v.binder_mask,
                valid=np.broadcast_to(inside_circle(shape[2]), shape),
                window=inscribed_window(shape[2]),
            )
        )
    return out


def real_crops(names: Sequence[str] | None = None) -> list[Case]:
    """The labelled real crops as one-slice volumes (objects under 150 px not counted); all of
    them, or those of the given ``names`` (e.g. :data:`FIRST_REAL_CROPS`)."""
    from tests.conftest import SHARED_DATA
    from tests.data.real_labels import load_labelled_crops

    crops = load_labelled_crops(SHARED_DATA)
    if names is not None:
        unknown = set(names) - {c.name for c in crops}
        if unknown:
            raise ValueError(f"names: no labelled crop called {sorted(unknown)}")
        crops = [c for c in crops if c.name in names]
    out = []
    for c in crops:
        out.append(
            Case(
                name=f"real {c.name}",
                recon=c.image[np.newaxis],
                particle_ids=c.instances[np.newaxis],
                cracks=c.cracks[np.newaxis],
                binder=None,
                valid=~c.ignore[np.newaxis],
                window=(slice(None),) * 3,
                min_size=150,
                ignore=c.ignore[np.newaxis],
            )
        )
    return out


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each numeric key over rows, ignoring NaN (NaN when all are NaN)."""
    out: dict[str, float] = {}
    for key in rows[0]:
        values = np.asarray([r[key] for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
    return out


def real_group_means(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict]:
    """Means of the real crops' per-case scores (``{"real <name>": {method: row}}``) over the
    first four crops and over the added ones, as ``{group: {"cases": [...], "mean": ...}}``
    (a group without cases is left out)."""
    first = {f"real {n}" for n in FIRST_REAL_CROPS}
    members = {
        REAL_GROUPS[0]: [k for k in per_case if k in first],
        REAL_GROUPS[1]: [k for k in per_case if k not in first],
    }
    out: dict[str, dict] = {}
    for group, keys in members.items():
        if keys:
            methods = per_case[keys[0]]
            out[group] = {
                "cases": keys,
                "mean": {m: mean_rows([per_case[k][m] for k in keys]) for m in methods},
            }
    return out


def markdown_table(
    sets: dict, columns: tuple[tuple[str, str], ...], methods: tuple[str, ...]
) -> list[str]:
    """Markdown lines of the validation sets' mean scores: one row per set and method.

    ``sets[name]["mean"][method]`` maps each column key of ``columns`` ((key, title) pairs)
    to a number; the rows of :data:`REAL_GROUPS` follow the sets when ``sets`` holds them.
    """
    lines = [
        "| set | method | " + " | ".join(t for _, t in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name in (*SETS, *(g for g in REAL_GROUPS if g in sets)):
        for method in methods:
            row = sets[name]["mean"][method]
            cells = " | ".join(f"{row[k]:.3f}" for k, _ in columns)
            lines.append(f"| {name} | {method} | {cells} |")
    return lines
