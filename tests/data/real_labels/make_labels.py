"""Semi-automatic labels of crops of the real APS nano-CT slices (see README.md here).

Run from the project root::

    PYTHONPATH=$PWD python tests/data/real_labels/make_labels.py [--overlays docs/real_labels]

For every crop in :data:`CROPS` it writes ``<name>_instances.png`` (uint16 particle instance
labels, 0 = not particle) and ``<name>_cracks.png`` (uint8, 1 = crack or core void inside a
particle) next to this script; with ``--overlays`` also an overlay PNG per crop for checking by
eye. The grey crops themselves are NOT copied: they are read from the shared data folder
(``tests.conftest.SHARED_DATA``) with the crop box below.

The procedure (the same for every crop; the per-crop numbers and the manual corrections are
explicit lists in :data:`CROPS`):

1. ``smooth`` = Gaussian (sigma 1 px) of the crop.
2. ``solid`` = smooth > ``solid_level`` (set by eye per crop: bright NMC against the grey
   carbon/binder + pore phase), objects below 20 px removed.
3. ``envelope`` = ``solid`` closed with a disk of ``closing_radius``, holes filled object by
   object, then opened with a disk of radius 2 (thin bright bridges of the fringes cut) and
   objects below ``min_area`` px dropped. ``unfill`` points name background pockets that the
   fill closed but that lie between particles (cleared again, the pocket's dark pixels);
   ``fill`` points name dark pixels of a crack/void that reaches the particle edge and so was
   not filled (the dark component under the point is added).
4. Instances: connected components of ``envelope``; ``split`` lists seed points of touching
   particles: a component holding two or more seeds is divided by a watershed of the
   distance transform from those seeds; ``drop`` points remove an object (a cut-off piece at
   the crop border that a person cannot judge, or a fragment that is binder).
5. Cracks / core voids = pixels of the envelope with smooth < ``crack_level`` (clearly darker
   than the solid), components of at least ``min_crack`` px; ``no_crack`` points remove a
   component (e.g. a dark fringe along the particle edge); ``no_crack_in`` points clear the
   cracks of the instance under them (a cluster of small fragments whose gaps are not cracks).
6. ``merge`` groups join the pieces of a fractured particle into one instance (their union
   closed with a disk of radius 10 and filled; the dark gaps it adds become crack pixels by
   rule 5). ``ignore_box`` (rows r0:r1, cols c0:c1) marks a region a person cannot label with
   confidence (a dense cluster of fragments): every object touching it, except those under
   ``keep_in_ignore`` points, is unlabelled and written to ``<name>_ignore.png``; scores skip
   predicted objects lying mostly there and crack pixels there; ``more_ignore`` lists further
   boxes treated the same way. Every ``split`` seed must lie on a particle (else ValueError).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import io
from skimage.morphology import disk
from skimage.segmentation import find_boundaries, watershed

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

Point = tuple[int, int]  # (row, col) in crop coordinates


@dataclass(frozen=True)
class Crop:
    """One labelled crop: where it lies, its levels and the manual corrections."""

    name: str
    slice_file: str
    row: int
    col: int
    size: int
    solid_level: float
    crack_level: float
    closing_radius: int = 3
    min_area: int = 150
    min_crack: int = 12
    split: tuple[Point, ...] = ()
    drop: tuple[Point, ...] = ()
    unfill: tuple[Point, ...] = ()
    fill: tuple[Point, ...] = ()
    no_crack: tuple[Point, ...] = ()
    no_crack_in: tuple[Point, ...] = ()
    merge: tuple[tuple[Point, ...], ...] = ()
    ignore_box: tuple[int, int, int, int] | None = None
    more_ignore: tuple[tuple[int, int, int, int], ...] = ()
    keep_in_ignore: tuple[Point, ...] = ()
    notes: str = ""


CROPS: tuple[Crop, ...] = (
    Crop(
        name="nmc87_hollow",
        slice_file="nanoct_nmc_slices/tomo_00087.png",
        row=400,
        col=40,
        size=384,
        solid_level=150,
        crack_level=120,
        split=((35, 182), (47, 210), (30, 232)),
        no_crack=((45, 225),),
        notes="isolated particles; one with a large core void",
    ),
    Crop(
        name="nmc87_voids",
        slice_file="nanoct_nmc_slices/tomo_00087.png",
        row=800,
        col=330,
        size=384,
        solid_level=150,
        crack_level=120,
        split=((200, 170), (305, 130), (318, 185), (30, 262), (68, 315)),
        no_crack=((50, 284), (350, 86)),
        no_crack_in=((305, 130), (318, 185)),
        notes="a large particle with several internal voids",
    ),
    Crop(
        name="nmc86_fragments",
        slice_file="nanoct_nmc_slices/tomo_00086.png",
        row=330,
        col=380,
        size=384,
        solid_level=110,
        crack_level=85,
        # two large particles touching at one point (the round one at the left, the grey one
        # kept in the ignore box) were one instance until 2026-11-30
        split=((90, 130), (180, 230)),
        no_crack=((302, 79), (277, 281), (140, 219), (134, 194)),
        ignore_box=(0, 250, 180, 384),
        keep_in_ignore=((90, 130), (180, 230)),
        notes="large particles beside a cluster of fragments (the cluster is not labelled)",
    ),
    Crop(
        name="nmc86_large",
        slice_file="nanoct_nmc_slices/tomo_00086.png",
        row=580,
        col=380,
        size=384,
        solid_level=110,
        crack_level=85,
        merge=(((185, 200), (170, 245), (215, 225)),),
        no_crack=((28, 280), (52, 78)),
        notes="three large particles, a fractured one and small fragments",
    ),
    Crop(
        name="nmc87_centre",
        slice_file="nanoct_nmc_slices/tomo_00087.png",
        row=400,
        col=424,
        size=384,
        solid_level=150,
        crack_level=120,
        # one component after the closing: six particles joined by thin grey bridges
        split=(
            (60, 40),
            (60, 190),
            (112, 100),
            (150, 105),
            (178, 190),
            (265, 175),
            (20, 362),
            (90, 345),
            (198, 312),
            (215, 335),
            (252, 53),
            (152, 150),
            (300, 25),
        ),
        unfill=((125, 120), (135, 140)),
        no_crack=((210, 320), (202, 330), (262, 57), (132, 172), (62, 325), (133, 310)),
        # a medium-grey zone between three particles (a particle just out of the slice?) is
        # its own part (seed (152, 150)) and left unlabelled
        more_ignore=((138, 168, 128, 165),),
        keep_in_ignore=((60, 190), (150, 105), (178, 190)),
        notes="large particles with contacts; two particles touching at a neck",
    ),
    Crop(
        name="nmc87_top",
        slice_file="nanoct_nmc_slices/tomo_00087.png",
        row=16,
        col=554,
        size=384,
        solid_level=150,
        crack_level=120,
        # the large particle, the one below it at the left and the fragment cluster below it
        split=(
            (250, 270),
            (355, 165),
            (360, 250),
            (232, 100),
            (254, 118),
            (285, 72),
            (290, 122),
            (330, 80),
            (348, 100),
            (312, 340),
            (368, 340),
        ),
        drop=((135, 305), (182, 349)),  # pieces of the sample-mount edge line, not NMC
        no_crack=((246, 108), (340, 95), (268, 18), (325, 340), (318, 266), (328, 333)),
        ignore_box=(320, 384, 205, 290),
        keep_in_ignore=((250, 270), (355, 165), (360, 340)),
        notes="a large particle touching smaller ones, small fragments, the sample edge",
    ),
    Crop(
        name="nmc87_right",
        slice_file="nanoct_nmc_slices/tomo_00087.png",
        row=400,
        col=808,
        size=384,
        solid_level=150,
        crack_level=120,
        split=((125, 101), (120, 136), (205, 70), (195, 125), (210, 150), (265, 15), (310, 12)),
        drop=((252, 363),),  # a bright streak in the mount outside the sample
        notes="particles and fragments along the sample edge",
    ),
    Crop(
        name="nmc87_topleft",
        slice_file="nanoct_nmc_slices/tomo_00087.png",
        row=16,
        col=170,
        size=384,
        solid_level=150,
        crack_level=120,
        ignore_box=(310, 384, 0, 80),  # a cluster of small fragments
        keep_in_ignore=((280, 100),),
        notes="isolated particles in binder, one large",
    ),
    Crop(
        name="nmc86_right",
        slice_file="nanoct_nmc_slices/tomo_00086.png",
        row=330,
        col=770,
        size=384,
        solid_level=110,
        crack_level=85,
        split=((140, 125), (60, 190), (195, 190), (110, 60), (131, 200), (152, 193)),
        unfill=((165, 185),),
        ignore_box=(0, 384, 0, 75),
        # clusters of fragments: at the left, top right, right of the large particle, bottom right
        more_ignore=((0, 120, 150, 255), (115, 215, 178, 255), (210, 384, 205, 384)),
        keep_in_ignore=((260, 75), (140, 125), (225, 170)),
        notes="a large particle and particles between clusters of fragments (clusters ignored)",
    ),
)


def shared_data() -> Path:
    """The shared data folder, found as the tests find it."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import SHARED_DATA

    return SHARED_DATA


