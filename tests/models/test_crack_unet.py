"""Crack U-Net: architecture as in the seed paper, weight round trip, normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.crack_unet import (
    CONTEXT_SLICES,
    CrackUNet,
    context_stacks,
    load_crack_unet,
    normalize_slices,
    predict_probabilities,
    reference_levels,
    save_crack_unet,
)


def test_architecture_five_encoders_four_decoders() -> None:
    model = CrackUNet(base_channels=4)
    assert len(model.encoders) == 5 and len(model.decoders) == 4
    for module in model.encoders:
        convs = [m for m in module if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 2 and all(c.kernel_size == (3, 3) for c in convs)
    out = model(torch.zeros(2, CONTEXT_SLICES, 32, 48))
    assert out.shape == (2, 1, 32, 48)
    with pytest.raises(ValueError, match="in_channels"):
        CrackUNet(base_channels=4, in_channels=2)


def test_predict_pads_odd_sizes_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CrackUNet(base_channels=4).eval()
    path = tmp_path / "w.pt"
    save_crack_unet(model, path, {"score": 0.5})
    loaded = load_crack_unet(path, device=torch.device("cpu"))
    tiles = np.random.default_rng(0).random((2, CONTEXT_SLICES, 37, 51)).astype(np.float32)
    a = predict_probabilities(model, tiles)
    b = predict_probabilities(loaded, tiles)
    assert a.shape == (2, 37, 51) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert ((a >= 0) & (a <= 1)).all()
    np.testing.assert_allclose(predict_probabilities(model, tiles[1]), a[1], atol=1e-6)
    with pytest.raises(ValueError, match="stacks"):
        predict_probabilities(model, tiles[:, :2])
    with pytest.raises(FileNotFoundError):
        load_crack_unet(tmp_path / "missing.pt")


def test_single_slice_weights_load_and_see_the_middle_slice(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = CrackUNet(base_channels=4, in_channels=1).eval()
    path = tmp_path / "single.pt"
    save_crack_unet(model, path)
    loaded = load_crack_unet(path, device=torch.device("cpu"))
    assert loaded.in_channels == 1
    stacks = np.random.default_rng(1).random((2, CONTEXT_SLICES, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        direct = torch.sigmoid(model(torch.from_numpy(stacks[:, 1:2])))[:, 0].numpy()
    np.testing.assert_allclose(predict_probabilities(loaded, stacks), direct, atol=1e-6)
    np.testing.assert_allclose(predict_probabilities(loaded, stacks[:, 1:2]), direct, atol=1e-6)


def test_context_stacks_repeat_the_edge_slices() -> None:
    vol = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 3, 5), np.float32)
    stacks = context_stacks(vol)
    assert stacks.shape == (4, CONTEXT_SLICES, 3, 5) and stacks.dtype == np.float32
    np.testing.assert_array_equal(stacks[:, :, 0, 0], [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
    np.testing.assert_array_equal(context_stacks(vol, 1, 3), stacks[1:3])
    with pytest.raises(ValueError, match="stop"):
        context_stacks(vol, 2, 5)


def test_normalisation_levels() -> None:
    vol = np.zeros((2, 20, 20), dtype=np.float32)
    vol[:, 5:15, 5:15] = np.linspace(1, 2, 100).reshape(10, 10)
    low, high = reference_levels(vol)
    assert 1.0 <= low < high <= 2.0  # zeros (outside the reconstruction circle) ignored
    norm = normalize_slices(vol, low, high)
    assert norm.dtype == np.float32
    with pytest.raises(ValueError, match="high"):
        normalize_slices(vol, 1.0, 1.0)
