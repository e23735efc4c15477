"""Volumes processed slab by slab: the pieces a distributed executor runs, as pure functions.

A slab is a run of slices ``start .. stop - 1`` (its *core*, the slices whose results it
gives) read with ``halo`` more slices on each side (the context a stage needs):

* reconstruction: parallel-beam detector rows are independent; no halo
  (:func:`pipelines.tomo.fbp.reconstruct` of the rows of the slab);
* crack map: the U-Net sees slices ``z - 1, z, z + 1``: halo 1 (:func:`crack_slab`);
* damage quantification: the density window moves within a slice: no halo
  (:func:`pipelines.cracks.quantify.slab_damage`), the volume-wide numbers combined afterwards;
* particle networks (2.5-D, like the crack U-Net): halo 1 (:func:`instance_maps_slab`), each
  slice's maps computed once and stored;
* particle instances from these maps: halo of about a particle's size (:func:`instance_slab`);
  the labels of neighbouring slabs are matched on the two planes around their border, where
  both slabs computed labels (:func:`border_matches`), and merged with a union-find
  (:class:`LabelMerger`), so a particle crossing the border gets one label.

The volume-wide normalisation levels and the solid threshold are computed from the regular
subsample ``volume.ravel()[::step]`` that the in-memory path takes; :func:`regular_sample`
takes the part of it that lies in a slab, so the levels are exactly the in-memory ones.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.crack_unet import CrackUNet, normalize_slices, normalize_slices_inplace
from models.envelope_unet import EnvelopeUNet
from models.particle_unet import ParticleUNet
from pipelines.cracks.segment import (
    CrackParams,
    TileModel,
    _resolve_envelope,
    _resolve_model,
    _segment,
)
from pipelines.particles.instances import (
    InstanceMaps,
    InstanceParams,
    accept_instances,
    labels_from_instance_maps,
    predict_instance_maps,
)
from pipelines.volumes import check_volume

MAX_SAMPLES = 2_000_000
"""Size of the regular subsample of the normalisation levels and the solid threshold (the
default of :func:`models.crack_unet.reference_levels` and
:func:`pipelines.cracks.particle_mask.solid_threshold`)."""


@dataclass(frozen=True)
class Slab:
    """Core slices ``start .. stop - 1`` read with context ``lo .. hi - 1``."""

    index: int
    start: int
    stop: int
    lo: int
    hi: int

    @property
    def core(self) -> slice:
        """The core's slices within the slices read (``lo .. hi - 1``)."""
        return slice(self.start - self.lo, self.stop - self.lo)

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_slabs(depth: int, slab: int, halo: int = 0) -> list[Slab]:
    """Cut ``depth`` slices into slabs of ``slab`` slices with ``halo`` slices of context.

    Parameters
    ----------
    depth : int
        Number of slices.
    slab : int
        Core slices per slab (the last one may be shorter).
    halo : int, optional
        Context slices on each side (clipped at the volume's ends).

    Returns
    -------
    list of Slab
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if slab < 1:
        raise ValueError(f"slab must be >= 1, got {slab}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    return [
        Slab(i, z0, min(z0 + slab, depth), max(0, z0 - halo), min(depth, z0 + slab + halo))
        for i, z0 in enumerate(range(0, depth, slab))
    ]


def sample_step(shape: tuple[int, ...], max_samples: int = MAX_SAMPLES) -> int:
    """Step of the regular subsample ``volume.ravel()[::step]`` of a volume of ``shape``."""
    return max(1, int(np.prod(shape)) // max_samples)


def regular_sample(slab: np.ndarray, start: int, step: int) -> np.ndarray:
    """The voxels of ``volume.ravel()[::step]`` that lie in ``slab = volume[start:...]``.

    Concatenated in slab order they are exactly the whole volume's subsample.
    """
    arr = np.asarray(slab)
    plane = int(np.prod(arr.shape[1:]))
    first = (-start * plane) % step
    return np.ascontiguousarray(arr.reshape(-1)[first::step])


def crack_slab(
    slab: np.ndarray,
    core: slice,
    levels: tuple[float, float, float],
    params: CrackParams | None = None,
    *,
    model: CrackUNet | TileModel | None = None,
    envelope_model: EnvelopeUNet | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crack and particle masks of the core slices of a slab read with one slice of context.

    Parameters
    ----------
    slab : numpy.ndarray
        (z, Y, X) slices ``lo .. hi - 1`` of the volume, with the slice before and after the
        core where the volume has them.
    core : slice
        The core slices within ``slab``.
    levels : tuple of float
        Normalisation levels (low, high) and solid threshold of the whole volume.
    params, model, envelope_model
        As for :func:`pipelines.cracks.segment.map_cracks`.

    Returns
    -------
    tuple of numpy.ndarray
        uint8 crack mask and particle mask of the core slices, equal to those of
        :func:`~pipelines.cracks.segment.map_cracks` on the whole volume.
    """
    p = params if params is not None else CrackParams()
    vol = check_volume(slab, "slab")
    start, stop, _ = core.indices(vol.shape[0])
    low, high, threshold = levels
    cracks = np.zeros((stop - start, *vol.shape[1:]), dtype=np.uint8)
    particles = np.zeros_like(cracks)
    tile_model = _resolve_model(model, p)
    env_net = _resolve_envelope(envelope_model, p)
    with ThreadPoolExecutor(p.n_workers(), thread_name_prefix="crack-slab") as pool:
        for piece in _segment(vol, p, tile_model, pool, low, high, threshold, env_net):
            if start <= piece.z < stop:
                cracks[piece.z - start] = piece.crack
                particles[piece.z - start] = piece.particle
    return cracks, particles


