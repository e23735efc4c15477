"""The real labelled crops (see README.md here): grey crop from the shared data + labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage import io

from tests.data.real_labels.make_labels import CROPS, HERE, load_crop

__all__ = ["LabelledCrop", "load_labelled_crops"]


@dataclass
class LabelledCrop:
    """A real grey crop with its particle instances, crack/void mask and ignore mask."""

    name: str
    image: np.ndarray
    instances: np.ndarray
    cracks: np.ndarray
    ignore: np.ndarray


def load_labelled_crops(data: Path) -> list[LabelledCrop]:
    """All labelled crops; ``data`` is the shared data folder (``tests.conftest.SHARED_DATA``)."""
    out = []
    for crop in CROPS:
        out.append(
            LabelledCrop(
                name=crop.name,
                image=load_crop(crop, data),
                instances=io.imread(HERE / f"{crop.name}_instances.png").astype(np.int32),
                cracks=io.imread(HERE / f"{crop.name}_cracks.png") > 0,
                ignore=io.imread(HERE / f"{crop.name}_ignore.png") > 0,
            )
        )
    return out
