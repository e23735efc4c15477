"""XANES analysis: pre/post-edge normalisation, edge energy at 50 % of the jump, white line.

Spectra are arrays whose last axis is energy, so the same functions serve one spectrum, one
spectrum per particle and one per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.xanes.params import SpectraParams

__all__ = ["SpectraAnalysis", "analyse_spectra", "edge_energy", "whiteline_energy"]


@dataclass(frozen=True)
class SpectraAnalysis:
    """Per-spectrum results (leading shape of the input, energy axis removed).

    Attributes
    ----------
    normalised : numpy.ndarray
        ``(..., N)`` float64 normalised absorbance, energies sorted ascending.
    energies : numpy.ndarray
        ``(N,)`` sorted energies (eV).
    edge_jump : numpy.ndarray
        Post-edge minus pre-edge level at the edge, in absorbance units.
    edge_energy : numpy.ndarray
        Energy (eV) at 50 % of the edge jump; NaN where masked.
    whiteline_energy : numpy.ndarray
        Energy (eV) of the normalised maximum in the edge window; NaN where masked.
    valid : numpy.ndarray
        bool, False where the edge jump is too small or too noisy.
    """

    normalised: np.ndarray
    energies: np.ndarray
    edge_jump: np.ndarray
    edge_energy: np.ndarray
    whiteline_energy: np.ndarray
    valid: np.ndarray


def _fit_range(
    energies: np.ndarray, spectra: np.ndarray, window: tuple[float, float], order: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial fit (order 0 or 1) of every spectrum over an energy window.

    Returns coefficients ``(order + 1, M)`` about the window centre and the residual sd ``(M,)``.
    """
    sel = (energies >= window[0]) & (energies <= window[1])
    if sel.sum() < order + 1:
        raise ValueError(
            f"{name}={window} holds {int(sel.sum())} energies; at least {order + 1} needed"
        )
    e = energies[sel] - 0.5 * (window[0] + window[1])
    design = np.vander(e, order + 1, increasing=True)
    y = spectra[:, sel].T
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = max(1, sel.sum() - order - 1)
    return coef, np.sqrt((resid**2).sum(axis=0) / dof)


def _evaluate(
    coef: np.ndarray, window: tuple[float, float], energies: np.ndarray | float
) -> np.ndarray:
    e = np.asarray(energies, dtype=np.float64) - 0.5 * (window[0] + window[1])
    return np.vander(np.atleast_1d(e), coef.shape[0], increasing=True) @ coef


def analyse_spectra(
    energies: np.ndarray, absorbance: np.ndarray, *, params: SpectraParams = SpectraParams()
) -> SpectraAnalysis:
    """Normalise XANES spectra and measure their edge and white-line energies.

    The pre-edge and post-edge windows are fitted by polynomials (order 0 = mean, 1 = line);
    the normalised spectrum is ``(mu - pre(E)) / jump`` with ``jump = post(E_ref) - pre(E_ref)``
    at the middle of the gap between the windows. The edge energy is the linear interpolation
    of the last upward crossing of 0.5 before the white line, the white line the parabolic
    refinement of the normalised maximum, both within ``edge_search_ev``.

    Parameters
    ----------
    energies : numpy.ndarray
        ``(N,)`` energies in eV (any order; sorted internally).
    absorbance : numpy.ndarray
        ``(..., N)`` absorbance (optical density) spectra.
    params : SpectraParams
        Windows, fit orders and masking thresholds.

    Returns
    -------
    SpectraAnalysis
    """
    energies = np.asarray(energies, dtype=np.float64)
    absorbance = np.asarray(absorbance, dtype=np.float64)
    if energies.ndim != 1:
        raise ValueError(f"energies must be 1-D, got shape {energies.shape}")
    if absorbance.shape[-1:] != energies.shape:
        raise ValueError(
            f"absorbance last axis {absorbance.shape[-1:]} must match energies {energies.shape}"
        )
    order = np.argsort(energies, kind="stable")
    energies = energies[order]
    lead = absorbance.shape[:-1]
    flat = absorbance[..., order].reshape(-1, energies.size)
    finite = np.all(np.isfinite(flat), axis=1)
    flat = np.where(finite[:, None], flat, 0.0)
    pre_coef, pre_sd = _fit_range(
        energies, flat, params.pre_edge_ev, params.pre_edge_order, "pre_edge_ev"
    )
    post_coef, _ = _fit_range(
        energies, flat, params.post_edge_ev, params.post_edge_order, "post_edge_ev"
    )
    e_ref = 0.5 * (params.pre_edge_ev[1] + params.post_edge_ev[0])
    jump = (
        _evaluate(post_coef, params.post_edge_ev, e_ref)
        - _evaluate(pre_coef, params.pre_edge_ev, e_ref)
    )[0]
    pre_curve = _evaluate(pre_coef, params.pre_edge_ev, energies)
    safe_jump = np.where(np.abs(jump) > 0, jump, np.nan)
    normalised = (flat - pre_curve.T) / safe_jump[:, None]
    n_pre = int(((energies >= params.pre_edge_ev[0]) & (energies <= params.pre_edge_ev[1])).sum())
    valid = finite & (jump >= params.min_edge_jump)
    if n_pre > params.pre_edge_order + 2:
        valid &= jump >= params.min_jump_to_noise * pre_sd
    edge = edge_energy(energies, normalised, window=params.edge_search_ev)
    white = whiteline_energy(energies, normalised, window=params.edge_search_ev)
    edge = np.where(valid, edge, np.nan)
    white = np.where(valid, white, np.nan)
    return SpectraAnalysis(
        normalised=normalised.reshape(*lead, energies.size),
        energies=energies,
        edge_jump=jump.reshape(lead),
        edge_energy=edge.reshape(lead),
        whiteline_energy=white.reshape(lead),
        valid=valid.reshape(lead),
    )


