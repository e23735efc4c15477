"""The post-edge pass registers a whole particle on its clear outline, not around its frame-0 mask.

A faint particle's frame-0 mask (a threshold on a rounded thickness profile) lies well inside
its outline; the support around it then holds the particle's flat inside, where a pattern
that stays in the detector frame (zone-plate rings) has the strongest gradients, and not the
rim, where the particle's own gradient is. With ``track.post_edge_support="outline"`` the pass
re-segments the particle on the mean of its clear frames (:meth:`EdgeTemplate.outlined`),
closer to its own mask than to a neighbour's, and grows that a little into the background
(issue 12, 13th session).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.xanes.params import TrackParams
from pipelines.xanes.window import EdgeTemplate, FrameEdges

SHAPE = (160, 160)
CENTRE = np.array([80.0, 80.0])
RADIUS = 34.0
# clear frames: the particle drifted, the rings stayed
CLEAR_SHIFTS = np.array([[0.0, 0.0], [1.5, -1.0], [-1.0, 2.0], [2.5, 1.5]])


def _disk(centre: np.ndarray, radius: float, shift=(0.0, 0.0)) -> np.ndarray:
    rr, cc = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float64)
    return np.hypot(rr - centre[0] - shift[0], cc - centre[1] - shift[1]) / radius


def _od(shift, level: float, neighbour: float = 0.0) -> np.ndarray:
    """A rounded particle (thickness sqrt(1 - rho^2)) at ``CENTRE + shift`` on still rings,
    and optionally a neighbour of radius 20 on its right overlapping it by 6 px, moving with it."""
    rr, cc = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float64)
    rho = _disk(CENTRE, RADIUS, shift)
    od = level * np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
    if neighbour:
        rho = _disk(CENTRE + [0.0, RADIUS + 14.0], 20.0, shift)
        od += neighbour * level * np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
    return od + 0.01 * np.sin(np.hypot(rr + 200.0, cc + 60.0) ** 2 / 900.0)


def _tight_template(neighbour: float = 0.0, origin=(20, 20)) -> EdgeTemplate:
    """The live template: the frame-0 mask a threshold draws on a faint particle (70 % of
    the radius), its support that mask plus the live 4 px margin."""
    r0, c0 = origin
    crop = (slice(r0, r0 + 120), slice(c0, c0 + 120))
    footprint = (_disk(CENTRE, RADIUS) < 0.7)[crop]
    neighbours = (_disk(CENTRE + [0.0, RADIUS + 14.0], 20.0) < 0.7)[crop]
    support = (_disk(CENTRE, 0.7 * RADIUS + 4) < 1.0)[crop]
    return EdgeTemplate(
        FrameEdges(_od(np.zeros(2), 0.2, neighbour)),
        np.array(origin),
        support.shape,
        support,
        1.5,
        10,
        footprint=footprint,
        neighbours=neighbours if neighbour else None,
    )


def _outlined(template: EdgeTemplate, neighbour: float = 0.0, grow_px: int = 4) -> EdgeTemplate:
    clear = [FrameEdges(_od(s, 1.0, neighbour)) for s in CLEAR_SHIFTS]
    return template.outlined(clear, CLEAR_SHIFTS, level=0.3, grow_px=grow_px)


@pytest.mark.parametrize("shift", [(1.6, -1.2), (-2.1, 0.7)])
def test_outline_support_registers_a_faint_frame_the_tight_mask_misregisters(shift):
    truth = np.asarray(shift)
    # a pre-edge frame (a fifth of the contrast) registered against the clear outline
    faint = FrameEdges(_od(truth, 0.2))
    reference = FrameEdges(_od(np.zeros(2), 1.0))
    tight = _tight_template()
    error = {}
    for name, template in (("tight", tight), ("outline", _outlined(tight))):
        outcome = template.renewed(reference, np.zeros(2)).register(faint, np.round(truth), 6)
        assert outcome is not None, name
        error[name] = float(np.hypot(*(outcome[0] - truth)))
    assert error["outline"] < 0.2, error
    assert error["tight"] > error["outline"] + 0.3, error


def test_outline_support_holds_the_whole_rim_and_a_little_background():
    tight = _tight_template()
    outline = _outlined(tight, grow_px=4)
    assert outline is not tight
    assert np.array_equal(tight.support, (_disk(CENTRE, 0.7 * RADIUS + 4) < 1.0)[20:140, 20:140])
    rho = _disk(CENTRE, RADIUS)[20:140, 20:140]
    rim = (rho > 0.9) & (rho < 1.0)
    assert np.all(outline.support[rim])  # the whole rim, which the tight support misses
    assert not np.any(tight.support[rim])
    # grown by about 4 px past the outline, not more
    assert np.any(outline.support[(rho > 1.0) & (rho < 1.05)])
    assert not np.any(outline.support[rho > 1.0 + 8.0 / RADIUS])


def test_outline_support_does_not_take_a_touching_neighbour():
    crop = (slice(20, 140), slice(20, 140))
    own = (_disk(CENTRE, RADIUS) < 1.0)[crop]
    neighbour = (_disk(CENTRE + [0.0, RADIUS + 14.0], 20.0) < 1.0)[crop] & ~own
    tight = _tight_template(neighbour=1.0)
    outline = _outlined(tight, neighbour=1.0, grow_px=6)
    # its own outline, but near the contact only up to the middle between the two masks (the
    # masks lie inside both outlines; measured: 0.970 of it)
    assert np.all(outline.support[own & (_disk(CENTRE, RADIUS)[crop] < 0.8)])
    assert np.count_nonzero(outline.support & own) > 0.95 * np.count_nonzero(own)
    assert not np.any(outline.support & neighbour)  # measured: none (blind below: 962 px)
    # not knowing the neighbour's mask, the re-segmentation takes it (the two are one blob)
    tight.neighbours = None
    blind = _outlined(tight, neighbour=1.0, grow_px=6)
    assert np.count_nonzero(blind.support & neighbour) > 0.5 * np.count_nonzero(neighbour)


def test_outline_support_keeps_off_the_frame_border():
    # the particle's crop starts 2 px from the frame border: the border's 10 px stay out
    tight = _tight_template(origin=(2, 20))
    outline = _outlined(tight)
    assert np.count_nonzero(outline.support) > np.count_nonzero(tight.support)
    assert not np.any(outline.support & ~tight.inside)


def test_outline_without_a_footprint_or_contrast_is_the_template_itself():
    tight = _tight_template()
    flat = [FrameEdges(np.zeros(SHAPE)) for _ in CLEAR_SHIFTS]
    assert tight.outlined(flat, CLEAR_SHIFTS, level=0.3, grow_px=4) is tight
    bare = EdgeTemplate(
        FrameEdges(_od(np.zeros(2), 1.0)), np.array([20, 20]), (120, 120), tight.support, 1.5, 10
    )
    assert _outlined(bare) is bare
    with pytest.raises(ValueError, match="footprint"):
        EdgeTemplate(
            FrameEdges(_od(np.zeros(2), 1.0)),
            np.array([20, 20]),
            (120, 120),
            tight.support,
            1.5,
            10,
            footprint=tight.support[1:],
        )
    with pytest.raises(ValueError, match="one"):
        tight.outlined(flat, CLEAR_SHIFTS[1:], level=0.3, grow_px=4)


def test_post_edge_support_parameters_are_checked():
    assert TrackParams().post_edge_support == "outline"
    with pytest.raises(ValueError, match="post_edge_support"):
        TrackParams(post_edge_support="grown")
    with pytest.raises(ValueError, match="post_edge_outline_level"):
        TrackParams(post_edge_outline_level=1.0)
    with pytest.raises(ValueError, match="post_edge_outline_grow_px"):
        TrackParams(post_edge_outline_grow_px=-1)
