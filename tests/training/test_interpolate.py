"""Weights between two checkpoints (training.interpolate): the ends are the parents, the middle
is their mean, a loader reads the result, and different networks are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.crack_unet import CrackUNet, load_crack_unet, save_crack_unet
from models.particle_unet import ParticleUNet, save_particle_unet
from training.interpolate import interpolate_checkpoints, main


def _two_crack_nets(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    a, b = CrackUNet(base_channels=4), CrackUNet(base_channels=4)
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    save_crack_unet(a, pa, {"name": "a"})
    save_crack_unet(b, pb, {"name": "b"})
    return pa, pb


def test_ends_are_the_parents_and_the_middle_their_mean(tmp_path: Path) -> None:
    pa, pb = _two_crack_nets(tmp_path)
    sa = torch.load(pa, weights_only=True)["state_dict"]
    sb = torch.load(pb, weights_only=True)["state_dict"]
    floats = [k for k, v in sa.items() if v.is_floating_point()]
    assert any(not torch.equal(sa[k], sb[k]) for k in floats)
    for alpha, expect in ((0.0, sa), (1.0, sb)):
        state = interpolate_checkpoints(pa, pb, alpha)["state_dict"]
        for k in floats:
            torch.testing.assert_close(state[k], expect[k])
    half = interpolate_checkpoints(pa, pb, 0.5)
    for k in floats:
        torch.testing.assert_close(half["state_dict"][k], (sa[k] + sb[k]) / 2)
    meta = half["metadata"]["interpolated"]
    assert meta["alpha"] == 0.5
    assert (meta["base"]["metadata"]["name"], meta["tuned"]["metadata"]["name"]) == ("a", "b")


def test_the_command_writes_weights_a_loader_reads(tmp_path: Path) -> None:
    pa, pb = _two_crack_nets(tmp_path)
    out = tmp_path / "w" / "half.pt"
    assert main([str(pa), str(pb), "--alpha", "0.25", "--out", str(out)]) == 0
    net = load_crack_unet(out, device=torch.device("cpu"))
    x = torch.from_numpy(np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32))
    with torch.no_grad():
        assert torch.isfinite(net(x)).all()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["interpolated"]["alpha"] == 0.25
    assert sidecar["interpolated"]["tuned"]["path"] == str(pb)


def test_different_networks_and_bad_alpha_are_refused(tmp_path: Path) -> None:
    pa, _ = _two_crack_nets(tmp_path)
    wider = tmp_path / "wide.pt"
    save_crack_unet(CrackUNet(base_channels=8), wider)
    with pytest.raises(ValueError, match="not the same network"):
        interpolate_checkpoints(pa, wider, 0.5)
    other = tmp_path / "particle.pt"
    save_particle_unet(ParticleUNet(), other)
    with pytest.raises(ValueError, match="not the same network"):
        interpolate_checkpoints(pa, other, 0.5)
    with pytest.raises(ValueError, match="alpha must lie in"):
        interpolate_checkpoints(pa, pa, 1.5)


def test_a_checkpoint_from_before_the_format_named_its_kind_is_read(tmp_path: Path) -> None:
    pa, pb = _two_crack_nets(tmp_path)
    new = torch.load(pa, weights_only=True)
    legacy = tmp_path / "legacy.pt"
    torch.save({"base_channels": 4, "state_dict": new["state_dict"]}, legacy)
    half = interpolate_checkpoints(legacy, pb, 0.5)
    assert half["kind"] == "crack_unet" and half["init"] == new["init"]
    out = tmp_path / "half.pt"
    torch.save(half, out)
    assert load_crack_unet(out, device=torch.device("cpu")).base_channels == 4
    wider = tmp_path / "wide.pt"
    save_crack_unet(CrackUNet(base_channels=8), wider)
    with pytest.raises(ValueError, match="shape"):
        interpolate_checkpoints(legacy, wider, 0.5)
