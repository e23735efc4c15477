"""Figures for results: PNG files next to the data, and the same image as an RGB array."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


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


def publish_figures(
    out: Any,
    directory: Path,
    prefix: str,
    drawers: Sequence[tuple[str, Callable[[Any], None]]],
    *,
    run_uid: str,
) -> dict[str, str]:
    """Render each figure to ``directory/<prefix>_<name>.png`` and write it to Tiled as
    ``figures/<name>`` (RGB) through the result writer ``out``; return the PNG paths.

    A figure is a preview: one that fails is logged and skipped, the others still go out.
    """
    paths: dict[str, str] = {}
    for name, draw in drawers:
        path = directory / f"{prefix}_{name}.png"
        try:
            rgb = render_png(draw, path)
        except Exception:
            logger.warning("figure %s failed", name, exc_info=True, extra={"run_uid": run_uid})
            continue
        out.array(name, rgb, sub=["figures"], dims=["row", "col", "rgb"], png=str(path))
        paths[name] = str(path)
    return paths
