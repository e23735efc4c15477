"""Envelope U-Net training data: cracks and cores inside the target, gaps outside, crops."""

from __future__ import annotations

import numpy as np
import pytest

from training.envelope_unet import main, make_envelope_set, sample_batch


@pytest.mark.parametrize("wide", [False, True])
def test_envelope_set_counts_cracks_as_particle_and_gaps_as_background(wide: bool) -> None:
    data = make_envelope_set(
        (4, 64, 64),
        seed=5,
        wide=wide,
        damage_share=0.9,
        damage_width_px=(2.0, 5.0),
        diameter_px=(16.0, 24.0),
        quantize=wide,
        hard_weight=3.0,
    )
    assert data.cracks.any() and data.gaps.any()
    assert (data.envelope[data.cracks] == 1).all()
    assert (data.envelope[data.gaps] == 0).all()
    assert (data.weight[data.cracks | data.gaps] == 3.0).all()
    image, env, dist, weight = sample_batch([data], 3, 32, np.random.default_rng(0))
    assert image.shape == (3, 3, 32, 32)
    assert env.shape == dist.shape == weight.shape == (3, 1, 32, 32)


def test_entry_point_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--damage-width-max" in capsys.readouterr().out
