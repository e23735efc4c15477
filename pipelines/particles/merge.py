"""Merge the pieces of one particle: labels that share a large part of their surface.

A crack through a particle, a hollow core or a distance map that has several maxima in a large
particle cut it into pieces that touch along a long, straight interface; two particles that
merely touch meet over a small neck. The share of a piece's surface that it shares with its
neighbour tells the two apart without any size scale: about 1/3 for a sphere cut in half (1/3 to
0.4 in 2-D), under 0.07 for two spheres flattened against each other over half their radius.

:func:`merge_by_contact` merges greedily on the region adjacency graph, strongest contact first,
updating the surfaces and contacts exactly after each merge (the merged surface is the sum of
the two minus twice their contact).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.segmentation import watershed


def contact_graph(
    labels: np.ndarray, axes: tuple[int, ...] | None = None
) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    """Surface faces of each label and the faces shared by each pair of labels.

    Parameters
    ----------
    labels : numpy.ndarray
        int labels, any dimension, 0 = background.
    axes : tuple of int, optional
        Axes whose faces are counted; default all. ``(1, 2)`` on a (Z, Y, X) volume counts
        the in-slice perimeters and contacts only: their ratio then does not depend on how
        thick a slab of the particles the volume holds.

    Returns
    -------
    surface : numpy.ndarray
        int64 (n + 1,): faces of each label towards a different value inside the array (faces
        on the array border are not counted: the particle may continue beyond it).
    contacts : dict
        ``(a, b) -> faces`` with ``0 < a < b``.
    """
    lab = np.asarray(labels)
    n = int(lab.max(initial=0))
    surface, keys = _faces(lab, n, range(lab.ndim) if axes is None else axes)
    return surface, _contacts([np.concatenate(keys)], n)


def contact_graph_blocks(
    blocks: Iterable[np.ndarray], n: int
) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    """:func:`contact_graph` (all axes) of a 3-D volume handed over block by block along z.

    Each block after the first starts with the last slice of the block before it (so the
    faces between the two are counted once, in the later block); ``n`` is at least the
    volume's largest label. The result equals :func:`contact_graph` of the whole volume, which
    is never held at once.
    """
    surface = np.zeros(n + 1, dtype=np.int64)
    keys: list[np.ndarray] = []
    for k, block in enumerate(blocks):
        lab = np.asarray(block)
        if lab.ndim != 3:
            raise ValueError(f"blocks must be 3-D, got shape {lab.shape}")
        along_z, z_keys = _faces(lab, n, (0,))
        in_slice, slice_keys = _faces(lab[1:] if k else lab, n, (1, 2))
        surface += along_z + in_slice
        keys.append(_unique_keys(np.concatenate(z_keys + slice_keys)))
    surface[0] = 0
    return surface, _contacts(keys, n)


def _faces(lab: np.ndarray, n: int, axes: Iterable[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Surface faces per label (label 0's included) and the pair keys ``lo * (n + 1) + hi``
    of the faces between two labels, along ``axes``."""
    surface = np.zeros(n + 1, dtype=np.int64)
    pair_keys: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for axis in axes:
        if lab.shape[axis] < 2:
            continue
        a, b = _face_pairs(lab, axis)
        surface += np.bincount(a, minlength=n + 1) + np.bincount(b, minlength=n + 1)
        both = (a > 0) & (b > 0)
        lo, hi = np.minimum(a[both], b[both]), np.maximum(a[both], b[both])
        pair_keys.append(lo * (n + 1) + hi)
    surface[0] = 0
    return surface, pair_keys


