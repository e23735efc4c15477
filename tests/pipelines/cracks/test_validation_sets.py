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

from benchmarks.holdout_family import make_single_particle
from benchmarks.validation_sets import Case, holdout_family, mean_rows, real_crops
from pipelines.cracks.evaluate import crack_scores
from pipelines.cracks.particle_mask import CONVENTIONAL, particle_mask
from pipelines.cracks.segment import map_cracks, threshold_baseline


def _scores(cases: list[Case]) -> dict[str, dict[str, float]]:
    unet, otsu = [], []
    for c in cases:
        res = map_cracks(c.recon)
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


@pytest.fixture(scope="module")
def real() -> dict[str, Any]:
    return _scores(real_crops())


# measured (shipped weights, commit of this file): never-trained family crack IoU 0.316 vs
# Otsu 0.206; real crops: 31 % of predicted crack pixels inside particles, 21 % of the
# labelled crack/void pixels found; crack-free holdout: 0.01 % false cracks.
def test_holdout_crack_iou_floor(holdout: dict[str, Any]) -> None:
    assert holdout["unet"]["iou"] >= 0.28
    assert holdout["unet"]["iou"] >= 1.3 * holdout["otsu"]["iou"]


@pytest.mark.xfail(strict=True, reason="goal crack IoU >= 0.8 and >= 1.5x Otsu; measured 0.32")
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
    assert real["unet"]["inside_particles"] >= 0.25
    assert real["unet"]["found"] >= 0.18


@pytest.mark.xfail(strict=True, reason="goal >= 90 % inside particles; measured 31 %")
def test_real_crops_predicted_cracks_inside_particles_goal(real: dict[str, Any]) -> None:
    assert real["unet"]["inside_particles"] >= 0.9


@pytest.mark.xfail(strict=True, reason="goal >= 80 % of labelled cracks/voids found; measured 21 %")
def test_real_crops_labelled_cracks_found_goal(real: dict[str, Any]) -> None:
    assert real["unet"]["found"] >= 0.8


@pytest.mark.xfail(
    strict=True,
    reason="shipped pipeline: 41 % (through) of the predicted crack pixels inside the particle; "
    "the particle mask is built by closing and splits at a through-crack",
)
@pytest.mark.parametrize("kind", ["through", "hollow"])
def test_damaged_particle_crack_map_stays_inside_its_envelope(kind: str) -> None:
    v = make_single_particle(kind, seed=1)
    res = map_cracks(v.recon)
    truth = v.particle_ids == 1
    mask = res.particle_mask.astype(bool)
    predicted = res.crack_mask.astype(bool)
    assert predicted.any()
    assert (predicted & truth).sum() >= 0.9 * predicted.sum()
    # the particle mask counts the crack / core as particle
    assert (v.crack_mask & mask).sum() >= 0.9 * v.crack_mask.sum()
    # ... and is one piece in the middle slice
    from scipy import ndimage

    z = v.recon.shape[0] // 2
    pieces, n = ndimage.label(mask[z] & truth[z])
    sizes = np.bincount(pieces.ravel())[1:]
    assert n >= 1 and sizes.max() >= 0.95 * (mask[z] & truth[z]).sum()
