"""The shipped particle instances on data no network trained on: the never-trained generator
family (:mod:`benchmarks.holdout_family`) and the real labelled crops (``tests/data/real_labels``).

Floors sit just below what ``python -m benchmarks.particles_benchmark --sets-only`` measured on
the same cases; unmet goals of issue 13 are strict xfails naming the measured number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.holdout_family import make_single_particle
from benchmarks.validation_sets import Case, holdout_family, mean_rows, real_crops
from pipelines.cracks.evaluate import particle_scores
from pipelines.particles.instances import segment_instances


def _scores(cases: list[Case]) -> dict[str, float]:
    rows = []
    for c in cases:
        w = c.window
        labels = segment_instances(c.recon).labels[w]
        rows.append(
            particle_scores(
                labels,
                c.particle_ids[w],
                binder=None if c.binder is None else c.binder[w],
                ignore=None if c.ignore is None else c.ignore[w],
                min_size=c.min_size,
            ).as_dict()
        )
    return mean_rows(rows)


@pytest.fixture(scope="module")
def holdout() -> dict[str, Any]:
    return _scores(holdout_family())


@pytest.fixture(scope="module")
def real() -> dict[str, Any]:
    return _scores(real_crops())


# measured (shipped weights, commit of this file): never-trained family F1 0.81, split rate
# 17.6 %, no label in binder; real crops F1 0.43, split rate 48 %.
def test_holdout_floor(holdout: dict[str, Any]) -> None:
    assert holdout["f1"] >= 0.75
    assert holdout["split_rate"] <= 0.22
    assert holdout["labels_in_binder"] == 0
    assert holdout["binder_share"] <= 0.03


@pytest.mark.xfail(strict=True, reason="goal F1 >= 0.95, split <= 2 %; measured 0.81, 17.6 %")
def test_holdout_goal(holdout: dict[str, Any]) -> None:
    assert holdout["f1"] >= 0.95
    assert holdout["split_rate"] <= 0.02


def test_real_crops_floor(real: dict[str, Any]) -> None:
    assert real["f1"] >= 0.38
    assert real["split_rate"] <= 0.55


@pytest.mark.xfail(strict=True, reason="goal F1 >= 0.9 on the real crops; measured 0.43")
def test_real_crops_goal(real: dict[str, Any]) -> None:
    assert real["f1"] >= 0.9


@pytest.mark.xfail(
    strict=True,
    reason="shipped U-Net splits a through-cracked particle in two (48 % / 47 %) and a "
    "hollow-core one in three",
)
@pytest.mark.parametrize("kind", ["through", "hollow"])
def test_damaged_particle_gets_one_label(kind: str) -> None:
    v = make_single_particle(kind, seed=1)
    labels = segment_instances(v.recon).labels
    truth = v.particle_ids == 1
    ids, counts = np.unique(labels[truth], return_counts=True)
    big = counts[(ids > 0) & (counts >= 0.05 * truth.sum())]
    assert len(big) == 1 and big[0] >= 0.85 * truth.sum()
