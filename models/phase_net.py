"""Per-voxel carbon/binder vs pore classifier for the voxels next to particle surfaces.

Carbon/binder (mu 0.003 per pixel in the synthetic cathodes) and pore (0) differ little in
X-ray attenuation, and blur and phase-contrast fringes next to the bright particles change the
grey levels of exactly the voxels that decide the degree of detachment: those sharing a face
with a particle. The grey-level estimate (``pipelines.particles.detachment.estimate_phase``)
gets 63 to 74 % of these right on three held-out reconstructed synthetic cathodes; this
classifier 76 to 85 % (``python -m benchmarks.particles_benchmark``).

:class:`PhaseNet` is a small multilayer perceptron over hand-made multi-scale features of the
normalised volume (:func:`models.crack_unet.normalize_slices`) and the particle mask
(:func:`phase_features`):

* grey levels smoothed over the non-particle voxels only (normalised convolution, sigma 1, 2
  and 4) and over the voxels beyond the one-voxel shell around the particles (sigma 2 and 4),
  so the bright particles do not leak into them, and the share of those beyond-shell voxels
  above the Otsu level (sigma 2 and 4);
* the particle share of the neighbourhood (Gaussian of the particle mask, sigma 1, 2 and 4) and
  the local grey level of the particles themselves;
* per-volume levels: every grey level is expressed relative to the Otsu threshold between pore
  and carbon/binder beyond the shell, in units of the difference of the two class means; the
  estimated binder share, the noise and the mean grey-level steps across the particle surfaces
  (fringes and blur) describe the imaging conditions.

The features wider than sigma 1 are computed at half resolution. The network returns the
binder logit; the calls keep the expected number of binder faces (:func:`matched_calls`)
rather than cutting at 0.5, which would call the uncertain voxels binder (the majority next to
particles) and bias the detachment. It is trained on reconstructed synthetic cathodes by
``python -m training.train_phase_net``; the synthetic binder prefers particle surfaces, and the
classifier learned that too, so on real data its calls are an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from torch import nn

from models.checkpoint import constructor_args, read_checkpoint, read_metadata, save_checkpoint

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "phase_net.pt"
KIND = "phase_net"

FEATURE_NAMES = (
    "grey",
    "outside_grey_s1",
    "outside_grey_s2",
    "outside_grey_s4",
    "beyond_shell_grey_s2",
    "beyond_shell_grey_s4",
    "beyond_shell_binder_share_s2",
    "beyond_shell_binder_share_s4",
    "particle_share_s1",
    "particle_share_s2",
    "particle_share_s4",
    "particle_grey_s2",
    "volume_binder_share",
    "volume_noise",
    "volume_fringe_outside",
    "volume_fringe_inside",
    "volume_particle_level",
)
N_FEATURES = len(FEATURE_NAMES)
# the per-volume levels come from a central block of at most this many voxels per axis
_GLOBAL_BLOCK = (64, 256, 256)
_FACE = ndimage.generate_binary_structure(3, 1)


class PhaseNet(nn.Module):
    """Multilayer perceptron: standardised features -> binder logit.

    Parameters
    ----------
    hidden : tuple of int
        Widths of the hidden layers (ReLU).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, hidden: tuple[int, ...] = (32, 32)) -> None:
        super().__init__()
        self.hidden = tuple(int(h) for h in hidden)
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        layers: list[nn.Module] = []
        width = N_FEATURES
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def set_standardization(self, features: np.ndarray) -> None:
        """Store the mean and standard deviation of training features (N, N_FEATURES)."""
        arr = np.asarray(features, dtype=np.float64)
        self.mean.copy_(torch.from_numpy(arr.mean(0)).float())
        self.std.copy_(torch.from_numpy(arr.std(0) + 1e-6).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Binder logits (N,) for raw features (N, N_FEATURES)."""
        return self.layers((x - self.mean) / self.std)[:, 0]


@dataclass
class PhaseFeatures:
    """Features of the voxels next to particle surfaces, and a grey-level fallback elsewhere.

    Attributes
    ----------
    values : numpy.ndarray
        float32 (N, N_FEATURES) features (:data:`FEATURE_NAMES`) of the ``index`` voxels.
    index : numpy.ndarray
        int64 (N,) flat indices of the non-particle voxels sharing a face with a particle.
    faces : numpy.ndarray
        float32 (N,) number of faces (1 to 6) each of them shares with particle voxels.
    grey_binder : numpy.ndarray
        bool (Z, Y, X) non-particle voxels whose grey level smoothed beyond the shell (sigma 2)
        exceeds the Otsu level: the grey-level classification used away from the surfaces.
    """

    values: np.ndarray
    index: np.ndarray
    faces: np.ndarray
    grey_binder: np.ndarray


def surface_neighbours(solid: np.ndarray) -> np.ndarray:
    """Non-particle voxels sharing a face with a particle voxel (bool, same shape)."""
    mask = np.asarray(solid, dtype=bool)
    return ndimage.binary_dilation(mask, _FACE) & ~mask


def _central_block(shape: tuple[int, ...]) -> tuple[slice, ...]:
    out = []
    for n, size in zip(shape, _GLOBAL_BLOCK, strict=True):
        start = max(0, (n - size) // 2)
        out.append(slice(start, start + min(n, size)))
    return tuple(out)


def _volume_levels(
    v: np.ndarray, solid: np.ndarray, observed: np.ndarray, beyond: np.ndarray
) -> tuple[float, float, list[float]]:
    """Otsu level and class separation beyond the shell, and the per-volume features."""
    ref = beyond[:: max(1, beyond.size // 1_000_000)]
    if ref.size < 2 or np.ptp(ref) <= 0:
        level, scale = float(ref.mean()) if ref.size else 0.0, 1.0
        share = 0.0
    else:
        level = float(threshold_otsu(ref))
        lo, hi = float(ref[ref <= level].mean()), float(ref[ref > level].mean())
        scale = max(hi - lo, 1e-3)
        share = float((ref > level).mean())
    block = _central_block(v.shape)
    vb, sb, ob = v[block], solid[block], observed[block]

    def mean_of(mask: np.ndarray) -> float:
        sel = mask & ob
        return float(vb[sel].mean()) if sel.any() else level

    grown1 = ndimage.binary_dilation(sb, _FACE)
    grown2 = ndimage.binary_dilation(grown1, _FACE)
    grown3 = ndimage.binary_dilation(grown2, _FACE)
    shrunk1 = ndimage.binary_erosion(sb, _FACE)
    shrunk2 = ndimage.binary_erosion(shrunk1, _FACE)
    shrunk3 = ndimage.binary_erosion(shrunk2, _FACE)
    outer = (mean_of(grown1 & ~sb) - mean_of(grown3 & ~grown2)) / scale
    inner = (mean_of(sb & ~shrunk1) - mean_of(shrunk2 & ~shrunk3)) / scale
    particle = (mean_of(shrunk2 & ~shrunk3) - level) / scale
    far = ob & ~grown1
    smooth = ndimage.gaussian_filter(vb, 1.0, truncate=3.0)
    noise = float(np.std((vb - smooth)[far])) / scale if far.any() else 0.0
    return level, scale, [share, noise, outer, inner, particle]


def face_counts(solid: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Faces each voxel of ``index`` (flat indices) shares with ``solid`` voxels (float32)."""
    mask = np.pad(np.asarray(solid, dtype=bool), 1)
    padded = mask.shape
    coords = np.unravel_index(np.asarray(index, dtype=np.int64), np.shape(solid))
    flat = np.ravel_multi_index(tuple(c + 1 for c in coords), padded)
    flat_mask = mask.ravel()
    counts = np.zeros(flat.size, dtype=np.float32)
    for step in (1, padded[2], padded[1] * padded[2]):
        counts += flat_mask[flat + step]
        counts += flat_mask[flat - step]
    return counts


def matched_calls(probability: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Positive calls that keep the expected weighted share of positives.

    The most probable voxels are called positive until their share of the total ``weight`` is
    closest to the weighted mean ``probability``. A plain 0.5 cut turns uncertain voxels into the
    majority class and so biases shares computed from the calls (here the degree of
    detachment).

    Parameters
    ----------
    probability, weight : numpy.ndarray
        float (N,) probabilities and non-negative weights (face counts).

    Returns
    -------
    numpy.ndarray
        bool (N,) calls; ``probability >= 0.5`` when the weights sum to 0.
    """
    p = np.asarray(probability, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if p.shape != w.shape or p.ndim != 1:
        raise ValueError(
            f"probability and weight must be 1-D of one shape, got {p.shape}, {w.shape}"
        )
    total = w.sum()
    if total <= 0:
        return p >= 0.5
    target = float((p * w).sum())
    order = np.argsort(-p, kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(w[order])])
    n = int(np.argmin(np.abs(cumulative - target)))
    calls = np.zeros(p.size, dtype=bool)
    calls[order[:n]] = True
    return calls


def _block_sum(a: np.ndarray) -> np.ndarray:
    """Sums over 2 x 2 x 2 blocks (the volume zero-padded to even sizes), float32."""
    b = np.asarray(a).astype(np.float32, copy=False)
    pad = [(0, n % 2) for n in b.shape]
    if any(p[1] for p in pad):
        b = np.pad(b, pad)
    b = b[0::2] + b[1::2]
    b = b[:, 0::2] + b[:, 1::2]
    return b[:, :, 0::2] + b[:, :, 1::2]


class _CoarseSampler:
    """Trilinear reading of half-resolution maps at full-resolution voxel positions."""

    def __init__(self, index: np.ndarray, shape: tuple[int, ...], coarse: tuple[int, ...]):
        coords = np.unravel_index(index, shape)
        self.corners: list[tuple[np.ndarray, np.ndarray]] = []
        lows, fracs = [], []
        for c, n in zip(coords, coarse, strict=True):
            # block i holds voxels 2i and 2i + 1: its centre is at 2i + 0.5
            pos = np.clip((c.astype(np.float32) - np.float32(0.5)) / np.float32(2.0), 0, n - 1)
            low = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
            lows.append(low)
            fracs.append(np.clip(pos - low, 0, 1).astype(np.float32) if n > 1 else 0 * pos)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    offs = (dz, dy, dx)
                    flat = np.zeros(index.size, dtype=np.int64)
                    weight = np.ones(index.size, dtype=np.float32)
                    for axis in range(3):
                        n = coarse[axis]
                        pos = np.minimum(lows[axis] + offs[axis], n - 1)
                        flat = flat * n + pos
                        f = fracs[axis]
                        weight *= f if offs[axis] else 1 - f
                    self.corners.append((flat, weight))

    def __call__(self, coarse_map: np.ndarray) -> np.ndarray:
        flat_map = coarse_map.ravel()
        out = np.zeros(self.corners[0][0].size, dtype=np.float32)
        for flat, weight in self.corners:
            out += weight * flat_map[flat]
        return out


def _blur(coarse: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian of a half-resolution map (sigma in full-resolution voxels)."""
    return ndimage.gaussian_filter(coarse, sigma / 2.0, truncate=3.0)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num / np.maximum(den, np.float32(1e-3))


def _coarse_mean(num: np.ndarray, den: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution at half resolution (sigma in full-resolution voxels)."""
    return _ratio(_blur(num, sigma), _blur(den, sigma))


def phase_features(
    normalized: np.ndarray, solid: np.ndarray, observed: np.ndarray | None = None
) -> PhaseFeatures:
    """Features of the non-particle voxels that share a face with a particle.

    The sigma-1 features are computed at full resolution; the wider ones on 2 x 2 x 2 block
    sums (normalised convolution at half resolution, read back trilinearly), which keeps the
    cost at about a quarter of a full-resolution filter each.

    Parameters
    ----------
    normalized : numpy.ndarray
        float (Z, Y, X) reconstructed volume normalised with
        :func:`models.crack_unet.reference_levels` and :func:`models.crack_unet.normalize_slices`
        (particles bright).
    solid : numpy.ndarray
        bool (Z, Y, X) particle voxels (any particle).
    observed : numpy.ndarray, optional
        bool (Z, Y, X) voxels inside the reconstruction circle (default all): the others are
        left out of the smoothed grey levels and the per-volume levels.

    Returns
    -------
    PhaseFeatures
        Features at the surface neighbours and the grey-level classification elsewhere.
    """
    v = np.asarray(normalized, dtype=np.float32)
    mask = np.asarray(solid, dtype=bool)
    if v.ndim != 3 or v.shape != mask.shape:
        raise ValueError(
            f"normalized and solid must be 3-D of the same shape, got {v.shape}, {mask.shape}"
        )
    seen = np.ones(v.shape, dtype=bool) if observed is None else np.asarray(observed, bool)
    if seen.shape != v.shape:
        raise ValueError(f"observed shape {seen.shape} != normalized shape {v.shape}")
    near = surface_neighbours(mask)
    index = np.flatnonzero(near)
    outside = ~mask & seen
    beyond = outside & ~near
    if not beyond.any():
        beyond = outside
    # half-resolution sums: grey levels and counts of the outside, beyond-shell and particle
    # voxels
    v_out = np.where(outside, v, np.float32(0.0))
    c_out_v, c_out = _block_sum(v_out), _block_sum(outside)
    c_bey_v = _block_sum(np.where(beyond, v, np.float32(0.0)))
    c_bey = _block_sum(beyond)
    particle = mask & seen
    c_par_v = _block_sum(np.where(particle, v, np.float32(0.0)))
    c_par = _block_sum(particle)
    sample = _CoarseSampler(index, v.shape, c_out.shape)
    # smoothed counts that serve as the denominator (or numerator) of several features: once
    bey_2, bey_4 = _blur(c_bey, 2.0), _blur(c_bey, 4.0)
    par_2 = _blur(c_par, 2.0)
    beyond_s2 = _ratio(_blur(c_bey_v, 2.0), bey_2)
    ref = beyond_s2[c_bey > 0]
    level, scale, volume_values = _volume_levels(v, mask, seen, ref)
    # grey-level call away from the surfaces: each voxel takes its block's smoothed value
    coarse_binder = beyond_s2 > np.float32(level)
    grey_binder = np.repeat(np.repeat(np.repeat(coarse_binder, 2, 0), 2, 1), 2, 2)
    grey_binder = grey_binder[: v.shape[0], : v.shape[1], : v.shape[2]] & ~mask
    c_bin = _block_sum(beyond & grey_binder)
    values = np.empty((index.size, N_FEATURES), dtype=np.float32)
    lv, sc = np.float32(level), np.float32(scale)

    def relative(a: np.ndarray) -> np.ndarray:
        return (a - lv) / sc

    values[:, 0] = relative(v.ravel()[index])
    fine = ndimage.gaussian_filter(v_out, 1.0, truncate=3.0).ravel()[index]
    fine /= np.maximum(
        ndimage.gaussian_filter(outside.astype(np.float32), 1.0, truncate=3.0).ravel()[index],
        np.float32(1e-3),
    )
    values[:, 1] = relative(fine)
    values[:, 2] = relative(sample(_coarse_mean(c_out_v, c_out, 2.0)))
    values[:, 3] = relative(sample(_coarse_mean(c_out_v, c_out, 4.0)))
    values[:, 4] = relative(sample(beyond_s2))
    values[:, 5] = relative(sample(_ratio(_blur(c_bey_v, 4.0), bey_4)))
    values[:, 6] = sample(_ratio(_blur(c_bin, 2.0), bey_2))
    values[:, 7] = sample(_ratio(_blur(c_bin, 4.0), bey_4))
    values[:, 8] = ndimage.gaussian_filter(particle.astype(np.float32), 1.0, truncate=3.0).ravel()[
        index
    ]
    ones = _block_sum(seen)
    values[:, 9] = sample(_ratio(par_2, _blur(ones, 2.0)))
    values[:, 10] = sample(_coarse_mean(c_par, ones, 4.0))
    values[:, 11] = relative(sample(_ratio(_blur(c_par_v, 2.0), par_2)))
    values[:, 12:] = np.asarray(volume_values, dtype=np.float32)
    return PhaseFeatures(
        values=values, index=index, faces=face_counts(mask, index), grey_binder=grey_binder
    )


@torch.inference_mode()
def predict_binder(model: PhaseNet, features: np.ndarray, batch_size: int = 1 << 18) -> np.ndarray:
    """Binder probabilities of feature rows.

    Parameters
    ----------
    model : PhaseNet
        Network in eval mode.
    features : numpy.ndarray
        float32 (N, N_FEATURES) from :func:`phase_features`.
    batch_size : int, optional
        Rows per forward pass.

    Returns
    -------
    numpy.ndarray
        float32 (N,) probabilities that the voxel is carbon/binder rather than pore.
    """
    arr = np.asarray(features, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != N_FEATURES:
        raise ValueError(f"features must be (N, {N_FEATURES}), got {arr.shape}")
    device = next(model.parameters()).device
    out = np.empty(len(arr), dtype=np.float32)
    for i in range(0, len(arr), batch_size):
        batch = torch.from_numpy(arr[i : i + batch_size]).to(device)
        out[i : i + batch_size] = torch.sigmoid(model(batch)).float().cpu().numpy()
    return out


def save_phase_net(model: PhaseNet, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Save weights, architecture settings and JSON metadata (training config, scores)."""
    save_checkpoint(
        model,
        path,
        kind=KIND,
        init={"hidden": list(model.hidden)},
        metadata=metadata,
        extra={"features": list(FEATURE_NAMES)},
    )


def load_phase_net(
    path: str | Path | None = None, *, device: torch.device | None = None
) -> PhaseNet:
    """Load the binder/pore classifier in evaluation mode.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        Weights file; default the shipped :data:`DEFAULT_WEIGHTS`.
    device : torch.device, optional
        Default :func:`models.device.pick_device`.

    Returns
    -------
    PhaseNet
        Network on ``device`` in ``eval()`` mode.

    Raises
    ------
    FileNotFoundError
        If the weights file does not exist.
    ValueError
        If the weights were trained on other features.
    """
    checkpoint, dev = read_checkpoint(path, DEFAULT_WEIGHTS, "phase net", device=device)
    if tuple(checkpoint.get("features", ())) != FEATURE_NAMES:
        raise ValueError("phase net weights were trained on other features than FEATURE_NAMES")
    init = constructor_args(checkpoint, KIND, lambda c: {"hidden": c["hidden"]})
    model = PhaseNet(hidden=tuple(int(h) for h in init["hidden"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(dev).eval()


def load_phase_net_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """Training metadata stored with the weights (config, held-out scores)."""
    return read_metadata(path, DEFAULT_WEIGHTS)
