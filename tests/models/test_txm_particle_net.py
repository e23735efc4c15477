"""Shipped TXM particle network: size, metadata, and its score on unseen synthetic frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import txm_particle_net as net
from synthetic.txm_detection import HELD_OUT_SEED_START, detection_sample
from training.txm_particle_net import (
    build_parser,
    net_labels,
    object_scores,
    summarize_scores,
    wide_randomisation,
)

# Seeds used neither for training (< HELD_OUT_SEED_START) nor for the score in the JSON sidecar
# (the first --held-out seeds from HELD_OUT_SEED_START).
TEST_SEEDS = range(HELD_OUT_SEED_START + 5_000, HELD_OUT_SEED_START + 5_012)


@pytest.fixture(scope="module")
def model() -> net.TxmParticleNet:
    return net.load_txm_particle_net(device=torch.device("cpu"))


def test_shipped_weights_are_small_and_documented() -> None:
    weights = net.DEFAULT_WEIGHTS
    assert weights.is_file() and weights.stat().st_size < 1_000_000
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta == net.load_txm_particle_net_metadata()
    assert {"config", "held_out", "steps", "normalization"} <= set(meta)
    assert meta["held_out"]["seeds"][0] >= HELD_OUT_SEED_START
    assert meta["training_seeds"][1] < HELD_OUT_SEED_START
    assert meta["held_out"]["object_f1"] >= 0.95


def test_score_on_unseen_synthetic_frames(model: net.TxmParticleNet) -> None:
    per_frame = []
    for seed in TEST_SEEDS:
        sample = detection_sample(seed)
        logits = net.predict_logits(model, net.normalize_frame(sample.od))[0]
        per_frame.append(object_scores(net_labels(logits, 40), sample.labels))
    scores = summarize_scores(per_frame)
    assert scores["true_objects"] >= 40
    assert scores["object_f1"] >= 0.92, scores
    assert scores["matched_iou"] >= 0.9, scores
    assert scores["pixel_iou"] >= 0.85, scores


@pytest.mark.parametrize("shape", [(100, 130), (256, 256), (460, 460), (1024, 1000)])
def test_probability_shape_dtype_and_range(model: net.TxmParticleNet, shape) -> None:
    od = np.random.default_rng(1).normal(0.2, 0.02, shape).astype(np.float64)
    od[shape[0] // 3 : shape[0] // 2, shape[1] // 3 : shape[1] // 2] += 0.5
    prob = net.predict_probability(model, od)
    assert prob.shape == shape and prob.dtype == np.float32
    assert np.all((prob >= 0) & (prob <= 1))


def test_non_finite_pixels_do_not_poison_the_frame(model: net.TxmParticleNet) -> None:
    sample = detection_sample(HELD_OUT_SEED_START + 5_100)
    od = sample.od.copy()
    od[:3, :3] = np.nan
    prob = net.predict_probability(model, od)
    assert np.all(np.isfinite(prob))
    inside = prob[sample.labels > 0]
    assert np.mean(inside >= 0.5) > 0.8


def test_working_binning_and_normalisation() -> None:
    assert net.working_binning((256, 256)) == 1
    assert net.working_binning((460, 460)) == 2
    assert net.working_binning((1024, 1024)) == 4
    assert net.working_binning((64, 80)) == 1
    od = np.full((64, 64), 2.0, dtype=np.float32)
    od[:10, :10] = 3.0
    norm = net.normalize_frame(od)
    assert norm.dtype == np.float32 and np.median(norm) == 0.0 and norm.max() == 1.0


def test_object_scores_counts_matches_misses_and_false_objects() -> None:
    truth = np.zeros((40, 40), dtype=np.int32)
    truth[2:10, 2:10] = 1
    truth[20:30, 20:30] = 2
    pred = np.zeros_like(truth)
    pred[2:10, 3:10] = 5  # IoU 7/8 with object 1
    pred[32:38, 2:8] = 7  # a false object; object 2 is missed
    s = object_scores(pred, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    assert s["iou_sum"] == pytest.approx(7 / 8)
    perfect = summarize_scores([object_scores(truth, truth)])
    assert perfect["object_f1"] == perfect["matched_iou"] == perfect["pixel_iou"] == 1.0


def test_training_script_help_names_its_options() -> None:
    text = build_parser().format_help()
    for option in ("--steps", "--minutes", "--pool", "--seed", "--out", "--threads"):
        assert option in text


def test_held_out_seeds_are_refused_for_training() -> None:
    from training.txm_particle_net import main

    with pytest.raises(SystemExit, match="held-out"):
        main(["--seed", str(HELD_OUT_SEED_START // 10_000), "--pool", "10"])


def test_wide_randomisation_keeps_the_frame_and_adds_artefacts() -> None:
    od = detection_sample(HELD_OUT_SEED_START + 6_000).od
    outs = [wide_randomisation(od, np.random.default_rng(seed)) for seed in range(8)]
    for out in outs:
        assert out.dtype == np.float32 and out.shape == od.shape and np.all(np.isfinite(out))
    # every draw changes the frame, and differently
    assert all(not np.allclose(out, od) for out in outs)
    assert not np.allclose(outs[0], outs[1])
    np.testing.assert_array_equal(outs[3], wide_randomisation(od, np.random.default_rng(3)))
    assert "--wide" in build_parser().format_help()
