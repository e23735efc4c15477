"""Particle instance segmentation that keeps cracked particles whole, and the watershed baseline.

:func:`segment_instances` runs the particle U-Net (:mod:`models.particle_unet`) slice by slice
on the normalised volume; it predicts the particle foreground with the cracks filled in and the
distance to the particle boundary, in which cracks are not boundaries. A seeded 3-D watershed of
that distance, with one marker per regional maximum (h-maxima), gives the instances; pieces of
one particle merge (:mod:`pipelines.particles.merge`) and instances that the envelope network or
the grey levels say hold no active material are dropped, and their voxels that are neither
envelope nor solid are trimmed (:mod:`pipelines.particles.accept`).
:func:`watershed_baseline` is the classic distance transform + local maxima + watershed on a
binary solid mask; a crack through a particle makes two distance maxima, so it splits the
particle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from models.crack_unet import normalize_slices, reference_levels
from models.envelope_unet import EnvelopeUNet, load_envelope_unet, predict_envelope
from models.particle_unet import ParticleUNet, load_particle_unet, predict_maps
from pipelines.cracks.particle_mask import fill_enclosed_holes
from pipelines.particles.accept import accept_inplace, trim_dark_outline
from pipelines.particles.evaluate import instance_scores
from pipelines.particles.merge import (
    contact_graph_blocks,
    envelope_merges,
    fill_from_envelope,
    merge_by_contact,
    merge_on_graph,
)
from pipelines.volumes import check_volume


class InstanceParams(BaseModel):
    """Parameters of :func:`segment_instances`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    foreground_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    smoothing_sigma: float = Field(
        default=1.0, ge=0.0, description="Gaussian smoothing of the predicted distance (voxels)."
    )
    marker_h: float = Field(
        default=1.0, gt=0.0, description="Depth (voxels) a distance maximum needs to seed."
    )
    marker_downsample: PositiveInt = Field(
        default=2,
        description="The maxima are searched on every n-th voxel along each axis (the smoothed "
        "distance varies slowly; n = 2 makes the search about 8 times faster).",
    )
    min_size: NonNegativeInt = Field(default=60, description="Smaller instances are dropped.")
    merge_min_share: float = Field(
        default=0.12,
        ge=0.0,
        le=1.0,
        description="Merge touching instances whose contact is at least this share of the "
        "smaller one's surface (pieces of one particle cut by a crack, a hollow "
        "core or extra distance maxima; pipelines.particles.merge); 0 = no merging.",
    )
    merge_bridge_px: NonNegativeInt = Field(
        default=1,
        description="For the contact, instances are first grown by this many pixels into "
        "background that the network still gives some particle probability (a crack between "
        "two pieces); 0 = direct contacts only.",
    )
    fill_holes: bool = Field(
        default=True,
        description="In every slice, background enclosed by one instance (a hollow core, a "
        "void) becomes part of it: a particle's label covers its envelope.",
    )
    merge_bridge_foreground: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Lowest particle probability a bridging pixel may have.",
    )
    merge_bridge_envelope: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="With envelope_merge: lowest envelope probability a bridging pixel may "
        "have (a crack lies inside the envelope, the gap between two touching particles "
        "mostly not); 0 = no envelope condition. 0.3 keeps more small touching particles "
        "apart (README issue 13, small particles); off by default: one fewer match on the "
        "real crops.",
    )
    zero_is_outside: bool = Field(
        default=True,
        description="Voxels exactly 0 are outside the reconstruction circle: no particle there.",
    )
    envelope_merge: bool = Field(
        default=True,
        description="Run the envelope network (models.envelope_unet) and merge the instances "
        "that lie in one component of its envelope (pipelines.particles.merge."
        "merge_by_envelope): the pieces of a particle cut by a wide crack; False = the "
        "contact merge alone.",
    )
    envelope_threshold: float = Field(
        default=0.7,
        gt=0.0,
        lt=1.0,
        description="Envelope probability threshold of the merge (0.7: a sweep of 0.5 / 0.7 / "
        "0.85 / 0.95 on the never-trained family and the real crops, README issue 13).",
    )
    envelope_min_neck: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="The envelope merge links two instances only where the envelope between "
        "them is at least this share as thick as the thinner one (pipelines.particles.merge."
        "merge_by_envelope, min_neck_ratio): an envelope that joins two particles over a thin "
        "neck does not merge them; 0 = any connection merges.",
    )
    envelope_fill: bool = Field(
        default=False,
        description="With envelope_merge: background inside an envelope component holding "
        "one instance joins it (pipelines.particles.merge.fill_from_envelope).",
    )
    min_envelope_probability: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="With envelope_merge: an instance whose mean envelope probability is "
        "below this is dropped (the envelope network does not call it particle; "
        "pipelines.particles.accept); 0 = keep all.",
    )
    min_solid_reach: float = Field(
        default=0.5,
        ge=0.0,
        description="An instance whose brightest tenth of voxels does not reach this share of "
        "the way from the volume's background grey level to its solid level is dropped (it "
        "holds no active material: carbon/binder texture; pipelines.particles.accept); "
        "0 = keep all.",
    )
    trim_unlike_voxels: bool = Field(
        default=True,
        description="With envelope_merge: voxels of an instance whose envelope probability is "
        "below min_envelope_probability and whose grey level is below min_solid_reach of the "
        "way to the solid level leave it; enclosed holes are refilled "
        "(pipelines.particles.accept.trim_unlike_voxels).",
    )
    trim_dark_outline: bool = Field(
        default=False,
        description="Outline pixels (in-slice) darker than half-way from the background to "
        "the lower of the solid level and the instance's own brightest tenth leave it "
        "(pipelines.particles.accept.trim_dark_outline): the half-maximum outline. Off by "
        "default: it matches the real crops' grey-level outlines (F1 0.888 -> 0.922) but makes "
        "the synthetic families' particles 3-4 % too small (README issue 13, 'Outline').",
    )
    batch_size: PositiveInt = 4


