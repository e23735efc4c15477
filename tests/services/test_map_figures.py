"""Map figures: a map without any value says so instead of drawing an empty colour bar."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from services.analysis.figures import draw_map, map_extent, png_bytes
from services.analysis.xanes_figures import WHY_NO_ENERGY, energy_map


@pytest.fixture()
def fig() -> Figure:
    figure = plt.figure()
    yield figure
    plt.close(figure)


def _texts(figure: Figure) -> list[str]:
    return [t.get_text().replace("\n", " ") for ax in figure.axes for t in ax.texts]


def test_all_nan_energy_map_says_why_and_has_no_colour_bar(fig: Figure) -> None:
    # edge-energy map of a 2-energy scan: NaN everywhere
    values = np.full((20, 30), np.nan, dtype=np.float32)
    energy_map(values, "edge energy at 50 % of the jump", map_extent(values.shape, 0.5), "um")(fig)
    assert len(fig.axes) == 1  # no colour bar axes
    (ax,) = fig.axes
    assert not ax.images
    assert _texts(fig) == [f"no value in this map ({WHY_NO_ENERGY})"]
    (text,) = ax.texts
    assert text.get_position() == (0.5, 0.5) and text.get_ha() == "center"
    assert ax.get_xlim() == (0.0, 15.0) and ax.get_ylim() == (10.0, 0.0)  # axes in um still
    assert ax.get_xlabel() == "x (um)"


def test_map_with_values_keeps_its_colour_bar(fig: Figure) -> None:
    values = np.full((20, 30), np.nan, dtype=np.float32)
    values[5:10, 5:10] = 8340.0
    energy_map(values, "edge energy at 50 % of the jump", map_extent(values.shape, None), "px")(fig)
    assert len(fig.axes) == 2  # the map and its colour bar
    assert fig.axes[0].images and not _texts(fig)
    assert fig.axes[1].get_ylabel() == "edge energy at 50 % of the jump (eV)"


def test_draw_map_says_whether_it_drew_and_renders() -> None:
    values = np.full((4, 4), np.nan)

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot(111)
        assert not draw_map(
            figure, ax, values, extent=map_extent((4, 4), None), label="x", why_empty="test"
        )
        assert draw_map(
            figure, ax, np.ones((4, 4)), extent=map_extent((4, 4), None), label="x", why_empty="t"
        )

    assert png_bytes(draw).startswith(b"\x89PNG")
