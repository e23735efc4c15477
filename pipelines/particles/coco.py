"""COCO-style instance annotations from a labelled volume, slice by slice (as the flaw paper).

Every (slice, label) pair with pixels becomes one annotation of category ``particle`` with an
uncompressed run-length encoding (COCO's column-major ``{"size": [h, w], "counts": [...]}``,
readable by ``pycocotools.mask.frPyObjects``), its bounding box ``[x, y, width, height]`` and
area. Images are the slices: ``id = z + 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from pipelines.particles.measure import check_labels


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO run-length encoding of a 2-D mask.

    Parameters
    ----------
    mask : numpy.ndarray
        (H, W) bool or 0/1.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": [...]}``: alternating run lengths of 0 and 1 in
        column-major (Fortran) order, starting with a (possibly empty) run of 0.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    flat = m.astype(bool).ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(r) for r in runs]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Mask of an uncompressed COCO run-length encoding (inverse of :func:`rle_encode`).

    Parameters
    ----------
    rle : dict
        ``{"size": [H, W], "counts": [...]}``.

    Returns
    -------
    numpy.ndarray
        bool (H, W).
    """
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"rle counts sum to {counts.sum()}, expected {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


def coco_from_labels(
    labels: np.ndarray,
    *,
    file_name: str = "slice_{z:05d}.tif",
    min_area: int = 1,
    category: str = "particle",
) -> dict[str, Any]:
    """COCO dataset dictionary of a labelled volume, one image per z slice.

    Parameters
    ----------
    labels : numpy.ndarray
        int (Z, Y, X) instances, 0 = background (any labelled volume: ground truth,
        :func:`~pipelines.particles.instances.segment_instances`, a watershed, ...).
    file_name : str, optional
        Format string of the image file names, given ``z``.
    min_area : int, optional
        Instances smaller than this in a slice (pixels) are skipped.
    category : str, optional
        Name of the single category (id 1).

    Returns
    -------
    dict
        ``{"info", "images", "annotations", "categories"}``; every annotation carries
        ``particle_label`` (the 3-D label) so slices can be linked back into particles.
    """
    lab = check_labels(labels)
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1, got {min_area}")
    depth, height, width = lab.shape
    images = [
        {"id": z + 1, "file_name": file_name.format(z=z), "height": height, "width": width}
        for z in range(depth)
    ]
    annotations: list[dict[str, Any]] = []
    for z in range(depth):
        plane = lab[z]
        for k, box in enumerate(ndimage.find_objects(plane), start=1):
            if box is None:
                continue
            local = plane[box] == k
            area = int(local.sum())
            if area < min_area:
                continue
            mask = np.zeros((height, width), dtype=bool)
            mask[box] = local
            ys, xs = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": z + 1,
                    "category_id": 1,
                    "segmentation": rle_encode(mask),
                    "area": area,
                    "bbox": [
                        float(xs.start),
                        float(ys.start),
                        float(xs.stop - xs.start),
                        float(ys.stop - ys.start),
                    ],
                    "iscrowd": 0,
                    "particle_label": k,
                }
            )
    return {
        "info": {"description": "beamwatch particle instances, one image per z slice"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": category, "supercategory": "electrode"}],
    }


def labels_from_coco(coco: dict[str, Any]) -> np.ndarray:
    """Rebuild the labelled volume from :func:`coco_from_labels` output.

    Parameters
    ----------
    coco : dict
        Dataset dictionary whose annotations carry ``particle_label``.

    Returns
    -------
    numpy.ndarray
        int32 (Z, Y, X).
    """
    images = sorted(coco["images"], key=lambda im: im["id"])
    if not images:
        raise ValueError("coco has no images")
    shape = (len(images), int(images[0]["height"]), int(images[0]["width"]))
    index = {im["id"]: z for z, im in enumerate(images)}
    out = np.zeros(shape, dtype=np.int32)
    for ann in coco["annotations"]:
        out[index[ann["image_id"]]][rle_decode(ann["segmentation"])] = int(ann["particle_label"])
    return out
