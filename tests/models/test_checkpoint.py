"""One checkpoint format: kind and constructor arguments inside; the shipped files still load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import crack_unet, flaw_cnn, particle_unet, phase_net, txm_particle_net
from models.checkpoint import read_checkpoint

CPU = torch.device("cpu")


def test_shipped_weights_load_unchanged_in_their_older_layout() -> None:
    for module, loader in (
        (particle_unet, particle_unet.load_particle_unet),
        (flaw_cnn, flaw_cnn.load_flaw_cnn),
        (phase_net, phase_net.load_phase_net),
        (txm_particle_net, txm_particle_net.load_txm_particle_net),
    ):
        checkpoint, _ = read_checkpoint(None, module.DEFAULT_WEIGHTS, "x", device=CPU)
        assert "kind" not in checkpoint  # written before the format named its kind
        assert loader(device=CPU) is not None


def test_crack_weights_in_the_older_layout_still_load(tmp_path: Path) -> None:
    """The shipped crack weights name their kind since 2026-12-01; a file in the layout before
    (constructor arguments at the top level) loads to the same network."""
    checkpoint, _ = read_checkpoint(None, crack_unet.DEFAULT_WEIGHTS, "x", device=CPU)
    assert checkpoint["kind"] == "crack_unet"
    legacy = tmp_path / "legacy.pt"
    torch.save(
        {
            "base_channels": checkpoint["init"]["base_channels"],
            "state_dict": checkpoint["state_dict"],
        },
        legacy,
    )
    old, new = (
        crack_unet.load_crack_unet(legacy, device=CPU),
        crack_unet.load_crack_unet(device=CPU),
    )
    assert (old.base_channels, old.in_channels) == (new.base_channels, new.in_channels)
    for (name, a), (_, b) in zip(old.state_dict().items(), new.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_saved_checkpoint_names_kind_and_arguments_and_round_trips(tmp_path: Path) -> None:
    model = crack_unet.CrackUNet(base_channels=4, in_channels=1)
    path = tmp_path / "c.pt"
    crack_unet.save_crack_unet(model, path, {"note": "test"})
    checkpoint, _ = read_checkpoint(path, path, "crack U-Net", device=CPU)
    assert checkpoint["kind"] == "crack_unet"
    assert checkpoint["init"] == {"base_channels": 4, "in_channels": 1}
    loaded = crack_unet.load_crack_unet(path, device=CPU)
    assert loaded.in_channels == 1 and loaded.base_channels == 4
    assert crack_unet.load_crack_unet_metadata(path) == {"note": "test"}


def test_a_checkpoint_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.pt"
    particle_unet.save_particle_unet(particle_unet.ParticleUNet(base_channels=4), path)
    with pytest.raises(ValueError, match="particle_unet network, not a crack_unet"):
        crack_unet.load_crack_unet(path, device=CPU)
    not_a_checkpoint = tmp_path / "t.pt"
    torch.save(torch.zeros(3), not_a_checkpoint)
    with pytest.raises(ValueError, match="not a crack U-Net checkpoint"):
        crack_unet.load_crack_unet(not_a_checkpoint, device=CPU)
