"""3-D crack maps: U-Net applied slice by slice, tile by tile, and the threshold baseline.

Entry point: :func:`map_cracks` (whole volume -> :class:`CrackResult` with masks and the
quantification) or :func:`iter_crack_slices` (one slice at a time, for live writers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from scipy import ndimage
from skimage.filters import threshold_otsu, threshold_triangle
from skimage.morphology import disk

from models.crack_unet import (
    SIZE_MULTIPLE,
    CrackUNet,
    context_stacks,
    load_crack_unet,
    normalize_slices,
    predict_probabilities,
    reference_levels,
)
from models.envelope_unet import EnvelopeUNet, load_envelope_unet, predict_envelope_stacks
from pipelines.cracks.particle_mask import (
    ParticleMaskParams,
    binary_dilate,
    binary_erode,
    drop_edge_specks,
    drop_small_pieces,
    learned_envelope_voids,
    particle_envelope_slice,
    particle_mask_slice,
    solid_threshold,
    surface_inlets,
)
from pipelines.cracks.quantify import DamageQuantification, QuantifyParams, quantify_damage
from pipelines.cracks.tiling import TileModel, apply_tiled, tiles_per_slice
from pipelines.volumes import check_volume


class CrackParams(BaseModel):
    """Parameters of :func:`map_cracks`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile_size: PositiveInt = Field(
        default=512,
        description="Requested U-Net tile side: slices up to 1/8 larger are one tile, larger "
        "ones the fewest tiles (sides multiples of 16, at most 1/8 longer) that keep the "
        "overlap (pipelines.cracks.tiling.axis_tiles).",
    )
    overlap: NonNegativeInt = Field(
        default=32, description="Minimum overlap of neighbouring tiles (blend ramp length)."
    )
    batch_size: PositiveInt = 4
    threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="Crack probability threshold."
    )
    zero_is_outside: bool = Field(
        default=True,
        description="Voxels exactly 0 are no crack candidates of the network (it sees a flat "
        "zero input there, unlike anything it was trained on), and the ones connected to the "
        "slice border are outside the reconstruction circle: no crack there. 'contact' "
        "envelope: zeros enclosed by data (an 8-bit slice saturates a dark core to 0) may be "
        "voids of the particle around them (reconstructed_area).",
    )
    envelope: Literal["contact", "closing", "learned", "contact_learned"] = Field(
        default="contact",
        description="Particle mask: 'contact' = pieces joined across cracks by their contact "
        "share, enclosed voids and joining cracks reported as cracks "
        "(particle_envelope_slice); 'closing' = the network's cracks added to the solid, "
        "closed and filled within one particle (particle_mask_slice, the earlier mask); "
        "'learned' = the envelope network's mask (models.envelope_unet), the dark pixels "
        "inside it reported as cracks (learned_envelope_voids); 'contact_learned' = the "
        "'contact' envelope plus the learned envelope's pixels within envelope_reach_px of it "
        "(the dark ones reported as cracks).",
    )
    envelope_reach_px: NonNegativeInt = Field(
        default=4,
        description="'contact_learned': the learned envelope is added within a closing of this "
        "radius of the 'contact' envelope (wide cracks between its pieces).",
    )
    envelope_threshold: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="'learned' envelope: envelope probability threshold.",
    )
    bridge_threshold: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="'contact' envelope: crack probability above which particles may grow "
        "into a pixel to meet across a crack.",
    )
    report_voids: bool = Field(
        default=True,
        description="'contact' envelope: add the dark holes enclosed by one particle (core "
        "voids) and the cracks that join its pieces to the crack mask; 'learned': add the "
        "dark pixels inside the envelope.",
    )
    min_edge_crack_px: NonNegativeInt = Field(
        default=8,
        description="'contact' and 'learned' envelopes: crack pieces (8-connected, in-slice) "
        "smaller than "
        "this that touch the outside of the particle envelope are dropped "
        "(particle_mask.drop_edge_specks); 0 keeps them.",
    )
    inlet_radius_px: NonNegativeInt = Field(
        default=0,
        description="'contact' envelope: dark, narrow and deep inlets into one particle, up to "
        "about twice this wide, join the envelope and are reported as cracks "
        "(particle_mask.surface_inlets: cracks open to the surface and gaps of a fractured "
        "particle that the network misses); 0 = off (costs about 15 ms per 512^2 slice).",
    )
    inlet_depth_ratio: float = Field(
        default=4.0,
        ge=0.0,
        description="surface_inlets: an inlet pixel lies deeper inside the closed particle "
        "than this times its distance to the envelope, plus 2 px.",
    )
    workers: PositiveInt | None = Field(
        default=None,
        description="Threads for the per-slice particle masks and the density maps; None = "
        "torch's intra-op thread count (the CPU budget the network is given).",
    )
    particle: ParticleMaskParams = ParticleMaskParams()
    quantify: QuantifyParams = QuantifyParams()

    def n_workers(self) -> int:
        """Thread count of the NumPy/SciPy stages (:attr:`workers`, resolved)."""
        return self.workers if self.workers is not None else max(1, torch.get_num_threads())


