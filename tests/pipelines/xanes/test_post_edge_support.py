"""The post-edge pass registers a particle on its support grown past a tight frame-0 mask.

A faint particle's frame-0 mask (a threshold on a rounded thickness profile) lies well inside
its outline; the support around it then holds the particle's flat inside, where a pattern
that stays in the detector frame (zone-plate rings) has the strongest gradients, and not the
rim, where the particle's own gradient is. ``track.post_edge_support_fraction`` grows the
support in the pass (issue 12, 13th session).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.xanes.params import TrackParams
from pipelines.xanes.window import EdgeTemplate, FrameEdges

SHAPE = (160, 160)
CENTRE = np.array([80.0, 80.0])
RADIUS = 34.0


def _od(shift: np.ndarray, level: float) -> np.ndarray:
    """A rounded particle (thickness sqrt(1 - rho^2)) at ``CENTRE + shift`` on still rings."""
    rr, cc = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float64)
    rho = np.hypot(rr - CENTRE[0] - shift[0], cc - CENTRE[1] - shift[1]) / RADIUS
    particle = level * np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
    rings = 0.01 * np.sin(np.hypot(rr + 200.0, cc + 60.0) ** 2 / 900.0)
    return particle + rings


def _tight_template(widen_px: int) -> EdgeTemplate:
    rr, cc = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    # the frame-0 mask a threshold draws: 70 % of the radius, plus the live support margin
    inside = np.hypot(rr - CENTRE[0], cc - CENTRE[1]) < 0.7 * RADIUS + 4
    origin = np.array([20, 20])
    support = inside[20:140, 20:140]
    reference = FrameEdges(_od(np.zeros(2), 1.0))
    template = EdgeTemplate(reference, origin, support.shape, support, 1.5, 10)
    return template.widened(widen_px)


@pytest.mark.parametrize("shift", [(1.6, -1.2), (-2.1, 0.7)])
def test_grown_support_holds_the_outline_a_tight_mask_misses(shift):
    truth = np.asarray(shift)
    # a pre-edge frame (a fifth of the contrast) registered against the clear outline: the
    # tight support is pulled 0.56 / 1.19 px by the rings, the grown one is 0.11 / 0.15 px off
    faint = FrameEdges(_od(truth, 0.2))
    tight = _tight_template(0).renewed(FrameEdges(_od(np.zeros(2), 1.0)), np.zeros(2))
    grown = _tight_template(14).renewed(FrameEdges(_od(np.zeros(2), 1.0)), np.zeros(2))
    error = {}
    for name, template in (("tight", tight), ("grown", grown)):
        outcome = template.register(faint, np.round(truth), 6)
        assert outcome is not None, name
        error[name] = float(np.hypot(*(outcome[0] - truth)))
    assert error["grown"] < 0.2, error
    assert error["tight"] > error["grown"] + 0.3, error


def test_widened_support_grows_and_keeps_off_the_frame_border():
    rr, cc = np.mgrid[0:60, 0:60]
    support = np.hypot(rr - 30, cc - 10) < 8  # its ROI starts 5 px from the frame border
    edges = FrameEdges(_od(np.zeros(2), 1.0))
    template = EdgeTemplate(edges, np.array([20, 5]), support.shape, support, 1.5, 10)
    grown = template.widened(6)
    assert grown is not template
    assert np.array_equal(template.support, support & template.inside)  # unchanged
    assert np.count_nonzero(grown.support) > np.count_nonzero(template.support)
    assert not np.any(grown.support & ~template.inside)  # never within 10 px of the border
    assert np.all(grown.support[template.support])
    assert template.widened(0) is template


def test_widened_support_does_not_grow_over_a_neighbour():
    rr, cc = np.mgrid[0:80, 0:80]
    own = np.hypot(rr - 40, cc - 30) < 12
    neighbour = np.hypot(rr - 40, cc - 58) < 14  # touching on the right
    # the tracker's background ring: away from every particle by 2 px
    background = ~ndimage.binary_dilation(own | neighbour, iterations=2)
    support = ndimage.binary_dilation(own, iterations=4)
    edges = FrameEdges(_od(np.zeros(2), 1.0))
    template = EdgeTemplate(
        edges, np.array([40, 40]), own.shape, support, 1.5, 10, grow_into=background
    )
    grown = template.widened(8)
    assert np.all(grown.support[template.support])
    assert not np.any(grown.support & neighbour & ~template.support)
    assert np.any(grown.support & background & ~template.support)
    with pytest.raises(ValueError, match="grow_into"):
        EdgeTemplate(edges, np.array([40, 40]), own.shape, support, 1.5, 10, grow_into=own[1:])


def test_post_edge_support_fraction_is_checked():
    assert TrackParams().post_edge_support_fraction > 0
    with pytest.raises(ValueError, match="post_edge_support_fraction"):
        TrackParams(post_edge_support_fraction=-0.1)
