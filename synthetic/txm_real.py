"""XANES test stacks built from real TXM frames: real contrast, known sub-pixel drift.

Two real frames of one field of view, one below and one above the Ni K-edge, are converted to
optical density (OD), binned, co-registered (the above-edge frame is the geometry reference),
and mixed along a real normalised Ni K-edge spectrum so the stack crosses the edge:

``OD(E) = OD_below + w(E) (OD_above - OD_below)``, ``w`` = 0 at the below-edge energy and 1 at
the above-edge energy of the real frames.

Every frame is then shifted by a known sub-pixel drift (Fourier shift of the reflect-padded OD),
turned into counts under a uniform incident beam and given Poisson noise. The truth is the
drift; the particles themselves are real (sizes, touching neighbours, border cuts, the
zone-plate pattern of the below-edge frame).

Sources (``../shared/data/README.md``):

- ``txm_ssrl_nca``: SSRL 6-2c, 8324 / 8354 eV, energy in the file name, flats named ``ref``,
  sample 0.5 s and flat 0.3 s exposures;
- ``txm_aps_nca_fov03``: APS 32-ID-C, 8250 / 8353 eV in ``ImageInfo/Energy``, flats
  ``ref_<state>_<energy>.xrm``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "EDGE_STACK_ENERGIES",
    "RealEdgeStack",
    "RealMixtureStack",
    "aps_fov03_od",
    "build_edge_stack",
    "build_mixture_stack",
    "coregister",
    "normalised_nca_spectrum",
    "read_xrm",
    "ssrl_od",
]

#: 20 energies crossing the Ni K-edge: 5 pre-edge, 12 through the edge, 3 post-edge.
EDGE_STACK_ENERGIES = np.array(
    [8250, 8270, 8290, 8305, 8318]
    + [8330, 8336, 8339, 8342, 8345, 8348, 8351, 8354, 8358, 8362, 8368, 8376]
    + [8390, 8420, 8460],
    dtype=np.float64,
)


def read_xrm(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Frame and energy of an Xradia ``.xrm`` file.

    Parameters
    ----------
    path : str or Path
        The file (OLE2, stream ``ImageData1/Image1`` little-endian uint16, square).

    Returns
    -------
    frame : numpy.ndarray
        ``(S, S)`` float32 counts.
    energy : float or None
        ``ImageInfo/Energy`` (eV) when the file stores it.
    """
    import olefile

    with olefile.OleFileIO(str(path)) as ole:
        raw = ole.openstream("ImageData1/Image1").read()
        energy = None
        if ole.exists("ImageInfo/Energy"):
            values = np.frombuffer(ole.openstream("ImageInfo/Energy").read(), dtype="<f4")
            energy = float(values[0]) if values.size else None
    side = int(round(np.sqrt(len(raw) // 2)))
    if side * side * 2 != len(raw):
        raise ValueError(f"{path}: image stream of {len(raw)} bytes is not a square uint16 frame")
    return np.frombuffer(raw, dtype="<u2").reshape(side, side).astype(np.float32), energy


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image.astype(np.float32)
    h, w = image.shape[0] // factor, image.shape[1] // factor
    view = image[: h * factor, : w * factor].reshape(h, factor, w, factor)
    return view.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _optical_density(
    sample: np.ndarray, flat: np.ndarray, binning: int, *, floor: float
) -> np.ndarray:
    """``-ln(I / I0)`` of binned counts, both clipped below at ``floor``, as float32."""
    ratio = np.maximum(_bin(sample, binning), floor) / np.maximum(_bin(flat, binning), floor)
    return (-np.log(ratio)).astype(np.float32)


def ssrl_od(root: str | Path, *, binning: int = 2) -> dict[float, np.ndarray]:
    """Optical density of the SSRL NCA field of view at each of its energies.

    ``OD = -ln((I / 0.5 s) / (I0 / 0.3 s))`` with I the mean of the sample repeats and I0 the
    mean flat of the same energy (energy parsed from the file names).

    Parameters
    ----------
    root : str or Path
        The ``txm_ssrl_nca`` folder.
    binning : int
        Block-mean binning of the counts before the logarithm.

    Returns
    -------
    dict
        energy (eV) -> ``(1024 / binning,) * 2`` float32 OD.
    """
    root = Path(root)
    out: dict[float, np.ndarray] = {}
    tags = sorted(
        {m.group(1) for p in root.glob("*.xrm") if (m := re.search(r"_(\d+\.\d)_eV_", p.name))}
    )
    for tag in tags:
        flats = sorted(root.glob(f"*_ref_*_{tag}_eV_*.xrm"))
        samples = sorted(p for p in root.glob(f"*_{tag}_eV_*.xrm") if "_ref_" not in p.name)
        if not flats or not samples:
            raise ValueError(
                f"{root}: {tag} eV needs sample and ref frames, got {len(samples)} / {len(flats)}"
            )
        flat = np.mean([read_xrm(p)[0] for p in flats], axis=0) / 0.3
        sample = np.mean([read_xrm(p)[0] for p in samples], axis=0) / 0.5
        out[float(tag)] = _optical_density(sample, flat, binning, floor=1e-3)
    return out


def aps_fov03_od(root: str | Path, *, binning: int = 2) -> dict[float, np.ndarray]:
    """Optical density of the APS fov03 frames, below (``soc02``) and above (``soc01``) the edge.

    ``OD = -ln(I / I0)`` with the flat of the same energy (``ref_xanessoc01_<energy>.xrm``; the
    ``soc02`` state has no flat of its own). Energies from ``ImageInfo/Energy``.

    Parameters
    ----------
    root : str or Path
        The ``txm_aps_nca_fov03`` folder.
    binning : int
        Block-mean binning of the counts before the logarithm.

    Returns
    -------
    dict
        energy (eV) -> float32 OD.
    """
    root = Path(root)
    pairs = [
        ("fov03_xanessoc02_8250_0eV.xrm", "ref_xanessoc01_8250_0eV.xrm"),
        ("fov03_xanessoc01_8353_0eV.xrm", "ref_xanessoc01_8353_0eV.xrm"),
    ]
    out: dict[float, np.ndarray] = {}
    for sample_name, flat_name in pairs:
        sample, energy = read_xrm(root / sample_name)
        flat, flat_energy = read_xrm(root / flat_name)
        if energy is None or flat_energy is None or abs(energy - flat_energy) > 1.0:
            raise ValueError(f"{root}: {sample_name} and {flat_name} must store the same energy")
        out[round(energy, 2)] = _optical_density(sample, flat, binning, floor=1.0)
    return out


def normalised_nca_spectrum(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A real NCA Ni K-edge spectrum normalised (pre-edge 8249-8320 eV -> 0, post 8380-8500 -> 1).

    Parameters
    ----------
    path : str or Path
        Two columns (energy eV, absorbance), e.g. ``txm_ssrl_nca/NCA_xanes.csv``.

    Returns
    -------
    energy, mu : numpy.ndarray
        Energies (eV, increasing) and the normalised absorbance.
    """
    data = np.loadtxt(path)
    energy, mu = data[:, 0], data[:, 1]
    pre = mu[(energy >= 8249) & (energy <= 8320)].mean()
    post = mu[(energy >= 8380) & (energy <= 8500)].mean()
    order = np.argsort(energy)
    return energy[order], (mu[order] - pre) / (post - pre)


def _edge_image(od: np.ndarray, border: int = 24) -> np.ndarray:
    smooth = ndimage.gaussian_filter(od.astype(np.float64), 2.0)
    magnitude = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    magnitude -= ndimage.uniform_filter(magnitude, 31)
    # the frame border (dark detector rows, reflect padding) is static: keep it out
    taper = np.ones(od.shape)
    taper[:border] = taper[-border:] = 0.0
    taper[:, :border] = taper[:, -border:] = 0.0
    return magnitude * ndimage.gaussian_filter(taper, border / 4)


def coregister(
    moving: np.ndarray, reference: np.ndarray, *, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``moving`` onto ``reference`` (edge-magnitude phase correlation, 1/50 px, iterated).

    Edges, not grey levels, are correlated: the two frames are on either side of the edge, so
    their contrast differs. The frame border is tapered out and the estimate is iterated on the
    shifted image until the remaining shift is below 0.02 px.

    Returns
    -------
    aligned : numpy.ndarray
        ``moving`` Fourier-shifted onto ``reference`` (float32).
    shift : numpy.ndarray
        ``(2,)`` the total shift applied (row, col).
    """
    from skimage.registration import phase_cross_correlation

    target = _edge_image(reference)
    total = np.zeros(2)
    aligned = moving.astype(np.float32)
    for _ in range(iterations):
        step = phase_cross_correlation(
            target, _edge_image(aligned), upsample_factor=50, normalization=None
        )[0]
        total += np.asarray(step, dtype=np.float64)
        aligned = fourier_shift_padded(moving, total)
        if np.max(np.abs(step)) < 0.02:
            break
    return aligned, total


def fourier_shift_padded(image: np.ndarray, shift: np.ndarray, pad: int = 32) -> np.ndarray:
    """``image`` moved by ``shift`` (row, col) px: Fourier shift of the reflect-padded image."""
    padded = np.pad(image.astype(np.float64), pad, mode="reflect")
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(padded), shift)).real
    return moved[pad:-pad, pad:-pad].astype(np.float32)


@dataclass(frozen=True)
class RealEdgeStack:
    """A XANES stack built from real frames, with its known drift.

    Attributes
    ----------
    name : str
    energies : numpy.ndarray
        ``(N,)`` eV.
    frames : numpy.ndarray
        ``(N, H, W)`` float32 counts (Poisson).
    flat : numpy.ndarray
        ``(H, W)`` float32 incident counts.
    truth_shift : numpy.ndarray
        ``(N, 2)`` drift of every frame relative to frame 0 (row, col); every particle moves
        with it.
    weights : numpy.ndarray
        ``(N,)`` mixing weights ``w(E)``: every pixel's OD is ``a + b w(E)``, so the edge energy
        a perfect alignment measures is the spectrum analysis of ``weights``.
    od_reference : numpy.ndarray
        ``(H, W)`` OD of the above-edge frame without drift or added noise.
    """

    name: str
    energies: np.ndarray
    frames: np.ndarray
    flat: np.ndarray
    truth_shift: np.ndarray
    weights: np.ndarray
    od_reference: np.ndarray


def build_edge_stack(
    name: str,
    od_below: np.ndarray,
    od_above: np.ndarray,
    energy_below: float,
    energy_above: float,
    spectrum: tuple[np.ndarray, np.ndarray],
    *,
    energies: np.ndarray = EDGE_STACK_ENERGIES,
    seed: int = 0,
    incident_counts: float = 3000.0,
    drift_step_px: float = 0.6,
) -> RealEdgeStack:
    """Stack of real OD frames crossing the edge with a known random-walk drift and noise.

    Parameters
    ----------
    name : str
        Label of the stack.
    od_below, od_above : numpy.ndarray
        ``(H, W)`` co-registered OD frames below / above the edge.
    energy_below, energy_above : float
        Their energies (eV).
    spectrum : tuple of numpy.ndarray
        Normalised real spectrum (:func:`normalised_nca_spectrum`).
    energies : numpy.ndarray
        Energies of the stack, in acquisition order.
    seed : int
        Random seed of the drift and the noise.
    incident_counts : float
        Counts per pixel of the uniform incident beam (Poisson noise on top of the real noise).
    drift_step_px : float
        Standard deviation of the per-frame drift step per axis.

    Returns
    -------
    RealEdgeStack
    """
    if od_below.shape != od_above.shape or od_below.ndim != 2:
        raise ValueError(
            f"od_below {od_below.shape} and od_above {od_above.shape} must be equal 2-D"
        )
    rng = np.random.default_rng(seed)
    e_spec, mu_spec = spectrum
    mu = np.interp(energies, e_spec, mu_spec)
    mu_b, mu_a = np.interp([energy_below, energy_above], e_spec, mu_spec)
    weights = (mu - mu_b) / (mu_a - mu_b)
    steps = rng.normal(0.0, drift_step_px, (energies.size, 2))
    steps[0] = 0.0
    truth = np.cumsum(steps, axis=0)
    difference = od_above - od_below
    flat = np.full(od_above.shape, incident_counts, dtype=np.float32)
    frames = np.empty((energies.size, *od_above.shape), dtype=np.float32)
    for i, w in enumerate(weights):
        od = fourier_shift_padded(od_below + w * difference, truth[i])
        frames[i] = rng.poisson(incident_counts * np.exp(-od.astype(np.float64))).astype(np.float32)
    return RealEdgeStack(
        name=name,
        energies=np.asarray(energies, dtype=np.float64),
        frames=frames,
        flat=flat,
        truth_shift=truth,
        weights=weights,
        od_reference=od_above.astype(np.float32),
    )


@dataclass(frozen=True)
class RealMixtureStack:
    """A XANES stack of real particles whose pixels are known mixtures of two real spectra.

    Attributes
    ----------
    energies : numpy.ndarray
        ``(N,)`` eV, acquisition order.
    frames : numpy.ndarray
        ``(N, H, W)`` float32 counts (Poisson).
    flat : numpy.ndarray
        ``(H, W)`` float32 incident counts.
    truth_shift : numpy.ndarray
        ``(N, 2)`` drift of every frame relative to frame 0 (row, col).
    fraction : numpy.ndarray
        ``(H, W)`` float64 fraction of the first spectrum in every pixel (frame-0 geometry).
    edge_jump : numpy.ndarray
        ``(H, W)`` float64 OD edge jump per pixel (the real particles' thickness); the
        background has a jump near 0 (the real frames' noise).
    """

    energies: np.ndarray
    frames: np.ndarray
    flat: np.ndarray
    truth_shift: np.ndarray
    fraction: np.ndarray
    edge_jump: np.ndarray


def build_mixture_stack(
    od_below: np.ndarray,
    od_above: np.ndarray,
    energy_below: float,
    energy_above: float,
    spectra: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    fraction: np.ndarray,
    energies: np.ndarray,
    *,
    particles: np.ndarray | None = None,
    seed: int = 0,
    incident_counts: float = 3000.0,
    drift_step_px: float = 0.4,
) -> RealMixtureStack:
    """Stack whose per-pixel spectra are mixtures of two real normalised spectra.

    The two co-registered real frames give every pixel its pre-edge OD and its edge jump,
    read as a sample of the first spectrum ``a`` (the SSRL and APS frames are of pristine
    NCA): ``J = (OD_above - OD_below) / (a(E_above) - a(E_below))`` and
    ``OD_pre = OD_below - J a(E_below)``. The stack then has, in every pixel,
    ``OD(E) = OD_pre + J (f a(E) + (1 - f) b(E))`` with the known fraction map ``f`` and the
    second spectrum ``b``. With ``particles`` (a mask of the real particles' footprint) the
    jump is set to 0 outside it: the background keeps the real below-edge OD (zone-plate pattern
    and all) at every energy, instead of the small differences between the two real frames
    (flat-field and beam changes) read as an edge. Each frame is shifted by a known
    random-walk drift (Fourier shift), turned into counts under a uniform beam and given
    Poisson noise.

    Parameters
    ----------
    od_below, od_above : numpy.ndarray
        ``(H, W)`` co-registered real OD frames below / above the edge.
    energy_below, energy_above : float
        Their energies (eV).
    spectra : pair of (energies, normalised mu)
        The spectra ``a`` and ``b`` (:func:`normalised_nca_spectrum`).
    fraction : numpy.ndarray
        ``(H, W)`` fraction of ``a`` per pixel, in [0, 1].
    energies : numpy.ndarray
        Energies of the stack (eV), inside both spectra's ranges.
    particles : numpy.ndarray, optional
        ``(H, W)`` bool: where the edge jump is kept.
    seed, incident_counts, drift_step_px
        Noise and drift (drift 0 gives a stack without drift).

    Returns
    -------
    RealMixtureStack
    """
    if od_below.shape != od_above.shape or od_below.ndim != 2:
        raise ValueError(
            f"od_below {od_below.shape} and od_above {od_above.shape} must be equal 2-D"
        )
    fraction = np.asarray(fraction, dtype=np.float64)
    if fraction.shape != od_above.shape:
        raise ValueError(
            f"fraction shape {fraction.shape} differs from the frames {od_above.shape}"
        )
    if not (np.all(np.isfinite(fraction)) and fraction.min() >= 0 and fraction.max() <= 1):
        raise ValueError("fraction must be finite and in [0, 1]")
    energies = np.asarray(energies, dtype=np.float64)
    (e_a, mu_a), (e_b, mu_b) = spectra
    for e_spec, name in ((e_a, "spectra[0]"), (e_b, "spectra[1]")):
        if energies.min() < e_spec.min() or energies.max() > e_spec.max():
            raise ValueError(f"{name} covers {e_spec.min()}-{e_spec.max()} eV, not the stack's")
    a_below, a_above = np.interp([energy_below, energy_above], e_a, mu_a)
    jump = (od_above.astype(np.float64) - od_below) / (a_above - a_below)
    if particles is not None:
        if particles.shape != jump.shape:
            raise ValueError(f"particles shape {particles.shape} differs from {jump.shape}")
        jump = np.where(particles, jump, 0.0)
    pre = od_below - jump * a_below
    a_on = np.interp(energies, e_a, mu_a)
    b_on = np.interp(energies, e_b, mu_b)
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, drift_step_px, (energies.size, 2)) if drift_step_px > 0 else None
    truth = np.zeros((energies.size, 2))
    if steps is not None:
        steps[0] = 0.0
        truth = np.cumsum(steps, axis=0)
    flat = np.full(od_above.shape, incident_counts, dtype=np.float32)
    frames = np.empty((energies.size, *od_above.shape), dtype=np.float32)
    for i in range(energies.size):
        od = pre + jump * (fraction * a_on[i] + (1.0 - fraction) * b_on[i])
        if np.any(truth[i]):
            od = fourier_shift_padded(od, truth[i]).astype(np.float64)
        frames[i] = rng.poisson(incident_counts * np.exp(-od)).astype(np.float32)
    return RealMixtureStack(
        energies=energies,
        frames=frames,
        flat=flat,
        truth_shift=truth,
        fraction=fraction,
        edge_jump=jump,
    )
