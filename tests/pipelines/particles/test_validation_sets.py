"""The shipped particle instances on data no network trained on: the never-trained generator
family (:mod:`benchmarks.holdout_family`) and the real labelled crops (``tests/data/real_labels``).

Floors sit just below what ``python -m benchmarks.particles_benchmark --sets-only`` measured on
the same cases; unmet goals of issue 13 are strict xfails naming the measured number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.holdout_family import DamageKind, make_single_particle
from benchmarks.validation_sets import (
    FIRST_REAL_CROPS,
    Case,
    holdout_family,
    mean_rows,
    real_crops,
)
from pipelines.cracks.evaluate import particle_scores
from pipelines.particles.instances import InstanceParams, segment_instances


def _scores(cases: list[Case], params: InstanceParams | None = None) -> dict[str, float]:
    rows = []
    for c in cases:
        w = c.window
        labels = segment_instances(c.recon, params).labels[w]
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


# the history of numbers below was measured on the first four labelled crops: ``real`` scores
# them alone; the nine crops of 2026-12-01 are scored in test_real_crops_enlarged_floor
@pytest.fixture(scope="module")
def real() -> dict[str, Any]:
    return _scores(real_crops(FIRST_REAL_CROPS))


# measured with the shipped weights before the contact merge (pipelines.particles.merge):
# never-trained family F1 0.81, split rate 17.6 %; real crops F1 0.43, split rate 48 %.
# With it: never-trained F1 0.899, split 6.1 %, no label in binder; real crops F1 0.795,
# split 16.2 %. With the learned-envelope merge (models.envelope_unet, threshold 0.7, the
# default): never-trained F1 0.950, split 0 %; real crops F1 0.803, split 10.0 %. With the
# corrected nmc86_fragments labels (two touching particles were one instance) 0.811, split
# 8.1 %, precision 0.741; with the instance acceptance (pipelines.particles.accept, default
# since 2026-11-30) real crops F1 0.856, precision 0.820, split 8.1 %; with its voxel trim
# (trim_unlike_voxels) F1 0.879, precision 0.850, recall 0.913; never-trained unchanged.
# With the envelope neck test (InstanceParams.envelope_min_neck 0.25, 2026-11-30): real crops
# F1 0.888, recall 0.931; never-trained F1 0.962, recall 0.953.
def test_holdout_floor(holdout: dict[str, Any]) -> None:
    assert holdout["f1"] >= 0.94
    assert holdout["split_rate"] <= 0.02
    assert holdout["labels_in_binder"] == 0
    assert holdout["binder_share"] <= 0.03


def test_holdout_goal(holdout: dict[str, Any]) -> None:
    # issue 13 goal, met with the learned-envelope merge (0.950, split 0 %)
    assert holdout["f1"] >= 0.95
    assert holdout["split_rate"] <= 0.02


def test_real_crops_floor(real: dict[str, Any]) -> None:
    assert real["f1"] >= 0.87  # 0.856 without the voxel trim, 0.879 without the neck test
    assert real["precision"] >= 0.82  # 0.741 without the acceptance
    assert real["split_rate"] <= 0.10


@pytest.mark.xfail(strict=True, reason="goal F1 >= 0.9 on the real crops; measured 0.888")
def test_real_crops_goal(real: dict[str, Any]) -> None:
    assert real["f1"] >= 0.9


def test_real_crops_with_the_half_maximum_outline() -> None:
    # InstanceParams(trim_dark_outline=True), an option: 0.922, precision 0.892, recall 0.956
    # (2026-11-30; never-trained and training family F1 unchanged, but their particles 3-4 %
    # too small: README issue 13, 'Outline'). Of its 3 more matches on the real crops, 2 are
    # objects of 162-165 px that shrink under the labels' 150 px bound.
    scores = _scores(real_crops(FIRST_REAL_CROPS), InstanceParams(trim_dark_outline=True))
    assert scores["f1"] >= 0.91
    assert scores["precision"] >= 0.88
    assert scores["split_rate"] <= 0.10


# measured 2026-12-01 on the nine crops (five added that day): F1 0.902, precision 0.853,
# recall 0.958, split 6.6 % (first four 0.888, the five added 0.912: the goal of 0.9 is
# judged on the first four above, since the mean of nine passes it only through the easier
# added crops); with the half-maximum outline 0.909 (the five added 0.898, below the default)
def test_real_crops_enlarged_floor() -> None:
    scores = _scores(real_crops())
    assert scores["f1"] >= 0.895
    assert scores["precision"] >= 0.84
    assert scores["split_rate"] <= 0.08
    trimmed = _scores(real_crops(), InstanceParams(trim_dark_outline=True))
    assert trimmed["f1"] >= 0.905


def _one_label(kind: DamageKind, seed: int, params: InstanceParams | None = None) -> bool:
    v = make_single_particle(kind, seed=seed)
    labels = segment_instances(v.recon, params).labels
    truth = v.particle_ids == 1
    ids, counts = np.unique(labels[truth], return_counts=True)
    big = counts[(ids > 0) & (counts >= 0.05 * truth.sum())]
    return len(big) == 1 and big[0] >= 0.85 * truth.sum()


SEEDS = range(6)


def test_hollow_core_particle_gets_one_label() -> None:
    # before the contact merge: split in three (seed 1); now one label on all 6 seeds
    assert all(_one_label("hollow", seed) for seed in SEEDS)


def test_through_cracked_particle_gets_one_label_always() -> None:
    # before the contact merge: 1 of 6 seeds; with it 3 of 6 (wide cracks that the network
    # leaves as background are not bridged); with the learned-envelope merge 6 of 6
    assert all(_one_label("through", seed) for seed in SEEDS)


def test_through_cracked_particle_is_split_without_the_envelope_merge() -> None:
    # the same seeds with the contact merge alone: the learned envelope is what joins them
    params = InstanceParams(envelope_merge=False)
    assert sum(_one_label("through", seed, params) for seed in SEEDS) <= 4
