"""The never-trained generator family: ground truth that means what it says."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from benchmarks.holdout_family import make_holdout_volume, make_microstructure, make_single_particle

ROOT = Path(__file__).resolve().parents[2]


def test_cracks_lie_inside_particles_and_crack_free_variant_keeps_the_particles() -> None:
    att, ids, cracks, binder, kinds = make_microstructure((8, 96, 96), seed=5)
    att0, ids0, cracks0, binder0, _ = make_microstructure((8, 96, 96), seed=5, cracked=False)
    assert cracks.any() and not cracks0.any()
    assert not (cracks & (ids == 0)).any()
    assert not (binder & (ids > 0)).any()
    np.testing.assert_array_equal(ids, ids0)
    np.testing.assert_array_equal(binder, binder0)
    assert set(kinds) == set(np.unique(ids)) - {0}
    assert (att[cracks] == 0).all() and (att0[ids0 > 0] > 0).all()


def test_scan_is_reconstructed_and_zero_outside_the_circle() -> None:
    v = make_holdout_volume((4, 64, 64), seed=3, quantize_8bit=True)
    assert v.recon.dtype == np.uint8 and v.recon.shape == (4, 64, 64)
    assert v.recon[:, 0, 0].max() == 0 and v.recon[:, 32, 32].max() > 0
    f = make_holdout_volume((4, 64, 64), seed=3, quantize_8bit=False)
    assert f.recon.dtype == np.float32


def test_single_particles_have_the_damage_they_claim() -> None:
    through = make_single_particle("through", seed=0)
    hollow = make_single_particle("hollow", seed=0)
    for v in (through, hollow):
        assert v.particle_ids.max() == 1
        assert v.crack_mask.any() and not (v.crack_mask & (v.particle_ids == 0)).any()
    # the planar crack cuts the particle's solid in two in the middle slice
    from scipy import ndimage

    z = through.recon.shape[0] // 2
    solid = (through.particle_ids[z] == 1) & ~through.crack_mask[z]
    assert ndimage.label(solid)[1] >= 2
    # the hollow core: the particle's centre is void
    c = hollow.recon.shape[1] // 2
    assert hollow.crack_mask[z, c, c]


def test_no_training_or_generator_module_imports_the_holdout_family_or_benchmarks() -> None:
    paths = sorted(ROOT.glob("training/*.py")) + sorted(ROOT.glob("synthetic/*.py"))
    assert any(p.name == "crack_unet.py" for p in paths)
    for path in paths:
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        ]
        assert not any("holdout" in name or "benchmarks" in name for name in names), path