def load_crop(crop: Crop, data: Path) -> np.ndarray:
    """The grey crop (uint8) of a real slice."""
    image = io.imread(data / crop.slice_file)
    if image.ndim == 3:
        image = image[..., 0]
    return np.asarray(image[crop.row : crop.row + crop.size, crop.col : crop.col + crop.size])


def _component_at(mask: np.ndarray, points: tuple[Point, ...]) -> np.ndarray:
    """Union of the connected components of ``mask`` within 3 px of the given points."""
    labels, _ = ndimage.label(mask)
    ids = {int(i) for r, c in points for i in labels[r - 3 : r + 4, c - 3 : c + 4].ravel()} - {0}
    return np.isin(labels, sorted(ids)) if ids else np.zeros_like(mask)


def _fill_per_object(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    out = mask.copy()
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            out[box] |= ndimage.binary_fill_holes(labels[box] == i)
    return out


def label_crop(image: np.ndarray, crop: Crop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance labels (uint16), crack mask and ignore mask (uint8) of one crop (steps 1-6)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
    solid = _drop_small(smooth > crop.solid_level, 20)
    r = crop.closing_radius
    closed = ndimage.binary_closing(np.pad(solid, r), disk(r))[r:-r, r:-r] | solid
    envelope = _fill_per_object(closed)
    dark = ~solid
    if crop.unfill:
        envelope &= ~(_component_at(dark, crop.unfill) & ~closed)
    if crop.fill:
        envelope |= _component_at(dark, crop.fill)
    envelope = ndimage.binary_opening(envelope, disk(2))
    envelope = _drop_small(envelope, crop.min_area)
    components, _ = ndimage.label(envelope)
    if crop.split:
        seeds = np.zeros(image.shape, dtype=np.int32)
        for k, p in enumerate(crop.split, start=1):
            seeds[p] = k
        dist = ndimage.distance_transform_edt(envelope)
        split_ids = {int(components[p]) for p in crop.split}
        if 0 in split_ids:
            off = [p for p in crop.split if not components[p]]
            raise ValueError(f"{crop.name}: split seeds {off} lie outside every particle")
        region = np.isin(components, sorted(split_ids))
        parts = watershed(-dist, seeds, mask=region)
        components = np.where(region, parts + components.max(), components)
    for group in crop.merge:
        ids = sorted({int(components[p]) for p in group} - {0})
        union = np.isin(components, ids)
        joined = ndimage.binary_fill_holes(ndimage.binary_closing(np.pad(union, 12), disk(10)))
        joined = joined[12:-12, 12:-12] & ((components == 0) | union)
        components[joined] = ids[0]
    for p in crop.drop:
        if components[p]:
            components[components == components[p]] = 0
    ignore = np.zeros(image.shape, dtype=bool)
    boxes = (() if crop.ignore_box is None else (crop.ignore_box,)) + crop.more_ignore
    if boxes:
        for r0, r1, c0, c1 in boxes:
            ignore[r0:r1, c0:c1] = True
        kept = {int(components[p]) for p in crop.keep_in_ignore} - {0}
        inside = set(np.unique(components[ignore]).tolist()) - {0} - kept
        touched = np.isin(components, sorted(inside))
        ignore = (ignore | touched) & ~np.isin(components, sorted(kept))
        components[ignore] = 0
    instances = _renumber(components, crop.min_area)
    cracks = (instances > 0) & (smooth < crop.crack_level)
    cracks = _drop_small(cracks, crop.min_crack)
    if crop.no_crack:
        cracks &= ~_component_at(cracks, crop.no_crack)
    for p in crop.no_crack_in:
        if instances[p]:
            cracks &= instances != instances[p]
    return instances.astype(np.uint16), cracks.astype(np.uint8), ignore.astype(np.uint8)


def _drop_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its connected components of fewer than ``min_size`` pixels."""
    labels, _ = ndimage.label(mask)
    counts = np.bincount(labels.ravel())
    keep = counts >= min_size
    keep[0] = False
    return keep[labels]


def _renumber(labels: np.ndarray, min_area: int) -> np.ndarray:
    counts = np.bincount(labels.ravel())
    keep = counts >= min_area
    keep[0] = False
    lut = np.zeros(len(counts), dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[labels]


def overlay(
    image: np.ndarray,
    instances: np.ndarray,
    cracks: np.ndarray,
    ignore: np.ndarray | None = None,
) -> np.ndarray:
    """RGB picture: grey crop | instance outlines in colours, cracks/voids in red, the ignored
    region tinted yellow; 2x size."""
    grey = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    rng = np.random.default_rng(3)
    colours = rng.integers(60, 256, size=(int(instances.max()) + 1, 3))
    colours[:, 0] //= 3  # outlines in greens/blues, never red
    edges = find_boundaries(instances, mode="inner")
    rgb = grey.copy()
    rgb[edges] = colours[instances[edges]]
    rgb[cracks > 0] = 0.35 * grey[cracks > 0] + 0.65 * np.array([255.0, 0.0, 0.0])
    if ignore is not None:
        tint = ignore > 0
        rgb[tint] = 0.7 * rgb[tint] + 0.3 * np.array([255.0, 220.0, 0.0])
    side_by_side = np.concatenate([grey, np.full((image.shape[0], 4, 3), 255.0), rgb], axis=1)
    big = np.repeat(np.repeat(side_by_side, 2, axis=0), 2, axis=1)
    return np.clip(big, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlays", type=Path, default=None, help="write overlay PNGs here")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    data = shared_data()
    for crop in CROPS:
        image = load_crop(crop, data)
        instances, cracks, ignore = label_crop(image, crop)
        io.imsave(args.out / f"{crop.name}_instances.png", instances, check_contrast=False)
        io.imsave(args.out / f"{crop.name}_cracks.png", cracks, check_contrast=False)
        io.imsave(args.out / f"{crop.name}_ignore.png", ignore, check_contrast=False)
        if args.overlays is not None:
            args.overlays.mkdir(parents=True, exist_ok=True)
            picture = overlay(image, instances, cracks, ignore)
            io.imsave(args.overlays / f"{crop.name}.png", picture)
        share = cracks.sum() / max(1, (instances > 0).sum())
        sys.stdout.write(
            f"{crop.name}: {int(instances.max())} particles, crack/void share {share:.3f}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