@dataclass
class InstanceResult:
    """Instances and the network maps they were derived from.

    Attributes
    ----------
    labels : numpy.ndarray
        int32 (Z, Y, X), 0 = background, 1..n particles.
    foreground : numpy.ndarray
        float32 (Z, Y, X) particle probability.
    distance : numpy.ndarray
        float32 (Z, Y, X) predicted distance to the particle boundary (voxels).
    envelope : numpy.ndarray or None
        float32 (Z, Y, X) envelope probability (``envelope_merge`` only).
    """

    labels: np.ndarray
    foreground: np.ndarray
    distance: np.ndarray
    envelope: np.ndarray | None = None


def normalize_volume(volume: np.ndarray) -> np.ndarray:
    """float32 volume normalised as the crack and particle U-Nets expect (1st/99.5th pct)."""
    low, high = reference_levels(volume)
    return normalize_slices(volume, low, high)


def segment_instances(
    volume: np.ndarray,
    params: InstanceParams | None = None,
    *,
    model: ParticleUNet | None = None,
    envelope_model: EnvelopeUNet | None = None,
    progress: Callable[[int], None] | None = None,
    levels: tuple[float, float] | None = None,
) -> InstanceResult:
    """Crack-robust particle instances of a reconstructed volume.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) reconstructed grey-level volume, any integer or float dtype (particles
        bright). It is normalised with :func:`models.crack_unet.reference_levels`.
    params : InstanceParams, optional
        Thresholds and marker settings.
    model : ParticleUNet, optional
        Default the shipped weights (:func:`models.particle_unet.load_particle_unet`).
    envelope_model : EnvelopeUNet, optional
        Envelope network of ``envelope_merge``; default the shipped weights
        (:func:`models.envelope_unet.load_envelope_unet`).
    progress : callable, optional
        Called with the number of slices done after each network batch.
    levels : tuple of float, optional
        Normalisation levels (low, high) to use instead of those of ``volume`` (a slab of a
        larger volume is normalised with the levels of the whole volume).

    Returns
    -------
    InstanceResult
        int32 labels and the predicted maps.
    """
    p = params if params is not None else InstanceParams()
    vol = check_volume(volume)
    normalized = normalize_volume(vol) if levels is None else normalize_slices(vol, *levels)
    maps = predict_instance_maps(
        vol, normalized, p, model=model, envelope_model=envelope_model, progress=progress
    )
    labels = instances_from_network(
        normalized, maps, p, valid=vol != 0 if p.zero_is_outside else None
    )
    return InstanceResult(
        labels=labels, foreground=maps.foreground, distance=maps.distance, envelope=maps.envelope
    )


@dataclass
class InstanceMaps:
    """What the networks say about each voxel, the input of :func:`instances_from_network`.

    Attributes
    ----------
    foreground : numpy.ndarray
        float32 (Z, Y, X) particle probability.
    distance : numpy.ndarray
        float32 (Z, Y, X) predicted distance to the particle boundary (voxels).
    envelope : numpy.ndarray or None
        float32 (Z, Y, X) envelope probability (``envelope_merge`` only).
    """

    foreground: np.ndarray
    distance: np.ndarray
    envelope: np.ndarray | None = None


