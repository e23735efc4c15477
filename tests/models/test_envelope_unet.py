"""Envelope U-Net: its training target, checkpoint kind and start from the particle U-Net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from models.envelope_unet import (
    DEFAULT_WEIGHTS,
    envelope_target,
    load_envelope_unet,
    load_trainable_envelope_unet,
    predict_envelope,
    predict_envelope_stacks,
    save_envelope_unet,
)
from models.particle_unet import DEFAULT_WEIGHTS as PARTICLE_WEIGHTS
from models.particle_unet import load_particle_unet, predict_maps


def test_envelope_target_keeps_cracks_and_cuts_contacts() -> None:
    ids = np.zeros((1, 20, 40), dtype=np.int32)
    ids[0, 2:18, 2:20] = 1
    ids[0, 2:18, 20:38] = 2  # touching the first along x = 20
    target = envelope_target(ids)
    assert not target[0, :, 19:21].any()  # the contact is cut
    assert target[0, 5:15, 5:17].all() and target[0, 5:15, 23:35].all()
    _, n = ndimage.label(target[0])
    assert n == 2
    # a crack carries its particle's id: it stays inside the target
    assert target[0, 10, 10]


def test_envelope_target_rejects_2d() -> None:
    with pytest.raises(ValueError, match="3-D"):
        envelope_target(np.zeros((4, 4), dtype=np.int32))


def test_starts_from_the_particle_unet_and_saves_its_own_kind(tmp_path: Path) -> None:
    model = load_trainable_envelope_unet(PARTICLE_WEIGHTS)
    rng = np.random.default_rng(0)
    volume = rng.random((3, 32, 32)).astype(np.float32)
    model.eval()
    env = predict_envelope(model, volume)
    foreground, _ = predict_maps(load_particle_unet(device=torch.device("cpu")), volume)
    np.testing.assert_allclose(env, foreground, atol=1e-4)
    path = tmp_path / "envelope.pt"
    save_envelope_unet(model, path, {"note": "test"})
    assert torch.load(path, weights_only=True)["kind"] == "envelope_unet"
    with pytest.raises(ValueError, match="envelope_unet"):
        load_particle_unet(path)


def test_shipped_weights_predict_stacks_like_the_volume() -> None:
    assert DEFAULT_WEIGHTS.is_file()
    model = load_envelope_unet(device=torch.device("cpu"))
    rng = np.random.default_rng(1)
    volume = rng.random((4, 40, 48)).astype(np.float32)
    whole = predict_envelope(model, volume)
    stacks = np.stack([volume[[max(z - 1, 0), z, min(z + 1, 3)]] for z in range(4)])
    np.testing.assert_allclose(predict_envelope_stacks(model, stacks), whole, atol=1e-5)
    with pytest.raises(ValueError, match="stacks"):
        predict_envelope_stacks(model, volume)
