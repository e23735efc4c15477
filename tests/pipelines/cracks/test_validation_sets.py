"""The shipped crack pipeline on data no network trained on: the never-trained generator family
(:mod:`benchmarks.holdout_family`) and the real labelled crops (``tests/data/real_labels``).

Floors sit just below what ``python -m benchmarks.tomo_benchmark --sets-only`` measured on the
same cases; the goals of issue 13 that are not met yet are strict xfails naming the measured
number, so they turn into failures (to be promoted to plain tests) the day they pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from benchmarks.holdout_family import make_single_particle
from benchmarks.validation_sets import (
    FIRST_REAL_CROPS,
    Case,
    holdout_family,
    mean_rows,
    real_crops,
)
from pipelines.cracks.evaluate import crack_scores
from pipelines.cracks.particle_mask import CONVENTIONAL, particle_mask
from pipelines.cracks.segment import CrackParams, map_cracks, threshold_baseline


def _scores(cases: list[Case], params: CrackParams | None = None) -> dict[str, dict[str, float]]:
    unet, otsu = [], []
    for c in cases:
        res = map_cracks(c.recon, params)
        base = threshold_baseline(c.recon, particle_mask(c.recon, CONVENTIONAL))
        env = c.particle_ids > 0
        unet.append(crack_scores(res.crack_mask, c.cracks, env, c.valid).as_dict())
        otsu.append(crack_scores(base, c.cracks, env, c.valid).as_dict())
    return {"unet": mean_rows(unet), "otsu": mean_rows(otsu)}


@pytest.fixture(scope="module")
def holdout() -> dict[str, Any]:
    return _scores(holdout_family())


@pytest.fixture(scope="module")
def crack_free() -> dict[str, Any]:
    return _scores(holdout_family(cracked=False))


# the history of numbers below was measured on the first four labelled crops: ``real`` scores
# them alone; ``real_all`` scores all of them (nine since 2026-12-01)
@pytest.fixture(scope="module")
def real() -> dict[str, Any]:
    return _scores(real_crops(FIRST_REAL_CROPS))


@pytest.fixture(scope="module")
def real_all() -> dict[str, Any]:
    return _scores(real_crops())


# measured with the previous weights and the earlier 'closing' particle mask: never-trained
# family crack IoU 0.316 vs Otsu 0.206; real crops: 31 % of the predicted crack pixels inside
# particles, 21 % of the labelled crack/void pixels found. With the 'contact' envelope and the
# previous weights: never-trained 0.319; real crops 89 % inside, 57 % found, IoU 0.33. With the
# fine-tuned shipped weights (synthetic.damage, 8-bit renders): never-trained 0.491
# (51 % found); real crops 89 % inside, 58 % found, IoU 0.33 (Otsu 0.18); crack-free
# never-trained volumes: 0.02 % false cracks. With crack pieces under 8 px on the particle
# outline dropped (CrackParams.min_edge_crack_px): never-trained 0.487 (50.5 % found); real
# crops 93.4 % inside, 58 % found, IoU 0.339; crack-free 0.01 %. With zeros enclosed by data
# no longer taken as outside the reconstruction circle (saturated 8-bit core voids): real crops
# 93.4 % inside, 59.9 % found, IoU 0.356; never-trained unchanged. With the weights fine-tuned
# on fringes of both signs (2026-12-01): never-trained 0.553 (59.7 % found); real crops 94.2 %
# inside, 68.6 % found (mean of the crops; pooled over their pixels 73.4 %, before 74.9 %),
# IoU 0.357; crack-free never-trained volumes 0.10 % false cracks.
def test_holdout_crack_iou_floor(holdout: dict[str, Any]) -> None:
    assert holdout["unet"]["iou"] >= 0.52
    assert holdout["unet"]["iou"] >= 2.0 * holdout["otsu"]["iou"]


@pytest.mark.xfail(
    strict=True, reason="goal crack IoU >= 0.8 and >= 1.5x Otsu; measured 0.553 (Otsu 0.206)"
)
def test_holdout_crack_iou_goal(holdout: dict[str, Any]) -> None:
    assert holdout["unet"]["iou"] >= 0.8
    assert holdout["unet"]["iou"] >= 1.5 * holdout["otsu"]["iou"]


def test_holdout_crack_free_volumes_get_at_most_1_percent_false_cracks(
    crack_free: dict[str, Any],
) -> None:
    assert crack_free["unet"]["false_crack_fraction"] <= 0.01
    # the baseline calls the dark half of every particle a crack: the check can fail
    assert crack_free["otsu"]["false_crack_fraction"] > 0.1


def test_real_crops_floor(real: dict[str, Any]) -> None:
    assert real["unet"]["inside_particles"] >= 0.85
    assert real["unet"]["found"] >= 0.62
    assert real["unet"]["iou"] >= 1.6 * real["otsu"]["iou"]


# goal met since crack pieces under 8 px on the particle outline are dropped
# (CrackParams.min_edge_crack_px): 89.2 % -> 93.4 % with the same weights
def test_real_crops_predicted_cracks_inside_particles_goal(real: dict[str, Any]) -> None:
    assert real["unet"]["inside_particles"] >= 0.9


@pytest.mark.xfail(strict=True, reason="goal >= 80 % of labelled cracks/voids found; measured 69 %")
def test_real_crops_labelled_cracks_found_goal(real: dict[str, Any]) -> None:
    assert real["unet"]["found"] >= 0.8


# measured 2026-12-01 on the nine crops (five added that day, with only 97 of the 2 219
# labelled crack/void pixels; three of them have none, and their crack IoU counts as 0):
# inside 91.1 %, found 79.1 % (mean of the six crops with labels; pooled 74.6 %), IoU 0.189
# vs Otsu 0.081; on the five added crops 0.46 % of the particle pixels predicted as cracks
# (inside 88.6 %: the misses sit in the gaps between touching particles)
def test_real_crops_enlarged_floor(real_all: dict[str, Any]) -> None:
    assert real_all["unet"]["inside_particles"] >= 0.90
    assert real_all["unet"]["found"] >= 0.77
    assert real_all["unet"]["iou"] >= 2.0 * real_all["otsu"]["iou"]
    added = [c for c in real_crops() if c.name.removeprefix("real ") not in FIRST_REAL_CROPS]
    assert _scores(added)["unet"]["false_crack_fraction"] <= 0.006


INLETS = CrackParams(inlet_radius_px=6)


@pytest.fixture(scope="module")
def real_inlets() -> dict[str, Any]:
    return _scores(real_crops(FIRST_REAL_CROPS), INLETS)


# measured 2026-11-30 (opt-in surface inlets, radius 6): real crops found 59.9 -> 65.9 %, IoU
# 0.356 -> 0.375, inside 93.4 -> 91.9 %; never-trained IoU 0.487 -> 0.494; crack-free 0.05 %
def test_real_crops_surface_inlets_find_more_and_stay_inside(
    real: dict[str, Any], real_inlets: dict[str, Any]
) -> None:
    assert real_inlets["unet"]["found"] >= real["unet"]["found"] + 0.04
    assert real_inlets["unet"]["iou"] >= real["unet"]["iou"] + 0.01
    assert real_inlets["unet"]["inside_particles"] >= 0.9


@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-01 on the nine crops: inlets lower the inside share 91.1 -> 82.0 % "
    "and the IoU 0.189 -> 0.186 (on the five added crops inside 88.6 -> 72.9 %: the inlets "
    "mark the gaps between touching particles)",
)
def test_real_crops_enlarged_surface_inlets_stay_inside(real_all: dict[str, Any]) -> None:
    inlets = _scores(real_crops(), INLETS)
    assert inlets["unet"]["inside_particles"] >= 0.9
    assert inlets["unet"]["iou"] >= real_all["unet"]["iou"]


# measured 0.14 % with the weights of 2026-12-01 (0.05 % before; goal of issue 13: <= 1 %)
def test_surface_inlets_add_at_most_02_percent_false_cracks_on_crack_free_volumes() -> None:
    free = _scores(holdout_family(cracked=False), INLETS)
    assert free["unet"]["false_crack_fraction"] <= 0.002


def _single(kind: str, seed: int) -> dict[str, float]:
    v = make_single_particle(kind, seed=seed)
    res = map_cracks(v.recon)
    truth = v.particle_ids == 1
    mask = res.particle_mask.astype(bool)
    predicted = res.crack_mask.astype(bool)
    z = v.recon.shape[0] // 2
    pieces, n = ndimage.label(mask[z] & truth[z])
    biggest = np.bincount(pieces.ravel())[1:].max() if n else 0
    return {
        "predicted_inside": (predicted & truth).sum() / max(predicted.sum(), 1),
        "true_inside_mask": (v.crack_mask & mask).sum() / v.crack_mask.sum(),
        "found": (predicted & v.crack_mask).sum() / v.crack_mask.sum(),
        "one_piece": biggest / max((mask[z] & truth[z]).sum(), 1),
        "any": float(predicted.any()),
    }


SEEDS = range(6)


@pytest.fixture(scope="module")
def singles() -> dict[str, list[dict[str, float]]]:
    return {kind: [_single(kind, s) for s in SEEDS] for kind in ("through", "hollow")}


# Measured with the 'contact' envelope and the fine-tuned weights (before, with the 'closing'
# mask and the previous weights: 41 % of the predicted crack pixels of a through-cracked
# particle inside it, the particle mask in pieces; with the 'contact' envelope and the previous
# weights: hollow core found 20-89 %, through-crack mask one piece on 3/6 seeds, found 0.3-17 %).
# With the weights before those of 2026-12-01 (which pass the same checks): hollow core:
# predicted cracks inside the particle 98.7-100 %, mask one piece on 6/6
# seeds, 94-100 % of the true core/cracks inside the mask, 70-99 % found; through-crack:
# predicted cracks inside on 5/6 seeds (46 % on one), mask one piece on 5/6, found 12-99 %.
def test_hollow_core_particle_crack_map_stays_inside_one_envelope(singles: dict) -> None:
    for s in singles["hollow"]:
        assert s["any"] and s["predicted_inside"] >= 0.95
        assert s["one_piece"] >= 0.95
        assert s["true_inside_mask"] >= 0.9
        assert s["found"] >= 0.65


def test_through_cracked_particle_crack_map_mostly_inside_its_envelope(singles: dict) -> None:
    rows = singles["through"]
    assert sum(s["any"] and s["predicted_inside"] >= 0.9 for s in rows) >= 5
    assert sum(s["one_piece"] >= 0.95 for s in rows) >= 5


@pytest.mark.xfail(
    strict=True,
    reason="goal: a through-crack is found and inside one envelope on every seed; measured: "
    "mask one piece on 5/6 seeds, 12-99 % of the crack found",
)
def test_through_cracked_particle_goal(singles: dict) -> None:
    for s in singles["through"]:
        assert s["one_piece"] >= 0.95 and s["true_inside_mask"] >= 0.9 and s["found"] >= 0.5
