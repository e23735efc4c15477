"""Crack U-Net training helpers: gap hard negatives, 2.5-D crops, starting from 1-slice weights."""

from __future__ import annotations

import numpy as np
import torch

from models.crack_unet import CONTEXT_SLICES, CrackUNet, predict_probabilities
from training.crack_unet import (
    SliceSet,
    augment_batch,
    crack_loss,
    gap_pixels,
    inflate_input,
    touching_gaps,
)


def test_touching_gaps_lie_between_two_particles_only() -> None:
    ids = np.zeros((1, 12, 20), dtype=np.int32)
    ids[0, 2:10, 2:8] = 1
    ids[0, 2:10, 9:15] = 2  # one matrix column (x = 8) between particles 1 and 2
    gaps = touching_gaps(ids, radius=2)
    assert gaps[0, 5, 8] and not gaps[0, 5, 17]  # x = 17: next to particle 2 only
    assert not (gaps & (ids > 0)).any()
    lone = touching_gaps(np.where(ids == 1, 1, 0))
    assert not lone.any()


def test_augment_batch_gives_context_crops_and_masks() -> None:
    rng = np.random.default_rng(0)
    shape = (4, 64, 64)
    labels = np.zeros(shape, dtype=np.float32)
    labels[:, 30:33, 10:50] = 1.0
    gaps = np.zeros(shape, dtype=np.float32)
    gaps[:, 10, 10:50] = 1.0
    data = SliceSet(
        images=rng.random((4, CONTEXT_SLICES, 64, 64)).astype(np.float32),
        labels=labels,
        valid=np.ones(shape, dtype=np.float32),
        gaps=gaps,
    )
    image, label, valid, gap = augment_batch(
        data,
        3,
        32,
        rng,
        cracks=np.argwhere(labels > 0),
        crack_share=0.5,
        gaps=gap_pixels(data),
        gap_share=0.5,
    )
    assert image.shape == (3, CONTEXT_SLICES, 32, 32)
    assert label.shape == valid.shape == gap.shape == (3, 1, 32, 32)
    assert set(torch.unique(gap).tolist()) <= {0.0, 1.0}
    logits = torch.zeros_like(label)
    plain = crack_loss(logits, label, valid)
    weighted = crack_loss(logits, label, valid, gap, gap_weight=3.0)
    assert weighted >= plain


def test_inflated_network_starts_with_the_single_slice_outputs() -> None:
    torch.manual_seed(0)
    single = CrackUNet(base_channels=4, in_channels=1).eval()
    inflated = inflate_input(CrackUNet(base_channels=4), single).eval()
    stacks = np.random.default_rng(2).random((2, CONTEXT_SLICES, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(
        predict_probabilities(inflated, stacks), predict_probabilities(single, stacks), atol=1e-6
    )


def test_wide_slice_set_is_normalised_labelled_and_reproducible() -> None:
    from training.crack_unet import make_slice_set

    def draw() -> object:
        return make_slice_set(
            (4, 64, 64),
            seed=11,
            rng=np.random.default_rng(3),
            crack_density=1.5,
            damage_share=0.8,
            quantize=True,
            diameter_px=(12.0, 40.0),
            wide=True,
        )

    a, b = draw(), draw()
    assert a.images.shape == (4, 3, 64, 64) and a.labels.shape == (4, 64, 64)
    assert np.isfinite(a.images).all()
    assert a.labels.any() and set(np.unique(a.labels)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_slice_set_scan_options_keep_the_default_data_and_change_when_set() -> None:
    from training.crack_unet import make_slice_set

    def draw(**options: object) -> object:
        return make_slice_set(
            (4, 64, 64),
            seed=12,
            rng=np.random.default_rng(4),
            crack_density=1.0,
            damage_share=0.8,
            quantize=True,
            **options,
        )

    plain = draw()
    same = draw(
        recon_method="iradon", damage_width_px=(1.0, 2.6), fringe_max=1.2, no_fringe_share=0.0
    )
    np.testing.assert_array_equal(plain.images, same.images)
    np.testing.assert_array_equal(plain.labels, same.labels)
    absorption_only = draw(no_fringe_share=1.0)
    assert np.isfinite(absorption_only.images).all()
    assert not np.array_equal(absorption_only.images, plain.images)
    np.testing.assert_array_equal(absorption_only.labels, plain.labels)
    other = draw(recon_method="fbp", negative_fringe_share=1.0, jpeg_share=1.0)
    assert other.images.shape == plain.images.shape and np.isfinite(other.images).all()
    assert not np.array_equal(other.images, plain.images)
    wedge = draw(wedge_share=1.0)
    assert np.isfinite(wedge.images).all() and not np.array_equal(wedge.images, plain.images)
    np.testing.assert_array_equal(wedge.labels, plain.labels)


def test_outline_share_adds_hard_negatives_to_the_gaps() -> None:
    from training.crack_unet import make_slice_set

    def draw(**options: object) -> object:
        return make_slice_set(
            (4, 64, 64),
            seed=13,
            rng=np.random.default_rng(5),
            crack_density=1.0,
            diameter_px=(24.0, 30.0),
            **options,
        )

    plain, rough = draw(), draw(outline_share=1.0)
    assert rough.gaps.sum() > plain.gaps.sum()
    assert not ((rough.gaps > 0) & (rough.labels > 0)).any()