def instance_maps_slab(
    slab: np.ndarray,
    core: slice,
    levels: tuple[float, float],
    params: InstanceParams | None = None,
    *,
    model: ParticleUNet | None = None,
    envelope_model: EnvelopeUNet | None = None,
) -> InstanceMaps:
    """The particle networks' maps of the core slices of a slab read with one slice of context.

    The networks see slices ``z - 1, z, z + 1`` (2.5-D), so these maps are the ones
    :func:`~pipelines.particles.instances.segment_instances` computes on the whole volume;
    computed once per slice, they serve every slab whose context reaches the slice.

    Parameters
    ----------
    slab : numpy.ndarray
        (z, Y, X) slices ``lo .. hi - 1`` of the volume, with the slice before and after the
        core where the volume has them.
    core : slice
        The core slices within ``slab``.
    levels : tuple of float
        Normalisation levels (low, high) of the whole volume.
    params, model, envelope_model
        As for :func:`~pipelines.particles.instances.segment_instances`.

    Returns
    -------
    InstanceMaps
        float32 maps of the core slices.
    """
    vol = check_volume(slab, "slab")
    start, stop, _ = core.indices(vol.shape[0])
    return predict_instance_maps(
        vol,
        normalize_slices(vol, *levels),
        params,
        model=model,
        envelope_model=envelope_model,
        start=start,
        stop=stop,
    )


def instance_slab(
    slab: npt.ArrayLike,
    levels: tuple[float, float],
    maps: InstanceMaps,
    params: InstanceParams | None = None,
    *,
    overwrite_input: bool = False,
) -> np.ndarray:
    """Particle instances of a slab read with context, from the networks' stored maps.

    Parameters
    ----------
    slab : numpy.ndarray
        (z, Y, X) slices of the volume (core and context).
    levels : tuple of float
        Normalisation levels (low, high) of the whole volume.
    maps : InstanceMaps
        The maps of the same slices (:func:`instance_maps_slab`).
    params : InstanceParams, optional
    overwrite_input : bool, optional
        Use the memory of ``slab`` (when float32) and of the distance map as workspace
        (``slab`` ends up normalised, the distance smoothed): two float32 volumes less.

    ``slab`` and the maps may also be array-likes read when a step needs them
    (``numpy.asarray``, and slices along z), e.g. slices of Zarr arrays, as the slab tasks
    pass them: the distance and foreground are then read for the watershed, the envelope for
    its merge and the grey levels for the last checks, and no volume is held longer than the
    step that uses it (:data:`services.slabs.tomo.BYTES_PER_VOXEL`).

    Returns
    -------
    numpy.ndarray
        int32 labels 1..n of every slice of ``slab`` (core and context); the caller keeps the
        core and uses the planes around the borders to match labels with its neighbours.
    """
    p = params if params is not None else InstanceParams()
    if len(np.shape(slab)) != 3 or np.shape(slab) != np.shape(maps.foreground):
        raise ValueError(f"slab {np.shape(slab)} and maps {np.shape(maps.foreground)} differ")
    fresh = not isinstance(maps.distance, np.ndarray)  # read for this call
    labels = labels_from_instance_maps(maps, p, overwrite_distance=overwrite_input or fresh)
    vol = check_volume(np.asarray(slab), "slab")
    valid = vol != 0 if p.zero_is_outside else None
    if (overwrite_input or not isinstance(slab, np.ndarray)) and (
        vol.dtype == np.float32 and vol.flags.writeable
    ):
        normalized = normalize_slices_inplace(vol, *levels)
    else:
        normalized = normalize_slices(vol, *levels)
    del vol
    return accept_instances(labels, normalized, maps, p, valid=valid)


