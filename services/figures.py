"""Figures for results: PNG files next to the data, and the same image as an RGB array."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def render_png(
    draw: Callable[[Any], None], path: Path, *, size: tuple[float, float] = (6, 4)
) -> np.ndarray:
    """Draw with matplotlib (Agg) into ``path`` and return the image as (H, W, 3) uint8."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    fig = plt.figure(figsize=size, dpi=100)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
