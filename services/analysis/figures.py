"""Figures for results: PNG files next to the data, and the same image as an RGB array."""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


#: A figure: a drawing function, or (drawing function, (width, height) in inches).
Drawer = Callable[[Any], None] | tuple[Callable[[Any], None], tuple[float, float]]


def png_bytes(draw: Callable[[Any], None], *, size: tuple[float, float] = (6, 4)) -> bytes:
    """Draw with matplotlib (Agg) on a new figure of ``size`` inches and return the PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size, dpi=100)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def render_png(
    draw: Callable[[Any], None], path: Path, *, size: tuple[float, float] = (6, 4)
) -> np.ndarray:
    """Draw with matplotlib (Agg) into ``path`` and return the image as (H, W, 3) uint8."""
    from PIL import Image

    data = png_bytes(draw, size=size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def length_unit(size_um: float | None) -> str:
    """The unit lengths are shown in: um when the pixel / voxel size is known, else px."""
    return "um" if size_um else "px"


def map_extent(shape: tuple[int, ...], size_um: float | None) -> list[float]:
    """imshow ``extent`` (left, right, bottom, top) of an (H, W) map in :func:`length_unit`."""
    scale = float(size_um) if size_um else 1.0
    return [0.0, shape[-1] * scale, shape[-2] * scale, 0.0]


def draw_map(
    fig: Any,
    ax: Any,
    values: np.ndarray,
    *,
    extent: list[float],
    label: str,
    why_empty: str,
    colorbar: dict[str, Any] | None = None,
    **imshow: Any,
) -> bool:
    """Draw the (H, W) map ``values`` on ``ax`` with a colour bar labelled ``label``; return
    whether it holds a value.

    A map with no finite value gets no image and no colour bar (matplotlib would draw an empty
    bar from -0.1 to 0.1) but the centred text "no value in this map (``why_empty``)", wrapped
    to stay inside the axes.
    """
    if not np.isfinite(values).any():
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.text(
            0.5,
            0.5,
            textwrap.fill(f"no value in this map ({why_empty})", width=_characters_across(fig, ax)),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
        )
        return False
    im = ax.imshow(values, extent=extent, **imshow)
    fig.colorbar(im, ax=ax, label=label, **(colorbar or {}))
    return True


def _characters_across(fig: Any, ax: Any, fontsize: float = 9.0) -> int:
    """About how many characters of ``fontsize`` points fit across the axes."""
    width_in = ax.get_position().width * fig.get_figwidth()
    return max(16, int(width_in * 72 / (0.6 * fontsize)) - 6)


def finite_or_none(value: Any) -> float | None:
    """A float for metadata, None where the value is unknown (NaN / inf)."""
    number = float(value)
    return number if np.isfinite(number) else None


def publish_figures(
    out: Any,
    directory: Path,
    prefix: str,
    drawers: Sequence[tuple[str, Drawer]],
    *,
    run_uid: str,
) -> dict[str, str]:
    """Render each figure to ``directory/<prefix>_<name>.png`` and write it to Tiled as
    ``figures/<name>`` (RGB) through the result writer ``out``; return the PNG paths.

    A figure is a preview: one that fails is logged and skipped, the others still go out.
    """
    paths: dict[str, str] = {}
    for name, drawer in drawers:
        draw, size = drawer if isinstance(drawer, tuple) else (drawer, (6.0, 4.0))
        path = directory / f"{prefix}_{name}.png"
        try:
            rgb = render_png(draw, path, size=size)
        except Exception:
            logger.warning("figure %s failed", name, exc_info=True, extra={"run_uid": run_uid})
            continue
        out.array(name, rgb, sub=["figures"], dims=["row", "col", "rgb"], png=str(path))
        paths[name] = str(path)
    return paths
