"""Linear-combination fitting and PCA + k-means clustering of XANES spectra.

Mixtures are built from the two real Ni K-edge spectra of ../shared/data/txm_ssrl_nca (the
same NCA cathode at two states of charge, edges 1.1 eV apart), so the fit is checked on real
line shapes, not on the project's own edge model.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from pipelines.xanes.chemistry import (
    ClusterParams,
    LcfParams,
    cluster_spectra,
    linear_combination_fit,
)
from pipelines.xanes.params import SpectraParams
from pipelines.xanes.spectra import analyse_spectra


def _normalised(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = analyse_spectra(data[:, 0], data[:, 1], params=SpectraParams())
    return result.energies, result.normalised


@pytest.fixture(scope="module")
def real_references(ssrl_spectra):
    a = _normalised(ssrl_spectra["NCA_xanes.csv"])
    b = _normalised(ssrl_spectra["NCA-cell2-soc1-fov1-xanesspectrum.tsv"])
    lo, hi = max(a[0][0], b[0][0]), min(a[0][-1], b[0][-1])
    grid = a[0][(a[0] >= lo) & (a[0] <= hi)]
    return a, b, grid


def test_real_mixtures_give_their_fractions(real_references):
    a, b, grid = real_references
    ref_a, ref_b = np.interp(grid, *a), np.interp(grid, *b)
    truth = np.linspace(0.0, 1.0, 64).reshape(8, 8)
    rng = np.random.default_rng(7)
    spectra = truth[..., None] * ref_a + (1 - truth[..., None]) * ref_b
    spectra = spectra + rng.normal(0.0, 0.002, spectra.shape)
    fit = linear_combination_fit(grid, spectra, [a, b])
    assert fit.weights.shape == (8, 8, 2)
    assert np.all(fit.weights >= 0)
    err = np.abs(fit.fractions[..., 0] - truth)
    assert float(err.max()) < 0.08, float(err.max())
    assert float(np.median(err)) < 0.03
    assert float(np.nanmax(fit.r_factor)) < 1e-3


def test_pure_reference_gets_no_negative_weight(real_references):
    a, b, grid = real_references
    scaled = 1.7 * np.interp(grid, *a)
    fit = linear_combination_fit(grid, scaled, [a, b])
    assert fit.weights[0] == pytest.approx(1.7, abs=1e-9)
    assert fit.weights[1] == 0.0
    assert fit.fractions.tolist() == pytest.approx([1.0, 0.0])
    assert float(fit.r_factor) < 1e-20


def test_sum_to_one_constraint(real_references):
    a, b, grid = real_references
    mix = 0.3 * np.interp(grid, *a) + 0.7 * np.interp(grid, *b)
    fit = linear_combination_fit(grid, 1.2 * mix, [a, b], params=LcfParams(sum_to_one=True))
    assert float(fit.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    free = linear_combination_fit(grid, 1.2 * mix, [a, b])
    assert float(free.weights.sum()) == pytest.approx(1.2, abs=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_matches_scipy_nnls(seed):
    rng = np.random.default_rng(seed)
    energies = np.linspace(8300.0, 8400.0, 40)
    refs = [(energies, rng.random(40)) for _ in range(3)]
    spectra = rng.normal(0.5, 0.5, (5, 40))
    fit = linear_combination_fit(energies, spectra, refs)
    basis = np.stack([r[1] for r in refs]).T
    for i in range(5):
        expected, _ = nnls(basis, spectra[i])
        np.testing.assert_allclose(fit.weights[i], expected, atol=1e-8)


def test_not_finite_spectra_give_nan_never_zero(real_references):
    a, b, grid = real_references
    spectra = np.stack([np.interp(grid, *a), np.full(grid.size, np.nan)])
    fit = linear_combination_fit(grid, spectra, [a, b])
    assert np.all(np.isfinite(fit.weights[0]))
    assert np.all(np.isnan(fit.weights[1]))
    assert np.isnan(fit.r_factor[1]) and np.isnan(fit.fractions[1]).all()


def test_fit_window_and_clear_errors(real_references):
    a, b, grid = real_references
    spectrum = np.interp(grid, *a)
    fit = linear_combination_fit(
        grid, spectrum, [a, b], params=LcfParams(fit_window_ev=(8320, 8380))
    )
    assert fit.energies.min() >= 8320 and fit.energies.max() <= 8380
    short = (a[0][a[0] < 8340], a[1][a[0] < 8340])
    with pytest.raises(ValueError, match=r"references\[1\] covers .* eV"):
        linear_combination_fit(grid, spectrum, [a, short])
    with pytest.raises(ValueError, match="must match energies"):
        linear_combination_fit(grid, spectrum[:-1], [a, b])
    with pytest.raises(ValueError, match="fit_window_ev"):
        linear_combination_fit(grid, spectrum, [a, b], params=LcfParams(fit_window_ev=(0, 1)))
    with pytest.raises(ValueError):
        LcfParams(fit_window=(1, 2))


def test_clusters_recover_two_real_states(real_references):
    a, b, grid = real_references
    ref_a, ref_b = np.interp(grid, *a), np.interp(grid, *b)
    yy, xx = np.mgrid[:24, :24]
    region = (xx + 0.5 * yy) > 16
    rng = np.random.default_rng(3)
    spectra = np.where(region[..., None], ref_a, ref_b) + rng.normal(
        0.0, 0.004, (24, 24, grid.size)
    )
    spectra[0, 0] = np.nan
    result = cluster_spectra(spectra, params=ClusterParams(n_components=2, n_clusters=2))
    assert result.labels[0, 0] == -1
    valid = result.labels >= 0
    agree = (result.labels == 1) == region
    accuracy = max(agree[valid].mean(), (~agree)[valid].mean())
    assert accuracy > 0.99
    assert int(result.cluster_sizes.sum()) == 24 * 24 - 1
    # Each cluster's mean spectrum is the reference of its region.
    for c in range(2):
        members = region[result.labels == c].mean() > 0.5
        expected = ref_a if members else ref_b
        assert np.abs(result.cluster_spectra[c] - expected).max() < 0.01
    again = cluster_spectra(spectra, params=ClusterParams(n_components=2, n_clusters=2))
    np.testing.assert_array_equal(again.labels, result.labels)
    assert result.explained_variance_ratio[0] > 0.5


def test_cluster_errors():
    with pytest.raises(ValueError, match="n_clusters=4"):
        cluster_spectra(np.ones((3, 10)), params=ClusterParams(n_clusters=4))
    with pytest.raises(ValueError, match="energy axis"):
        cluster_spectra(np.ones((3, 1)))
