"""Per-pixel LCF and cluster maps from aligned per-particle stacks (no tracker involved)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.xanes.chemistry import ClusterParams
from pipelines.xanes.chemistry_maps import cluster_maps, common_energy_window, lcf_maps

ENERGIES = np.linspace(8250.0, 8500.0, 60)


def edge(centre: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(ENERGIES - centre) / 3.0)) + 0.3 * np.exp(
        -(((ENERGIES - centre - 8.0) / 5.0) ** 2)
    )


@dataclass
class Scan:
    labels: np.ndarray
    energies: np.ndarray
    spectra: np.ndarray
    rois: list = field(default_factory=list)
    aligned_stacks: list = field(default_factory=list)


def scan_with_known_fractions() -> tuple[Scan, np.ndarray]:
    """One 6 x 8 particle at (2, 3): fraction of reference A = column / 7; pixel (0, 0) of the
    ROI has no edge (masked), frame 10 was not found."""
    ref_a, ref_b = edge(8340.0), edge(8346.0)
    fraction = np.tile(np.arange(8) / 7.0, (6, 1))
    od = 0.2 + 0.7 * (
        fraction[None] * ref_a[:, None, None] + (1 - fraction[None]) * ref_b[:, None, None]
    )
    od[:, 0, 0] = 0.2  # no edge jump: masked, NaN
    od[10] = np.nan  # particle not found in frame 10
    labels = np.zeros((12, 14), dtype=np.int32)
    labels[2:8, 3:11] = 1
    labels[7, 10] = 0  # a ROI pixel the label image gives to the background: not ours
    roi = SimpleNamespace(origin=(2, 3), mask=np.ones((6, 8), dtype=bool))
    spectra = np.full((1, ENERGIES.size), np.nan)
    scan = Scan(labels, ENERGIES, spectra, [roi], [od.astype(np.float32)])
    return scan, fraction


def test_pixel_fractions_with_a_missing_frame_and_masked_pixels() -> None:
    scan, fraction = scan_with_known_fractions()
    refs = [(ENERGIES, edge(8340.0)), (ENERGIES, edge(8346.0))]
    maps = lcf_maps(scan, refs)
    fmap = maps.fraction_map[0, 2:8, 3:11]
    assert np.isnan(fmap[0, 0]) and np.isnan(maps.fraction_map[0, 7, 10])
    assert np.isnan(maps.fraction_map[:, 0, :]).all()  # background
    ok = np.isfinite(fmap)
    assert ok.sum() == 6 * 8 - 2
    np.testing.assert_allclose(fmap[ok], fraction[ok], atol=1e-3)
    assert np.nanmax(maps.r_factor_map) < 1e-6
    assert np.isnan(maps.particle_weights).all()  # the particle's mean spectrum is NaN here


def test_clusters_split_the_fraction_ramp_and_skip_incomplete_spectra() -> None:
    scan, fraction = scan_with_known_fractions()
    # frame 10 is missing for every pixel: left out of the clustering, NaN in the spectra
    maps = cluster_maps(scan, params=ClusterParams(n_clusters=2))
    assert np.isnan(maps.cluster_spectra[:, 10]).all()
    assert np.isfinite(maps.cluster_spectra[:, 9]).all()
    sub = maps.labels[2:8, 3:11]
    assert sub[0, 0] == -1 and maps.labels[0, 0] == -1
    low = fraction[sub == 0].mean()
    high = fraction[sub == 1].mean()
    assert abs(high - low) > 0.4


def test_common_energy_window() -> None:
    a = (np.array([8200.0, 8600.0]), np.zeros(2))
    b = (np.array([8250.0, 8500.0]), np.zeros(2))
    assert common_energy_window([a, b]) == (8250.0, 8500.0)
    with pytest.raises(ValueError, match="no energy range"):
        common_energy_window([a, (np.array([8700.0, 8800.0]), np.zeros(2))])