def border_matches(
    lower: np.ndarray, upper: np.ndarray, *, min_iou: float = 0.5
) -> list[tuple[int, int]]:
    """Pairs of labels of two neighbouring slabs that are the same particle.

    Both slabs computed labels on the same two planes around their border (the last core
    slice of the lower slab and the first core slice of the upper one, each slab reaching the
    other's through its context). A lower label and an upper label are one particle when
    their voxels on these planes overlap with an intersection over union of at least
    ``min_iou``, or when more than half of one label's voxels there lie in the other: a slab
    that sees a tall particle cut short by the end of its context can split it in two, one
    piece mostly in its context reaching the border planes with a few voxels, which the other
    slab, seeing the particle whole, labels as part of it. Particles that only touch across
    the border keep their own labels (each slab labels the other's voxels with another label).

    Parameters
    ----------
    lower, upper : numpy.ndarray
        int (2, Y, X): the two border planes as labelled by the lower and the upper slab.
    min_iou : float, optional
        Overlap needed.

    Returns
    -------
    list of (int, int)
        (lower label, upper label) pairs.
    """
    a = np.asarray(lower).ravel().astype(np.int64)
    b = np.asarray(upper).ravel().astype(np.int64)
    if a.shape != b.shape:
        raise ValueError(f"lower and upper planes differ in shape: {lower.shape}, {upper.shape}")
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, overlap = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    size_a = np.bincount(a, minlength=int(a.max()) + 1)
    size_b = np.bincount(b, minlength=int(b.max()) + 1)
    union = size_a[pairs[0]] + size_b[pairs[1]] - overlap
    within = (2 * overlap > size_a[pairs[0]]) | (2 * overlap > size_b[pairs[1]])
    keep = (overlap >= min_iou * union) | within
    return [(int(x), int(y)) for x, y in pairs[:, keep].T]


class LabelMerger:
    """Union-find over the labels of all slabs, giving one label 1..n per particle.

    Parameters
    ----------
    counts : list of int
        Number of labels (1..count) of each slab, in slab order.
    """

    def __init__(self, counts: list[int]) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._parent = np.arange(int(self.offsets[-1]) + 1, dtype=np.int64)

    def _find(self, x: int) -> int:
        parent = self._parent
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:
            parent[x], x = root, int(parent[x])
        return root

    def union(self, slab_a: int, label_a: int, slab_b: int, label_b: int) -> None:
        """The particle ``label_a`` of slab ``slab_a`` is ``label_b`` of slab ``slab_b``."""
        ra = self._find(int(self.offsets[slab_a]) + label_a)
        rb = self._find(int(self.offsets[slab_b]) + label_b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def lookup_tables(self, present: list[np.ndarray]) -> list[np.ndarray]:
        """Per slab, int32 tables from its labels to the merged labels 1..n.

        Parameters
        ----------
        present : list of numpy.ndarray
            Per slab, the labels that occur in its core (labels only in its context are no
            particle of their own).

        Returns
        -------
        list of numpy.ndarray
            ``table[k]`` is the merged label of slab label k (``table[0] == 0``); merged labels
            are numbered in order of first appearance, slab by slab and label by label.
        """
        roots: dict[int, int] = {}
        tables = []
        for i, labels in enumerate(present):
            n = int(self.offsets[i + 1] - self.offsets[i])
            table = np.zeros(n + 1, dtype=np.int32)
            for k in np.unique(np.asarray(labels)):
                if k <= 0:
                    continue
                root = self._find(int(self.offsets[i]) + int(k))
                table[k] = roots.setdefault(root, len(roots) + 1)
            tables.append(table)
        return tables
