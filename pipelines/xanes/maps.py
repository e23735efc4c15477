"""A tracked particle's XANES maps from its aligned ROI stack."""

from __future__ import annotations

import numpy as np

from pipelines.xanes.params import SpectraParams
from pipelines.xanes.results import ParticleRoi
from pipelines.xanes.spectra import analyse_spectra

__all__ = ["paint_particle_maps"]


def paint_particle_maps(
    stack: np.ndarray,
    roi: ParticleRoi,
    label: int,
    labels: np.ndarray,
    energies: np.ndarray,
    *,
    params: SpectraParams,
    edge: np.ndarray,
    white: np.ndarray,
    jump: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Fit a particle's spectra and write its pixels of the frame-wide maps.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(N, h, w)`` the particle's aligned, background-free OD ROIs (NaN in frames where it
        was not found).
    roi : ParticleRoi
        Its ROI in frame-0 geometry.
    label : int
        Its label in ``labels``; only the pixels it owns there are written.
    labels : numpy.ndarray
        ``(H, W)`` frame-0 labels.
    energies : numpy.ndarray
        ``(N,)`` eV.
    params : SpectraParams
        Spectra parameters.
    edge, white, jump : numpy.ndarray
        ``(H, W)`` edge-energy, white-line energy and edge-jump maps, written in place.

    Returns
    -------
    tuple or None
        ``(N,)`` bool frames used and the normalised mean spectrum over them; None when fewer
        than 8 frames, an empty mask or the fit refused the spectra (maps left as they were).
    """
    found = np.all(np.isfinite(stack.reshape(stack.shape[0], -1)[:, :1]), axis=1)
    mask = roi.mask
    if found.sum() < 8 or not mask.any():
        return None
    sub_e = energies[found]
    try:
        pixels = analyse_spectra(sub_e, stack[found][:, mask].T, params=params)
        mean = analyse_spectra(sub_e, stack[found][:, mask].mean(axis=1), params=params)
    except ValueError:
        return None
    order = np.argsort(sub_e, kind="stable")
    normalised = np.empty(found.sum())
    normalised[order] = mean.normalised
    r0, c0 = roi.origin
    rows, cols = np.nonzero(mask)
    rows, cols = rows + r0, cols + c0
    inside = (rows >= 0) & (cols >= 0) & (rows < edge.shape[0]) & (cols < edge.shape[1])
    own = labels[rows[inside], cols[inside]] == label
    sel_r, sel_c = rows[inside][own], cols[inside][own]
    edge[sel_r, sel_c] = pixels.edge_energy[inside][own]
    white[sel_r, sel_c] = pixels.whiteline_energy[inside][own]
    jump[sel_r, sel_c] = pixels.edge_jump[inside][own]
    return found, normalised