@dataclass
class CrackSlice:
    """Result of one slice: index, crack mask and particle mask (uint8, 1 = True)."""

    z: int
    crack: np.ndarray
    particle: np.ndarray


@dataclass
class CrackResult:
    """Crack map of a volume.

    Attributes
    ----------
    crack_mask : numpy.ndarray
        uint8 (Z, Y, X), 1 = crack.
    particle_mask : numpy.ndarray
        uint8 (Z, Y, X), 1 = particle including its cracks.
    quantification : DamageQuantification
        Density maps, depth profile, distributions and correlations.
    solid_threshold : float
        Intensity threshold used for the particle mask.
    """

    crack_mask: np.ndarray
    particle_mask: np.ndarray
    quantification: DamageQuantification
    solid_threshold: float


def reconstructed_area(image: np.ndarray) -> np.ndarray:
    """Pixels of a slice that hold data: all but the zeros connected to the slice border.

    The outside of the reconstruction circle is exactly 0 and reaches the border; zeros
    enclosed by data are the darkest grey level of an 8-bit slice (a core void or a wide
    crack saturated to 0), not missing data.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) slice.

    Returns
    -------
    numpy.ndarray
        bool (Y, X), False on the zeros connected (4-neighbours) to the slice border.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    zero = img == 0
    if not zero.any():
        return np.ones(img.shape, dtype=bool)
    pieces, _ = ndimage.label(zero)
    rim = np.concatenate((pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1]))
    on_border = np.zeros(int(pieces.max()) + 1, dtype=bool)
    on_border[rim] = True
    on_border[0] = False
    return ~on_border[pieces]


def unet_tile_model(model: CrackUNet) -> TileModel:
    """Wrap the U-Net as a tile model: context tiles (B, 3, h, w) -> crack probabilities
    (B, h, w), float32."""

    def run(tiles: np.ndarray) -> np.ndarray:
        return predict_probabilities(model, tiles)

    return run


def _resolve_model(model: CrackUNet | TileModel | None, params: CrackParams) -> TileModel:
    if model is None:
        return unet_tile_model(load_crack_unet())
    if isinstance(model, CrackUNet):
        return unet_tile_model(model)
    return model


def iter_crack_slices(
    volume: np.ndarray,
    params: CrackParams | None = None,
    *,
    model: CrackUNet | TileModel | None = None,
    envelope_model: EnvelopeUNet | None = None,
) -> Iterator[CrackSlice]:
    """Segment cracks and particles slice by slice.

    The intensity levels (:func:`models.crack_unet.reference_levels`) and the solid threshold
    are computed once on the whole volume first, so every slice is normalised the same way
    as the training data. The model sees each slice with its two neighbours
    (:func:`models.crack_unet.context_stacks`; the first and last slice repeat themselves).

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed volume, any integer or float dtype.
    params : CrackParams, optional
        Tiling, threshold, particle-mask settings.
    model : CrackUNet or callable, optional
        Network or tile model (batch of normalised context tiles (B, 3, h, w), slices
        ``z - 1, z, z + 1`` -> probabilities (B, h, w) of the middle slices); default the
        shipped U-Net.
    envelope_model : EnvelopeUNet, optional
        Envelope network of ``envelope="learned"``; default the shipped weights
        (:func:`models.envelope_unet.load_envelope_unet`). Unused by the other envelopes.

    Yields
    ------
    CrackSlice
        In increasing z; the particle mask includes the slice's cracks, and cracks lie inside
        the particle mask.
    """
    p = params if params is not None else CrackParams()
    vol = check_volume(volume)
    tile_model = _resolve_model(model, p)
    env_net = _resolve_envelope(envelope_model, p)
    with ThreadPoolExecutor(p.n_workers(), thread_name_prefix="crack-slices") as pool:
        levels = _volume_levels(vol, p, pool)
        yield from _segment(vol, p, tile_model, pool, *levels, env_net)


def _resolve_envelope(model: EnvelopeUNet | None, params: CrackParams) -> EnvelopeUNet | None:
    if params.envelope not in ("learned", "contact_learned"):
        return None
    return model if model is not None else load_envelope_unet()


def _volume_levels(
    vol: np.ndarray, p: CrackParams, pool: ThreadPoolExecutor
) -> tuple[float, float, float]:
    """Normalisation levels and solid threshold of the whole volume (computed side by side)."""
    pending = pool.submit(solid_threshold, vol) if p.particle.threshold is None else None
    low, high = reference_levels(vol)
    threshold = pending.result() if pending is not None else p.particle.threshold
    assert threshold is not None
    return low, high, threshold


def _segment(
    vol: np.ndarray,
    p: CrackParams,
    tile_model: TileModel,
    pool: ThreadPoolExecutor,
    low: float,
    high: float,
    threshold: float,
    env_net: EnvelopeUNet | None = None,
) -> Iterator[CrackSlice]:
    chunk = max(
        1, p.batch_size // tiles_per_slice(vol.shape, p.tile_size, p.overlap, SIZE_MULTIPLE)
    )

    def finish(
        z: int, image: np.ndarray, prob: np.ndarray, env_prob: np.ndarray | None
    ) -> CrackSlice:
        crack = prob >= p.threshold
        if env_prob is not None and p.envelope == "learned":
            envelope = env_prob >= p.envelope_threshold
            if p.zero_is_outside:
                envelope &= image != 0
            envelope = drop_small_pieces(envelope, p.particle.min_area)
            if p.report_voids:
                crack |= learned_envelope_voids(image, threshold, envelope, p.particle)
            crack &= envelope
            crack = drop_edge_specks(crack, envelope, p.min_edge_crack_px)
            return CrackSlice(z, crack.view(np.uint8), envelope.view(np.uint8))
        if p.envelope in ("contact", "contact_learned"):
            bridge = prob >= p.bridge_threshold
            if p.zero_is_outside:
                # the network's output on a flat zero input is not a candidate
                inside = image != 0
                crack &= inside
                bridge &= inside
            particle, voids = particle_envelope_slice(
                image, threshold, p.particle, bridge=bridge, cracks=crack
            )
            if env_prob is not None:
                added = (env_prob >= p.envelope_threshold) & ~particle
                if p.envelope_reach_px:
                    reach = disk(p.envelope_reach_px).astype(bool)
                    added &= binary_erode(binary_dilate(particle, reach), reach)
                if p.zero_is_outside:
                    added &= inside
                particle = particle | added
                voids = voids | (
                    learned_envelope_voids(image, threshold, particle, p.particle) & added
                )
            if p.report_voids:
                crack |= voids
            crack &= particle
            if p.inlet_radius_px:
                inlets = surface_inlets(
                    image,
                    threshold,
                    particle,
                    radius=p.inlet_radius_px,
                    depth_ratio=p.inlet_depth_ratio,
                )
                if p.zero_is_outside:
                    inlets &= inside
                particle = particle | inlets
                crack |= inlets
            if p.zero_is_outside:
                crack &= reconstructed_area(image)
            crack = drop_edge_specks(crack, particle, p.min_edge_crack_px)
            return CrackSlice(z, crack.view(np.uint8), particle.view(np.uint8))
        if p.zero_is_outside:
            crack &= reconstructed_area(image)
        particle = particle_mask_slice(image, threshold, p.particle, cracks=crack)
        # a crack is inside a particle: isolated detections (dropped as too small to be a
        # particle) are not kept
        crack &= particle
        return CrackSlice(z, crack.view(np.uint8), particle.view(np.uint8))

    # the network's forward pass uses every core; the masks of a block's slices (SciPy and
    # NumPy release the GIL) then run on as many threads, so no core idles during them
    for z0 in range(0, vol.shape[0], chunk):
        block = vol[z0 : z0 + chunk]
        below, above = max(z0 - 1, 0), min(z0 + len(block) + 1, vol.shape[0])
        normalized = normalize_slices(vol[below:above], low, high)
        stacks = context_stacks(normalized, z0 - below, z0 - below + len(block))
        probs = apply_tiled(
            stacks,
            tile_model,
            tile_size=p.tile_size,
            overlap=p.overlap,
            batch_size=p.batch_size,
            multiple=SIZE_MULTIPLE,
        )
        env_probs: np.ndarray | list[None] = (
            predict_envelope_stacks(env_net, stacks, batch_size=p.batch_size)
            if env_net is not None
            else [None] * len(block)
        )
        yield from pool.map(finish, range(z0, z0 + len(block)), block, probs, env_probs)


def map_cracks(
    volume: np.ndarray,
    params: CrackParams | None = None,
    *,
    model: CrackUNet | TileModel | None = None,
    envelope_model: EnvelopeUNet | None = None,
    progress: Callable[[int], None] | None = None,
) -> CrackResult:
    """3-D crack map, particle mask and damage quantification of a reconstructed volume.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed volume, any integer or float dtype; z = 0 is taken as the
        separator side for the depth profile.
    params : CrackParams, optional
        See :class:`CrackParams`.
    model : CrackUNet or callable, optional
        Default the shipped U-Net (:func:`models.crack_unet.load_crack_unet`).
    envelope_model : EnvelopeUNet, optional
        Envelope network of ``envelope="learned"``; default the shipped weights.
    progress : callable, optional
        Called with 1 after each slice.

    Returns
    -------
    CrackResult
        uint8 masks and :class:`~pipelines.cracks.quantify.DamageQuantification`.
    """
    p = params if params is not None else CrackParams()
    vol = check_volume(volume)
    tile_model = _resolve_model(model, p)
    env_net = _resolve_envelope(envelope_model, p)
    cracks = np.zeros(vol.shape, dtype=np.uint8)
    particles = np.zeros(vol.shape, dtype=np.uint8)
    with ThreadPoolExecutor(p.n_workers(), thread_name_prefix="crack-slices") as pool:
        low, high, threshold = _volume_levels(vol, p, pool)
        for piece in _segment(vol, p, tile_model, pool, low, high, threshold, env_net):
            cracks[piece.z] = piece.crack
            particles[piece.z] = piece.particle
            if progress is not None:
                progress(1)
    return CrackResult(
        crack_mask=cracks,
        particle_mask=particles,
        quantification=quantify_damage(cracks, particles, p.quantify, workers=p.n_workers()),
        solid_threshold=threshold,
    )


def threshold_baseline(
    volume: np.ndarray,
    particle_mask: np.ndarray,
    *,
    method: Literal["otsu", "triangle"] = "otsu",
) -> np.ndarray:
    """Conventional crack segmentation: dark voxels inside the particle mask.

    The threshold is Otsu's (or the triangle method's) on the intensities inside the particle
    mask; every voxel of the mask below it is called a crack. Pores and binder enclosed by the
    mask, phase-contrast fringes and noise are dark too, which is where this baseline fails.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed volume.
    particle_mask : numpy.ndarray
        (Z, Y, X) particle mask including cracks.
    method : {"otsu", "triangle"}
        Automatic threshold.

    Returns
    -------
    numpy.ndarray
        uint8 (Z, Y, X), 1 = crack.
    """
    vol = check_volume(volume)
    mask = np.asarray(particle_mask).astype(bool)
    if mask.shape != vol.shape:
        raise ValueError(f"particle_mask shape {mask.shape} != volume shape {vol.shape}")
    values = vol[mask]
    if values.size == 0:
        return np.zeros(vol.shape, dtype=np.uint8)
    sample = values[:: max(1, values.size // 2_000_000)].astype(np.float64)
    if method == "otsu":
        level = threshold_otsu(sample)
    elif method == "triangle":
        level = threshold_triangle(sample)
    else:
        raise ValueError(f"method must be 'otsu' or 'triangle', got {method!r}")
    return (mask & (vol < level)).astype(np.uint8)


def overlap_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU and Dice of two masks.

    Parameters
    ----------
    predicted, truth : numpy.ndarray
        Masks of the same shape (bool or 0/1).

    Returns
    -------
    dict
        ``{"iou": ..., "dice": ...}``; both 1.0 when both masks are empty.
    """
    pred = np.asarray(predicted).astype(bool)
    true = np.asarray(truth).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"predicted shape {pred.shape} != truth shape {true.shape}")
    inter = float(np.count_nonzero(pred & true))
    union = float(np.count_nonzero(pred | true))
    total = float(np.count_nonzero(pred) + np.count_nonzero(true))
    return {
        "iou": inter / union if union else 1.0,
        "dice": 2.0 * inter / total if total else 1.0,
    }
