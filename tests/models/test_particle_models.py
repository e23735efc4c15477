"""Shipped particle U-Net and flaw CNN weights: size, metadata, loading, folded batch norm."""

from __future__ import annotations

import json

import numpy as np
import torch

from models import flaw_cnn, particle_unet
from models.fusion import fold_batch_norm


def test_shipped_weights_are_small_and_documented() -> None:
    for weights in (particle_unet.DEFAULT_WEIGHTS, flaw_cnn.DEFAULT_WEIGHTS):
        assert weights.is_file() and weights.stat().st_size < 3_000_000
        meta = json.loads(weights.with_suffix(".json").read_text())
        assert "config" in meta and "held_out" in meta
    flaw_meta = json.loads(flaw_cnn.DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert flaw_meta["held_out"]["slice_accuracy"] >= 0.95
    assert flaw_meta["held_out"]["slice_auc"] >= 0.95


def test_folding_batch_norm_keeps_the_outputs() -> None:
    torch.manual_seed(0)
    net = particle_unet.ParticleUNet(base_channels=4)
    net.train()
    net(torch.rand(4, 3, 32, 32))  # move the running statistics away from the defaults
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        expected = net(x)
        folded = fold_batch_norm(net)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(x), expected, atol=1e-5)


def test_predict_maps_shapes_and_ranges() -> None:
    model = particle_unet.load_particle_unet(device=torch.device("cpu"))
    volume = np.random.default_rng(0).random((3, 20, 28)).astype(np.float32)
    prob, dist = particle_unet.predict_maps(model, volume)
    assert prob.shape == dist.shape == volume.shape
    assert prob.dtype == dist.dtype == np.float32
    assert np.all((prob >= 0) & (prob <= 1)) and np.all(dist >= 0)


def test_instance_distance_treats_cracks_as_inside() -> None:
    ids = np.zeros((9, 9, 9), dtype=np.int32)
    ids[1:8, 1:8, 1:8] = 1
    dist = particle_unet.instance_distance(ids)
    assert dist[4, 4, 4] == dist.max() == 3.0
    assert dist[1, 4, 4] == 0.0 and dist[0, 0, 0] == 0.0


def test_wider_training_domain_damages_and_quantises_without_relabelling() -> None:
    """``make_reconstructed_cathode``'s domain options: damage adds crack voxels inside the
    same particles (ids unchanged), 8-bit rendering leaves at most 256 grey levels, and the
    defaults give the volume they always gave."""
    from synthetic.reconstructed import make_reconstructed_cathode

    shape = (4, 64, 64)
    plain = make_reconstructed_cathode(shape, seed=5, crack_density=0.0)
    again = make_reconstructed_cathode(shape, seed=5, crack_density=0.0)
    np.testing.assert_array_equal(plain.recon, again.recon)
    damaged = make_reconstructed_cathode(
        shape,
        seed=5,
        crack_density=0.0,
        damage_share=1.0,
        diameter_px=(30.0, 30.0),
        quantize=True,
    )
    np.testing.assert_array_equal(
        damaged.truth.particle_ids,
        make_reconstructed_cathode(
            shape, seed=5, crack_density=0.0, diameter_px=(30.0, 30.0)
        ).truth.particle_ids,
    )
    cracks = damaged.truth.crack_mask.astype(bool)
    assert cracks.sum() > 0 and not plain.truth.crack_mask.any()
    assert (damaged.truth.particle_ids[cracks] > 0).all()
    assert np.unique(damaged.recon).size <= 256


def test_damage_kinds_are_checked() -> None:
    import pytest

    from synthetic.cathode import make_cathode_volume
    from synthetic.damage import add_damage

    vol = make_cathode_volume((4, 48, 48), seed=3, crack_density=0.0)
    with pytest.raises(ValueError, match="non-empty subset"):
        add_damage(vol, np.random.default_rng(0), kinds=("planar",))
    split = add_damage(vol, np.random.default_rng(0), share=1.0, kinds=("split",))
    np.testing.assert_array_equal(split.particle_ids, vol.particle_ids)