def _window_indices(energies: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    idx = np.nonzero((energies >= window[0]) & (energies <= window[1]))[0]
    if idx.size < 3:
        raise ValueError(f"window {window} holds {idx.size} energies; at least 3 needed")
    return idx


def whiteline_energy(
    energies: np.ndarray, normalised: np.ndarray, *, window: tuple[float, float]
) -> np.ndarray:
    """Energy of the maximum of normalised spectra in a window, refined by a parabola.

    Parameters
    ----------
    energies : numpy.ndarray
        ``(N,)`` ascending energies (eV).
    normalised : numpy.ndarray
        ``(M, N)`` normalised spectra.
    window : tuple of float
        Energy window (eV) searched for the maximum.

    Returns
    -------
    numpy.ndarray
        ``(M,)`` float64 energies (eV).
    """
    idx = _window_indices(energies, window)
    sub = normalised[:, idx]
    best = np.argmax(np.nan_to_num(sub, nan=-np.inf), axis=1)
    k = np.clip(best, 1, idx.size - 2)
    rows = np.arange(sub.shape[0])
    e = energies[idx]
    x0, x1, x2 = e[k - 1], e[k], e[k + 1]
    y0, y1, y2 = sub[rows, k - 1], sub[rows, k], sub[rows, k + 1]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = -b / (2 * a)
    interior = (best == k) & (a < 0) & (vertex >= x0) & (vertex <= x2)
    return np.where(interior, vertex, e[best])


def edge_energy(
    energies: np.ndarray, normalised: np.ndarray, *, window: tuple[float, float]
) -> np.ndarray:
    """Energy where normalised spectra cross 0.5 (last upward crossing before the white line).

    Parameters
    ----------
    energies : numpy.ndarray
        ``(N,)`` ascending energies (eV).
    normalised : numpy.ndarray
        ``(M, N)`` normalised spectra.
    window : tuple of float
        Energy window (eV) holding the edge and the white line.

    Returns
    -------
    numpy.ndarray
        ``(M,)`` float64 energies (eV), NaN when there is no crossing.
    """
    idx = _window_indices(energies, window)
    sub = np.nan_to_num(normalised[:, idx], nan=-np.inf)
    peak = np.argmax(sub, axis=1)
    positions = np.arange(idx.size)[None, :]
    below = (sub < 0.5) & (positions < peak[:, None])
    has = below.any(axis=1)
    last = idx.size - 1 - np.argmax(below[:, ::-1], axis=1)
    last = np.clip(last, 0, idx.size - 2)
    rows = np.arange(sub.shape[0])
    e = energies[idx]
    y0, y1 = sub[rows, last], sub[rows, last + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (0.5 - y0) / (y1 - y0)
    crossing = e[last] + frac * (e[last + 1] - e[last])
    ok = has & np.isfinite(crossing) & (y1 >= 0.5)
    return np.where(ok, crossing, np.nan)