def _face_pairs(lab: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The two labels (int64) of every face along ``axis`` between different values, in the
    order of the faces' first voxels (C order)."""
    if not lab.flags.c_contiguous or lab.size == 0:
        head = [slice(None)] * lab.ndim
        tail = [slice(None)] * lab.ndim
        head[axis], tail[axis] = slice(None, -1), slice(1, None)
        first, second = lab[tuple(head)], lab[tuple(tail)]
        differ = first != second
        return first[differ].astype(np.int64), second[differ].astype(np.int64)
    # on the flat array the neighbour along ``axis`` is ``stride`` voxels on; a boolean index
    # of a strided 2-D view costs several times the flat compare and the few faces' gather
    flat = lab.ravel()
    stride = int(np.prod(lab.shape[axis + 1 :], dtype=np.int64))
    differ = np.zeros(lab.shape, dtype=bool)
    np.not_equal(flat[:-stride], flat[stride:], out=differ.reshape(-1)[:-stride])
    if axis > 0:
        # pairs that wrap from the last voxel along ``axis`` to the next row are no faces
        last = [slice(None)] * lab.ndim
        last[axis] = slice(-1, None)
        differ[tuple(last)] = False
    first = np.flatnonzero(differ)
    return flat[first].astype(np.int64), flat[first + stride].astype(np.int64)


def _unique_keys(keys: np.ndarray) -> np.ndarray:
    """Keys and their counts as a (2, m) array."""
    values, counts = np.unique(keys, return_counts=True)
    return np.stack([values, counts.astype(np.int64)])


def _contacts(keys: list[np.ndarray], n: int) -> dict[tuple[int, int], int]:
    """``(a, b) -> faces`` in ascending key order, from raw keys (1-D) or counted keys (2-D)."""
    counted = [k if k.ndim == 2 else _unique_keys(k) for k in keys]
    if not counted:
        return {}
    if len(counted) == 1:
        values, counts = counted[0]  # already unique and counted
    else:
        both = np.concatenate(counted, axis=1)
        values, inverse = np.unique(both[0], return_inverse=True)
        counts = np.zeros(values.size, dtype=np.int64)
        np.add.at(counts, inverse, both[1])
    return {
        (k // (n + 1), k % (n + 1)): c
        for k, c in zip(values.tolist(), counts.tolist(), strict=True)
    }


def solidity(points: np.ndarray) -> float:
    """Voxel count over the volume of the convex hull of the voxels (as unit cubes).

    The hull of the voxel centres is grown by half a voxel with the leading Steiner terms
    (``V + A / 2`` in 3-D, ``A + P / 2 + pi / 4`` in 2-D); axes of extent 1 are dropped.
    Returns 1.0 for objects too small or too flat for a hull.
    """
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 5:
        return 1.0
    pts = pts[:, np.ptp(pts, axis=0) > 0]
    if pts.shape[1] < 2:
        return 1.0
    try:
        hull = ConvexHull(pts)
    except QhullError:
        return 1.0
    if pts.shape[1] == 2:
        grown = hull.volume + hull.area / 2 + np.pi / 4
    else:
        grown = hull.volume + hull.area / 2 + np.pi / 6
    return float(len(points) / grown)


def convex_union_test(
    labels: np.ndarray, min_ratio: float
) -> Callable[[list[int], list[int]], bool]:
    """A merge test: the union of two groups is about as convex as the less convex part.

    Two particles pressed against each other leave a neck, so their union is clearly less
    solid than either; the pieces of one cracked or over-split particle are not.
    """
    lab = np.asarray(labels)
    boxes = ndimage.find_objects(lab)
    cache: dict[tuple[int, ...], float] = {}

    def surface_points(members: list[int]) -> np.ndarray:
        pts = []
        for m in members:
            box = boxes[m - 1] if m - 1 < len(boxes) else None
            if box is None:
                continue
            inside = lab[box] == m
            edge = inside & ~ndimage.binary_erosion(inside)
            idx = np.argwhere(edge) + np.array([s.start for s in box])
            pts.append(idx)
        return np.concatenate(pts) if pts else np.zeros((0, lab.ndim))

    def count(members: list[int]) -> int:
        return sum(int((lab[boxes[m - 1]] == m).sum()) for m in members if boxes[m - 1])

    def group_solidity(members: list[int]) -> float:
        key = tuple(sorted(members))
        if key not in cache:
            pts = surface_points(members)
            n = count(members)
            full = solidity(pts)  # hull of the surface = hull of the object
            cache[key] = full * n / max(len(pts), 1)
        return cache[key]

    def accept(a: list[int], b: list[int]) -> bool:
        parts = min(group_solidity(a), group_solidity(b))
        return group_solidity(a + b) >= min_ratio * parts

    return accept


def merge_by_contact(
    labels: np.ndarray,
    *,
    min_share: float = 0.2,
    min_faces: int = 4,
    accept: Callable[[list[int], list[int]], bool] | None = None,
    axes: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, dict[int, int]]:
    """Merge touching labels whose contact is a large share of the smaller one's surface.

    Parameters
    ----------
    labels : numpy.ndarray
        int labels, any dimension, 0 = background.
    min_share : float, optional
        Merge a pair when their shared faces are at least this share of the surface of the
        smaller-surfaced of the two (recomputed after every merge).
    min_faces : int, optional
        Contacts of fewer faces are never merged (a corner touch).
    accept : callable, optional
        Further test of a candidate pair, called with the original labels of both groups
        (e.g. :func:`convex_union_test`); a refused pair is not retried.
    axes : tuple of int, optional
        Axes whose faces count (:func:`contact_graph`).

    Returns
    -------
    merged : numpy.ndarray
        Labels of the same dtype, each merged group numbered by its smallest original label
        (not renumbered).
    mapping : dict
        ``original label -> merged label`` for every label that changed.
    """
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    lab = np.asarray(labels)
    surface_arr, contacts = contact_graph(lab, axes)
    mapping = merge_on_graph(
        surface_arr, contacts, min_share=min_share, min_faces=min_faces, accept=accept
    )
    return relabelled(lab, mapping), mapping


def relabelled(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """A copy of ``labels`` with every ``original -> merged`` label of ``mapping`` replaced."""
    if not mapping:
        return labels.copy()
    lut = np.arange(int(labels.max()) + 1, dtype=labels.dtype)
    for i, r in mapping.items():
        lut[i] = r
    return np.take(lut, labels)


def merge_on_graph(
    surface_arr: np.ndarray,
    contacts: dict[tuple[int, int], int],
    *,
    min_share: float,
    min_faces: int = 4,
    accept: Callable[[list[int], list[int]], bool] | None = None,
) -> dict[int, int]:
    """The greedy merge of :func:`merge_by_contact` on a :func:`contact_graph`.

    Returns
    -------
    dict
        ``original label -> merged label`` (the group's smallest label) for every label that
        changed.
    """
    # surface[label], read by index
    surface: list[int] = [int(s) for s in surface_arr.tolist()]
    neighbours: dict[int, dict[int, int]] = {}
    for (a, b), c in contacts.items():
        neighbours.setdefault(a, {})[b] = c
        neighbours.setdefault(b, {})[a] = c

    def share(a: int, b: int, c: int) -> float:
        return c / max(min(surface[a], surface[b]), 1)

    heap = [(-share(a, b, c), a, b) for (a, b), c in contacts.items() if c >= min_faces]
    heapq.heapify(heap)
    parent: dict[int, int] = {}
    members: dict[int, list[int]] = (
        {i: [i] for i in range(1, len(surface))} if accept is not None else {}
    )
    while heap:
        neg, a, b = heapq.heappop(heap)
        if a in parent or b in parent:
            continue  # stale: one side was merged already
        c = neighbours.get(a, {}).get(b, 0)
        if c < min_faces or -neg != share(a, b, c):
            continue  # stale entry; the current value was pushed again
        if -neg < min_share:
            break
        if accept is not None and not accept(members[a], members[b]):
            continue
        keep, gone = (a, b) if a < b else (b, a)
        parent[gone] = keep
        if accept is not None:
            members[keep] = members[keep] + members.pop(gone)
        before = surface[keep]
        surface[keep] = surface[keep] + surface[gone] - 2 * c
        moved = neighbours.pop(gone, {})
        moved.pop(keep, None)
        neighbours[keep].pop(gone, None)
        for other, faces in moved.items():
            neighbours[other].pop(gone, None)
            total = neighbours[keep].get(other, 0) + faces
            neighbours[keep][other] = total
            neighbours[other][keep] = total
        for other, faces in neighbours[keep].items():
            if faces < min_faces:
                continue
            if accept is None and other not in moved:
                # same faces, and the same share when the smaller of the two surfaces is the
                # same: the heap still holds the pair at that share (without ``accept`` a
                # pair leaves the heap only by merging or at the end). Pushing it again would
                # add an entry to pop for every neighbour of a growing piece at each of its
                # merges: a quarter of the crack map's CPU time on 1024 x 1024 slices.
                if min(before, surface[other]) == min(surface[keep], surface[other]):
                    continue
            lo, hi = (keep, other) if keep < other else (other, keep)
            heapq.heappush(heap, (-share(lo, hi, faces), lo, hi))

    def root(i: int) -> int:
        while i in parent:
            i = parent[i]
        return i

    return {i: root(i) for i in parent}


def _slice_links(
    labels: np.ndarray, components: np.ndarray, min_inside: float
) -> tuple[list[int], list[list[int]]]:
    """Labels present in one slice, and the groups of labels whose pixels lie mostly
    (``min_inside``) in one envelope component of that slice."""
    present = labels > 0
    lab, comp = labels[present], components[present]
    if lab.size == 0:
        return [], []
    ids, total = np.unique(lab, return_counts=True)
    pairs, count = np.unique(
        lab.astype(np.int64) * (int(comp.max()) + 1) + comp, return_counts=True
    )
    pair_lab, pair_comp = pairs // (int(comp.max()) + 1), pairs % (int(comp.max()) + 1)
    share = count / total[np.searchsorted(ids, pair_lab)]
    held = (pair_comp > 0) & (share >= min_inside)
    groups: dict[int, list[int]] = {}
    for a, c in zip(pair_lab[held].tolist(), pair_comp[held].tolist(), strict=True):
        groups.setdefault(c, []).append(a)
    return ids.tolist(), [g for g in groups.values() if len(g) > 1]


def merge_by_envelope(
    labels: np.ndarray,
    envelope: np.ndarray,
    *,
    min_inside: float = 0.5,
    min_vote: float = 0.5,
    min_neck_ratio: float = 0.0,
) -> tuple[np.ndarray, dict[int, int]]:
    """Merge labels that lie in one connected component of a particle envelope.

    The envelope (:mod:`models.envelope_unet`) holds each particle's whole shape, cracks and
    core included, with the contacts between particles cut, so the pieces of a cracked
    particle fall into one in-slice component and two particles into two. In every slice, the
    labels with at least ``min_inside`` of their pixels of that slice in one envelope component
    are linked; a pair merges when it is linked in at least ``min_vote`` of the slices where
    both appear (an envelope that misses the cut between two particles in a few slices does
    not merge them).

    With ``min_neck_ratio`` > 0 a link also needs a thick envelope between the two
    (:func:`_neck_links`): where the envelope misses a contact and joins two particles over a
    neck, the neck is thin against the particles; across a crack it covers, the envelope is
    about as thick as the piece. The ratio is scale-free.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances, 0 = background.
    envelope : numpy.ndarray
        bool (Z, Y, X) envelope mask.
    min_inside : float, optional
        Share of a label's in-slice pixels that must lie in one envelope component.
    min_vote : float, optional
        Share of the slices holding both labels in which they must be linked.
    min_neck_ratio : float, optional
        Least envelope thickness between two linked labels, as a share of the thinner
        label's (:func:`_neck_links`); 0 = any connection of the envelope links.

    Returns
    -------
    merged : numpy.ndarray
        Labels of the same dtype, each merged group numbered by its smallest original label.
    mapping : dict
        ``original label -> merged label`` for every label that changed.
    """
    lab = np.asarray(labels)
    mapping = envelope_merges(
        lab, envelope, min_inside=min_inside, min_vote=min_vote, min_neck_ratio=min_neck_ratio
    )
    return relabelled(lab, mapping), mapping


def envelope_merges(
    labels: np.ndarray,
    envelope: np.ndarray,
    *,
    min_inside: float = 0.5,
    min_vote: float = 0.5,
    min_neck_ratio: float = 0.0,
) -> dict[int, int]:
    """The ``original label -> merged label`` mapping of :func:`merge_by_envelope` (every
    label that changes), without relabelling the volume."""
    lab = np.asarray(labels)
    env = np.asarray(envelope, dtype=bool)
    if lab.ndim != 3 or env.shape != lab.shape:
        raise ValueError(f"labels {lab.shape} and envelope {env.shape} must be one 3-D shape")
    if not 0.0 < min_inside <= 1.0 or not 0.0 < min_vote <= 1.0:
        raise ValueError("min_inside and min_vote must be in (0, 1]")
    if not 0.0 <= min_neck_ratio <= 1.0:
        raise ValueError(f"min_neck_ratio must be in [0, 1], got {min_neck_ratio}")
    votes: dict[tuple[int, int], int] = {}
    slices_of: dict[int, set[int]] = {}
    for z in range(lab.shape[0]):
        components, _ = ndimage.label(env[z])
        present, groups = _slice_links(lab[z], components, min_inside)
        for a in present:
            slices_of.setdefault(a, set()).add(z)
        if min_neck_ratio > 0 and groups:
            pairs = _neck_links(lab[z], components, groups, min_neck_ratio)
        else:
            pairs = [
                (a, b) for g in map(sorted, groups) for i, a in enumerate(g) for b in g[i + 1 :]
            ]
        for pair in pairs:
            votes[pair] = votes.get(pair, 0) + 1
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while i in parent:
            i = parent[i]
        return i

    for (a, b), n in sorted(votes.items()):
        together = len(slices_of[a] & slices_of[b])
        if n < min_vote * together:
            continue
        ra, rb = root(a), root(b)
        if ra != rb:
            keep, gone = (ra, rb) if ra < rb else (rb, ra)
            parent[gone] = keep
    return {i: root(i) for i in parent}


def _neck_links(
    labels: np.ndarray, components: np.ndarray, groups: list[list[int]], min_ratio: float
) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of one group whose envelope joins them over a thick neck.

    In each envelope component holding a group, every label present seeds a basin of the
    envelope's distance transform (a watershed from the labels); two neighbouring basins of
    the group are linked when the highest distance on their common border (the neck's half
    width) is at least ``min_ratio`` of the lower of the two basins' highest distances (the
    half width of the thinner one). Basins of labels outside the group are seeded too, so a
    neck through a third particle is judged at its own thinnest place.
    """
    boxes = ndimage.find_objects(components)
    links: list[tuple[int, int]] = []
    for group in groups:
        members = set(group)
        comp = np.bincount(components[np.isin(labels, group)]).argmax()
        box = boxes[comp - 1]
        if box is None:
            continue
        inside = components[box] == comp
        # the distance to the nearest pixel outside the component, on its box (a 1-px margin
        # where the box does not reach the slice's edge, as in a transform of the whole slice)
        margin = [
            (int(b.start > 0), int(b.stop < n)) for b, n in zip(box, components.shape, strict=True)
        ]
        padded = ndimage.distance_transform_edt(np.pad(inside, margin))
        dist = padded[
            tuple(slice(lo, lo + w) for (lo, _), w in zip(margin, inside.shape, strict=True))
        ]
        basins = watershed(-dist, np.where(inside, labels[box], 0), mask=inside)
        present = np.unique(basins[basins > 0])
        highest = np.atleast_1d(ndimage.maximum(dist, basins, present)).tolist()
        peak = dict(zip(present.tolist(), highest, strict=True))
        keys, depths = [], []
        base = int(basins.max()) + 1
        for axis in (0, 1):
            head = [slice(None)] * 2
            tail = [slice(None)] * 2
            head[axis], tail[axis] = slice(None, -1), slice(1, None)
            first, second = basins[tuple(head)], basins[tuple(tail)]
            border = (first != second) & (first > 0) & (second > 0)
            lo = np.minimum(first[border], second[border]).astype(np.int64)
            hi = np.maximum(first[border], second[border]).astype(np.int64)
            keys.append(lo * base + hi)
            depths.append(np.minimum(dist[tuple(head)][border], dist[tuple(tail)][border]))
        pair_keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        neck = np.full(pair_keys.size, -1.0)
        np.maximum.at(neck, inverse, np.concatenate(depths))
        for key, d in zip(pair_keys.tolist(), neck.tolist(), strict=True):
            a, b = key // base, key % base
            if a in members and b in members and d >= min_ratio * min(peak[a], peak[b]):
                links.append((a, b))
    return links


def fill_from_envelope(labels: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    """Background inside an envelope component that holds exactly one label takes that label.

    Slice by slice: the crack between two merged pieces and the rim the network left out join
    the particle's label, while an envelope component shared by two labels, or holding none,
    stays as it is.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances.
    envelope : numpy.ndarray
        bool (Z, Y, X) envelope mask.

    Returns
    -------
    numpy.ndarray
        Labels of the same dtype.
    """
    lab = np.asarray(labels)
    env = np.asarray(envelope, dtype=bool)
    if lab.ndim != 3 or env.shape != lab.shape:
        raise ValueError(f"labels {lab.shape} and envelope {env.shape} must be one 3-D shape")
    out = lab.copy()
    for z in range(lab.shape[0]):
        components, n = ndimage.label(env[z])
        if not n:
            continue
        present = (lab[z] > 0) & (components > 0)
        comp, ids = components[present], lab[z][present]
        lowest = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
        highest = np.zeros(n + 1, dtype=np.int64)
        np.minimum.at(lowest, comp, ids)
        np.maximum.at(highest, comp, ids)
        single = (highest > 0) & (lowest == highest)
        single[0] = False
        fill = (lab[z] == 0) & single[components]
        out[z][fill] = highest[components[fill]].astype(lab.dtype)
    return out