def predict_instance_maps(
    volume: np.ndarray,
    normalized: np.ndarray,
    params: InstanceParams | None = None,
    *,
    model: ParticleUNet | None = None,
    envelope_model: EnvelopeUNet | None = None,
    progress: Callable[[int], None] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> InstanceMaps:
    """The particle (and envelope) network's maps of slices ``start .. stop - 1``.

    The networks see slices ``z - 1, z, z + 1``, so the maps of a slab read with one slice
    more on each side (where the volume has it) are those of the whole volume.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) grey levels (for ``zero_is_outside``: no particle where a voxel is 0).
    normalized : numpy.ndarray
        float32 (Z, Y, X) the same slices normalised (:func:`models.crack_unet.normalize_slices`).
    params, model, envelope_model, progress
        As for :func:`segment_instances`.
    start, stop : int, optional
        Slices to predict (default all); the others are only context.

    Returns
    -------
    InstanceMaps
        Maps of the ``stop - start`` slices, 0 where the volume is 0 with ``zero_is_outside``.
    """
    p = params if params is not None else InstanceParams()
    vol = check_volume(volume)
    if np.shape(normalized) != vol.shape:
        raise ValueError(f"normalized shape {np.shape(normalized)} != volume {vol.shape}")
    net = model if model is not None else load_particle_unet()
    foreground, distance = predict_maps(
        net, normalized, batch_size=p.batch_size, progress=progress, start=start, stop=stop
    )
    outside = vol[start : start + len(foreground)] == 0 if p.zero_is_outside else None
    if outside is not None:
        foreground[outside] = 0.0
    envelope = None
    if p.envelope_merge:
        env_net = envelope_model if envelope_model is not None else load_envelope_unet()
        envelope = predict_envelope(
            env_net, normalized, batch_size=p.batch_size, start=start, stop=stop
        )
        if outside is not None:
            envelope[outside] = 0.0
    return InstanceMaps(foreground, distance, envelope)


def instances_from_network(
    normalized: np.ndarray,
    maps: InstanceMaps,
    params: InstanceParams | None = None,
    *,
    valid: np.ndarray | None = None,
    overwrite_maps: bool = False,
) -> np.ndarray:
    """Instances of the networks' maps (:func:`segment_instances` after the networks).

    Parameters
    ----------
    normalized : numpy.ndarray
        float32 (Z, Y, X) normalised grey levels.
    maps : InstanceMaps
        The networks' maps of the same slices (:func:`predict_instance_maps`).
    params : InstanceParams, optional
    valid : numpy.ndarray, optional
        bool (Z, Y, X) voxels inside the reconstruction (``zero_is_outside``: volume != 0).
    overwrite_maps : bool, optional
        The distance map may be overwritten (smoothed in place): one float32 volume less.

    Returns
    -------
    numpy.ndarray
        int32 (Z, Y, X) labels 1..n.
    """
    p = params if params is not None else InstanceParams()
    labels = labels_from_instance_maps(maps, p, overwrite_distance=overwrite_maps)
    return accept_instances(labels, normalized, maps, p, valid=valid)


def labels_from_instance_maps(
    maps: InstanceMaps, params: InstanceParams, *, overwrite_distance: bool = False
) -> np.ndarray:
    """:func:`labels_from_maps` of the networks' maps, the envelope (when there is one) used
    both as the mask of its merge and as the probability of ``merge_bridge_envelope``."""
    return labels_from_maps(
        maps.foreground,
        maps.distance,
        params,
        envelope=maps.envelope,
        envelope_threshold=params.envelope_threshold,
        envelope_probability=maps.envelope,
        overwrite_distance=overwrite_distance,
    )


def accept_instances(
    labels: np.ndarray,
    normalized: np.ndarray,
    maps: InstanceMaps,
    params: InstanceParams | None = None,
    *,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """The last steps of :func:`instances_from_network`: the instances that hold no active
    material are dropped, the voxels that are neither envelope nor solid trimmed
    (:mod:`pipelines.particles.accept`), written into ``labels`` (int32, from
    :func:`labels_from_maps`) where they can be; returns the labels. The maps may be
    array-likes read when needed (``numpy.asarray``), and ``distance`` is not used."""
    p = params if params is not None else InstanceParams()
    envelope = None if maps.envelope is None else np.asarray(maps.envelope)
    drop = p.min_solid_reach > 0 or (envelope is not None and p.min_envelope_probability > 0)
    trim = envelope is not None and p.trim_unlike_voxels
    if drop or trim:
        accept_inplace(
            labels,
            normalized,
            maps.foreground,
            envelope=envelope,
            min_envelope=p.min_envelope_probability if envelope is not None else 0.0,
            min_solid_reach=p.min_solid_reach,
            drop=drop,
            trim=trim,
            valid=valid,
        )
        if trim:
            _remove_small_inplace(labels, p.min_size)
    if p.trim_dark_outline:
        foreground = np.asarray(maps.foreground)
        outlined = trim_dark_outline(labels, normalized, foreground, share=0.5, valid=valid)
        labels = remove_small(outlined, p.min_size)
    return labels


def labels_from_maps(
    foreground: np.ndarray,
    distance: np.ndarray,
    params: InstanceParams | None = None,
    *,
    envelope: np.ndarray | None = None,
    envelope_probability: np.ndarray | None = None,
    envelope_threshold: float | None = None,
    overwrite_distance: bool = False,
) -> np.ndarray:
    """Instances of the network's maps: seeded watershed, merge of pieces, holes filled.

    The steps of :func:`segment_instances` after the network (:func:`instances_from_maps`,
    :func:`merge_pieces` when ``merge_min_share`` > 0, the envelope merge
    (:func:`pipelines.particles.merge.merge_by_envelope`, and ``envelope_fill``) when an
    ``envelope`` is given, per-slice hole filling when ``fill_holes``).

    Parameters
    ----------
    foreground, distance : numpy.ndarray
        float (Z, Y, X) particle probability and boundary distance (voxels).
    params : InstanceParams, optional
    envelope : numpy.ndarray, optional
        bool (Z, Y, X) particle envelope (:mod:`models.envelope_unet`).
    envelope_probability : numpy.ndarray, optional
        float (Z, Y, X) envelope probability, for ``merge_bridge_envelope``.
    envelope_threshold : float, optional
        When given, ``envelope`` holds probabilities and the envelope is where they reach
        this (formed after the watershed, so it is not held during it).
    overwrite_distance : bool, optional
        As for :func:`instances_from_maps`.

    The maps may be array-likes that are read when needed (``numpy.asarray``, and slices
    along z for the merge), e.g. slices of a Zarr array: then no map is held longer than the
    step that uses it.

    Returns
    -------
    numpy.ndarray
        int32 (Z, Y, X) labels.
    """
    p = params if params is not None else InstanceParams()
    labels = instances_from_maps(foreground, distance, p, overwrite_distance=overwrite_distance)
    if p.merge_min_share > 0:
        _merge_pieces_inplace(labels, foreground, p, envelope=envelope_probability)
    if envelope is not None:
        if np.shape(envelope) != labels.shape:
            raise ValueError(f"envelope shape {np.shape(envelope)} != maps {labels.shape}")
        inside = (
            np.asarray(envelope) >= envelope_threshold
            if envelope_threshold is not None
            else envelope
        )
        mapping = envelope_merges(labels, inside, min_neck_ratio=p.envelope_min_neck)
        if mapping:
            _apply_mapping_inplace(labels, mapping)
        if p.envelope_fill:
            labels = fill_from_envelope(labels, inside)
        del inside
    if p.fill_holes:
        # a hole ringed by one particle lies inside the reconstruction circle, even where an
        # 8-bit render has stored it as exact 0
        for plane in labels:
            plane[...] = fill_enclosed_holes(plane)
    return labels


#: Slices of the grown labels :func:`merge_pieces` holds at once (their contact graph is
#: counted block by block).
MERGE_BLOCK_SLICES = 8


def _apply_mapping_inplace(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """``remove_small(lut[labels], 0)`` of the merge ``mapping``, written into ``labels``."""
    lut = np.arange(int(labels.max()) + 1, dtype=np.int32)
    for old, new in mapping.items():
        lut[old] = new
    relabel_inplace(labels, lut)
    return _remove_small_inplace(labels, 0)


def _merge_pieces_inplace(
    labels: np.ndarray,
    foreground: np.ndarray,
    p: InstanceParams,
    *,
    envelope: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`merge_pieces` of int32 (Z, Y, X) labels of our own, written into them; the grown
    labels are made and counted :data:`MERGE_BLOCK_SLICES` slices at a time."""
    depth = labels.shape[0]
    n = int(labels.max(initial=0))

    def blocks() -> Iterator[np.ndarray]:
        for z0 in range(0, depth, MERGE_BLOCK_SLICES):
            a, b = max(0, z0 - 1), min(depth, z0 + MERGE_BLOCK_SLICES)
            lo, hi = max(0, a - p.merge_bridge_px), min(depth, b + p.merge_bridge_px)
            grown = _grow_into_bridges(
                labels[lo:hi],
                foreground[lo:hi],
                p,
                None if envelope is None or p.merge_bridge_envelope <= 0 else envelope[lo:hi],
            )
            yield grown[a - lo : b - lo]

    surface, contacts = contact_graph_blocks(blocks(), n)
    mapping = merge_on_graph(surface, contacts, min_share=p.merge_min_share)
    return _apply_mapping_inplace(labels, mapping) if mapping else labels


def _grow_into_bridges(
    lab: np.ndarray, foreground: np.ndarray, p: InstanceParams, envelope: np.ndarray | None
) -> np.ndarray:
    """Labels grown ``merge_bridge_px`` times into bridgeable background (:func:`merge_pieces`)."""
    grown = lab
    if p.merge_bridge_px > 0:
        bridgeable = (lab == 0) & (np.asarray(foreground) >= p.merge_bridge_foreground)
        if envelope is not None and p.merge_bridge_envelope > 0:
            if np.shape(envelope) != lab.shape:
                raise ValueError(f"envelope shape {np.shape(envelope)} != labels {lab.shape}")
            bridgeable &= np.asarray(envelope) >= p.merge_bridge_envelope
        cross = ndimage.generate_binary_structure(lab.ndim, 1)
        for _ in range(p.merge_bridge_px):
            step = ndimage.maximum_filter(grown, footprint=cross)
            grown = np.where(bridgeable & (grown == 0), step, grown)
    return grown


def merge_pieces(
    labels: np.ndarray,
    foreground: np.ndarray,
    params: InstanceParams | None = None,
    *,
    envelope: np.ndarray | None = None,
) -> np.ndarray:
    """Merge instances that are pieces of one particle (:mod:`pipelines.particles.merge`).

    The instances are grown by ``merge_bridge_px`` into background whose particle probability
    is at least ``merge_bridge_foreground`` (so a thin crack between two pieces is bridged, a
    gap of binder or pore between two particles is not), then merged where their in-slice
    contact is at least ``merge_min_share`` of the smaller surface. The returned labels are
    the original ones (not grown), renumbered 1..n. Faces on the volume border are not
    surface (the particle may continue there).

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances.
    foreground : numpy.ndarray
        float (Z, Y, X) particle probability.
    params : InstanceParams, optional
        ``merge_min_share``, ``merge_bridge_px``, ``merge_bridge_foreground``,
        ``merge_bridge_envelope``.
    envelope : numpy.ndarray, optional
        float (Z, Y, X) envelope probability: with ``merge_bridge_envelope`` > 0, bridging
        pixels must also have at least that envelope probability.

    Returns
    -------
    numpy.ndarray
        int32 (Z, Y, X) labels 1..n.
    """
    p = params if params is not None else InstanceParams()
    lab = np.asarray(labels)
    if np.shape(foreground) != lab.shape:
        raise ValueError(f"foreground shape {np.shape(foreground)} != labels shape {lab.shape}")
    if lab.ndim == 3:
        return _merge_pieces_inplace(lab.astype(np.int32), foreground, p, envelope=envelope)
    grown = _grow_into_bridges(lab, foreground, p, envelope)
    _, mapping = merge_by_contact(grown, min_share=p.merge_min_share)
    if not mapping:
        return lab.astype(np.int32)
    lut = np.arange(int(lab.max()) + 1, dtype=np.int32)
    for old, new in mapping.items():
        lut[old] = new
    return remove_small(lut[lab], 0)


def instances_from_maps(
    foreground: np.ndarray,
    distance: np.ndarray,
    params: InstanceParams | None = None,
    *,
    overwrite_distance: bool = False,
) -> np.ndarray:
    """Seeded watershed of a predicted boundary distance inside the predicted foreground.

    Parameters
    ----------
    foreground : numpy.ndarray
        float (Z, Y, X) particle probability.
    distance : numpy.ndarray
        float (Z, Y, X) distance to the particle boundary (voxels).
    params : InstanceParams, optional
        ``foreground_threshold``, ``smoothing_sigma``, ``marker_h``, ``marker_downsample``,
        ``min_size``.
    overwrite_distance : bool, optional
        Smooth a float32 ``distance`` in place (its values are lost) instead of in a copy:
        one float32 volume less.

    Returns
    -------
    numpy.ndarray
        int32 (Z, Y, X) labels 1..n; foreground components without a marker become one
        instance each; instances smaller than ``min_size`` voxels are removed.
    """
    p = params if params is not None else InstanceParams()
    if np.shape(foreground) != np.shape(distance):
        raise ValueError(
            f"distance shape {np.shape(distance)} != foreground shape {np.shape(foreground)}"
        )
    mask = np.asarray(foreground) >= p.foreground_threshold
    dist = _smoothed_distance(distance, p.smoothing_sigma, overwrite=overwrite_distance)
    np.copyto(dist, np.float32(0.0), where=~mask)
    step = p.marker_downsample
    coarse = (slice(None, None, step),) * 3
    peaks = h_maxima(dist[coarse], p.marker_h).astype(bool) & mask[coarse]
    coarse_markers, _ = ndimage.label(peaks, structure=np.ones((3, 3, 3), dtype=bool))
    del peaks
    seeds = tuple(axis * step for axis in np.nonzero(coarse_markers))
    components, n = ndimage.label(mask)
    del mask
    landscape = [dist]
    del dist  # _flood_components lets it go as soon as it can
    labels = _flood_components(landscape, seeds, coarse_markers[coarse_markers > 0], components, n)
    return _remove_small_inplace(labels, p.min_size)


def _smoothed_distance(distance: np.ndarray, sigma: float, *, overwrite: bool) -> np.ndarray:
    """float32 ``distance`` smoothed with a Gaussian of ``sigma`` (a new array, or ``distance``
    itself with ``overwrite`` when it is a writeable float32 array)."""
    arr = np.asarray(distance)
    if overwrite and arr.dtype == np.float32 and arr.flags.writeable and arr.flags.c_contiguous:
        if sigma > 0:
            ndimage.gaussian_filter(arr, sigma, output=arr)
        return arr
    dist = np.asarray(arr, dtype=np.float32)
    if sigma > 0:
        return ndimage.gaussian_filter(dist, sigma)
    return dist.copy()


def _flood_components(
    heights: list[np.ndarray],
    seeds: tuple[np.ndarray, ...],
    seed_labels: np.ndarray,
    components: np.ndarray,
    n: int,
) -> np.ndarray:
    """:func:`watershed_by_component` of ``-height`` with sparse seeds, in less memory.

    ``heights`` holds the landscape and is emptied: the landscape is let go (freed, if that
    was the last reference) once the largest component's flooding has its own copy. The mask
    is given as its ``n`` connected ``components`` (int32, ``ndimage.label``), the seeds as
    coordinates (C order, inside the mask) and labels instead of a marker volume. The labels
    are written into ``components`` (negated while the other components are still being
    read), which is returned. Components are flooded in index order, the one with the
    largest box last; the labels of components without a seed are numbered in index order
    as in :func:`watershed_by_component`.
    """
    height = heights.pop()
    seed_component = components[seeds]
    n_seeds = np.bincount(seed_component, minlength=n + 1)
    only_seed = np.zeros(n + 1, dtype=np.int32)
    only_seed[seed_component] = seed_labels
    order = np.argsort(seed_component, kind="stable")
    first = np.searchsorted(seed_component[order], np.arange(n + 2))
    next_label = int(seed_labels.max(initial=0))
    boxes = ndimage.find_objects(components)
    flood: list[int] = []
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        if n_seeds[i] >= 2:
            flood.append(i)
            continue
        view = components[box]
        inside = view == i
        if n_seeds[i] == 0:
            next_label += 1
            view[inside] = -next_label
        else:
            view[inside] = -only_seed[i]
    if flood:
        sizes = [math.prod(b.stop - b.start for b in boxes[i - 1]) for i in flood]
        flood.append(flood.pop(int(np.argmax(sizes))))
    for k, i in enumerate(flood):
        box = boxes[i - 1]
        mine = order[first[i] : first[i + 1]]
        at = tuple(c[mine] - b.start for c, b in zip(seeds, box, strict=True))
        image = _negated_padded(height[box])
        if k == len(flood) - 1:
            del height  # the largest box is flooded last, on its own copy
        view = components[box]
        flooded, inside = _watershed_padded(image, at, seed_labels[mine], view == i)
        del image
        np.negative(flooded, out=flooded)
        np.copyto(view, flooded, where=inside)
        del flooded, inside
    np.negative(components, out=components)
    return components


def _negated_padded(height: np.ndarray) -> np.ndarray:
    """float64 ``-height`` with one voxel of zeros around it (``watershed``'s own padding)."""
    image = np.zeros(tuple(n + 2 for n in height.shape), dtype=np.float64)
    inner = image[(slice(1, -1),) * height.ndim]
    inner[...] = height
    np.negative(inner, out=inner)
    return image


def _watershed_padded(
    image: np.ndarray, at: tuple[np.ndarray, ...], values: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``skimage.segmentation.watershed`` (connectivity 1) of a :func:`_negated_padded` image.

    Returns the labels (int32, the unpadded shape) and the mask (bool, a view of the int8
    mask the flooding used). skimage's ``watershed`` holds about 35 bytes per voxel of the box
    at once (float64, int32 and int8 copies of its inputs, then padded copies of them); this
    fills the padded arrays its flooding kernel works on directly (13 bytes per voxel), with
    the arguments ``watershed`` gives it, so the labels are the same. Without that kernel
    (another scikit-image layout) it calls ``watershed``.
    """
    interior = (slice(1, -1),) * image.ndim
    try:
        from skimage.morphology._util import (
            _offsets_to_raveled_neighbors,
            _validate_connectivity,
        )
        from skimage.segmentation import _watershed_cy  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - another scikit-image layout
        markers = np.zeros(mask.shape, dtype=np.int32)
        markers[at] = values
        flooded = watershed(image[interior], markers, mask=mask)
        return np.asarray(flooded, dtype=np.int32), mask
    connectivity, offset = _validate_connectivity(image.ndim, 1, None)
    if any(o != 1 for o in offset):  # pragma: no cover - another scikit-image
        raise RuntimeError(f"unexpected watershed padding {offset}")
    flat_mask = np.zeros(image.shape, dtype=np.int8)
    flat_mask[interior] = mask
    del mask
    output = np.zeros(image.shape, dtype=np.int32)
    output[interior][at] = values
    neighbours = _offsets_to_raveled_neighbors(image.shape, connectivity, center=offset)
    strides = np.array(image.strides, dtype=np.intp) // image.itemsize
    _watershed_cy.watershed_raveled(
        image.ravel(),
        np.flatnonzero(output),
        neighbours,
        flat_mask.ravel(),
        strides,
        0,
        output.ravel(),
        False,
    )
    return output[interior], flat_mask[interior].view(bool)


def watershed_by_component(image: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.watershed(image, markers, mask=mask)``, one mask component at a time.

    Flooding (6-connected) never leaves a connected component of the mask, so each component
    can be flooded on its own bounding box: a component with one marker is that marker's
    basin without flooding, one without a marker becomes a new label (numbered after the
    markers, in scan order). The labels are those of the whole-volume watershed, found about
    6 times faster on a packed electrode (smaller priority queues, data in cache).

    Parameters
    ----------
    image : numpy.ndarray
        float (Z, Y, X) landscape to flood (low first).
    markers : numpy.ndarray
        int32 (Z, Y, X) seeds 1..n, 0 elsewhere; seeds outside ``mask`` are ignored.
    mask : numpy.ndarray
        bool (Z, Y, X) voxels to label.

    Returns
    -------
    numpy.ndarray
        int32 (Z, Y, X) labels, 0 outside ``mask``.
    """
    components, n = ndimage.label(mask)
    labels = np.zeros(mask.shape, dtype=np.int32)
    seeds = np.nonzero(markers * mask)
    seed_component = components[seeds]
    n_seeds = np.bincount(seed_component, minlength=n + 1)
    only_seed = np.zeros(n + 1, dtype=np.int32)
    only_seed[seed_component] = markers[seeds]
    next_label = int(markers.max(initial=0))
    for i, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        inside = components[box] == i
        if n_seeds[i] == 0:
            next_label += 1
            labels[box][inside] = next_label
        elif n_seeds[i] == 1:
            labels[box][inside] = only_seed[i]
        else:
            flooded = watershed(image[box], np.where(inside, markers[box], 0), mask=inside)
            labels[box][inside] = flooded[inside]
    return labels


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop labels with fewer than ``min_size`` voxels and renumber 1..n (int32)."""
    lab = np.asarray(labels)
    lut = _small_removed_lut(label_sizes(lab), min_size)
    return lut[lab]


def label_sizes(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount(labels.ravel(), minlength=minlength)`` counted slice by slice (bincount
    would first copy the whole array to int64)."""
    lab = np.asarray(labels)
    if lab.ndim < 2 or lab.size == 0:
        return np.bincount(lab.ravel(), minlength=minlength)
    length = max(minlength, int(lab.max()) + 1)
    counts = np.zeros(length, dtype=np.intp)
    for plane in lab:
        counts += np.bincount(plane.ravel(), minlength=length)
    return counts


def relabel_inplace(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``labels[...] = lut[labels]`` slice by slice (no second volume); returns ``labels``."""
    if labels.ndim < 2:
        labels[...] = lut[labels]
        return labels
    for plane in labels:
        plane[...] = lut[plane]
    return labels


def _small_removed_lut(counts: np.ndarray, min_size: int) -> np.ndarray:
    keep = counts >= min_size
    keep[0] = False
    lut = np.zeros(len(counts), dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut


def _remove_small_inplace(labels: np.ndarray, min_size: int) -> np.ndarray:
    """:func:`remove_small` of an int32 array of our own, written into it."""
    lut = _small_removed_lut(label_sizes(labels), min_size)
    return relabel_inplace(labels, lut)


def watershed_baseline(
    solid_mask: np.ndarray, *, min_distance: int = 5, min_size: int = 60
) -> np.ndarray:
    """Classic instance segmentation: distance transform, local maxima, watershed.

    Parameters
    ----------
    solid_mask : numpy.ndarray
        (Z, Y, X) bool or 0/1 mask of the particle solid (cracks, being dark, are not in it).
    min_distance : int, optional
        Minimum separation (voxels) of the distance maxima used as markers.
    min_size : int, optional
        Smaller instances are removed.

    Returns
    -------
    numpy.ndarray
        int32 (Z, Y, X) labels 1..n.
    """
    solid = np.asarray(solid_mask).astype(bool)
    if solid.ndim != 3:
        raise ValueError(f"solid_mask must be 3-D (Z, Y, X), got shape {solid.shape}")
    if min_distance < 1:
        raise ValueError(f"min_distance must be >= 1, got {min_distance}")
    dist = ndimage.distance_transform_edt(solid)
    components, _ = ndimage.label(solid)
    coords = peak_local_max(
        dist, min_distance=min_distance, labels=components, exclude_border=False
    )
    peaks = np.zeros(solid.shape, dtype=bool)
    peaks[tuple(coords.T)] = True
    markers, _ = ndimage.label(peaks, structure=np.ones((3, 3, 3), dtype=bool))
    labels = watershed(-dist, markers, mask=solid).astype(np.int32)
    return remove_small(labels, min_size)


def tile_instance_scores(
    maps: list[tuple[np.ndarray, np.ndarray]],
    truths: list[np.ndarray],
    params: InstanceParams | None = None,
    *,
    min_size: int | None = None,
) -> dict[str, float]:
    """Instance scores of :func:`labels_from_maps` on tiles, pooled over the tiles.

    The held-out score of ``beamwatch train particles``: each tile's maps become instances as
    in :func:`segment_instances`, scored against the tile's labels
    (:func:`pipelines.particles.evaluate.instance_scores`, IoU 0.5); the counts are summed
    over the tiles before F1, precision, recall and split rate are formed.

    Parameters
    ----------
    maps : list of (numpy.ndarray, numpy.ndarray)
        Per tile, (Z, Y, X) foreground probability and distance (voxels).
    truths : list of numpy.ndarray
        Per tile, int (Z, Y, X) instance labels.
    params : InstanceParams, optional
    min_size : int, optional
        Smallest instance counted on both sides (default ``params.min_size``).

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall``, ``split_rate``, ``n_true``, ``n_pred``,
        ``foreground_iou`` (network probability >= ``foreground_threshold``, pooled).
    """
    p = params if params is not None else InstanceParams()
    size = p.min_size if min_size is None else min_size
    n_true = n_pred = n_matched = n_split = inter = union = 0
    for (foreground, distance), truth in zip(maps, truths, strict=True):
        s = instance_scores(labels_from_maps(foreground, distance, p), truth, min_size=size)
        n_true += s.n_true
        n_pred += s.n_pred
        n_matched += s.n_matched
        n_split += s.n_split
        pred, true = np.asarray(foreground) >= p.foreground_threshold, np.asarray(truth) > 0
        inter += int((pred & true).sum())
        union += int((pred | true).sum())
    total = n_true + n_pred
    return {
        "f1": 2.0 * n_matched / total if total else 1.0,
        "precision": n_matched / n_pred if n_pred else 1.0,
        "recall": n_matched / n_true if n_true else 1.0,
        "split_rate": n_split / n_true if n_true else 0.0,
        "n_true": float(n_true),
        "n_pred": float(n_pred),
        "foreground_iou": inter / union if union else 1.0,
    }
