"""The post-edge pass places a particle whose frame 0 did not register by the drift.

A particle lost in the faint pre-edge frames and re-acquired later (or one that joined
later) has no frame-0 registration in the post-edge pass. It used to keep its live shifts,
placed by the global shift of the one frame it was re-acquired in (seed 1004 of the dense
family: 1.6 px off in every frame). :func:`post_edge_anchors` now places it by the median
over its clear frames of its registration minus the frame's drift (the median of the
particles anchored at frame 0), when that offset varies by at most ``post_edge_rigid_px``
there (issue 12, 13th session).
"""

from __future__ import annotations

import numpy as np

from pipelines.xanes.params import TrackParams
from pipelines.xanes.post_edge import post_edge_anchors

N = 30
JOINS = 12  # the joiner is registered from this frame on


def _drift() -> np.ndarray:
    t = np.arange(N, dtype=np.float64)
    drift = np.stack([0.1 * t + 0.3 * np.sin(t / 3.0), -0.05 * t + 0.2 * np.cos(t / 4.0)], axis=1)
    return drift - drift[0]  # zero at frame 0


def _passes(joiner_wobble: float) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], int]:
    """Four particles registered in every frame (their frame 0 at an arbitrary place of their
    template, frames 0-9 faint), and a fifth registered only from ``JOINS`` on, at
    ``(5, -3)`` plus the drift plus a wobble of ``joiner_wobble`` px."""
    rng = np.random.default_rng(7)
    drift = _drift()
    faint = np.zeros(N, dtype=bool)
    faint[:10] = True
    passes = {}
    for k in range(4):
        origin = rng.uniform(-4.0, 4.0, 2)
        passes[k] = (origin + drift + rng.normal(0.0, 0.05, (N, 2)), faint.copy())
    registered = np.full((N, 2), np.nan)
    wobble = joiner_wobble * np.stack([np.sign(np.sin(np.arange(N) * 1.7)), np.zeros(N)], axis=1)
    registered[JOINS:] = np.array([5.0, -3.0]) + drift[JOINS:] + wobble[JOINS:]
    joiner_faint = np.zeros(N, dtype=bool)
    joiner_faint[0] = True
    passes[4] = (registered, joiner_faint)
    return passes, 4


def test_a_particle_without_frame_zero_is_placed_by_the_drift():
    passes, joiner = _passes(0.0)
    anchors = post_edge_anchors(passes, [False] * 5, track=TrackParams())
    assert set(anchors) == set(passes)
    np.testing.assert_allclose(anchors[joiner], [5.0, -3.0], atol=0.1)
    anchored = passes[joiner][0] - anchors[joiner]
    # its frames now follow the drift, not the place of the frame it was re-acquired in
    np.testing.assert_allclose(anchored[JOINS:], _drift()[JOINS:], atol=0.1)
    assert np.all(np.isnan(anchored[:JOINS]))
    for k in range(4):  # the others are anchored as before: their frame 0 near zero
        assert np.all(np.abs(passes[k][0][0] - anchors[k]) < 0.2)


def test_a_particle_without_frame_zero_that_does_not_follow_the_drift_keeps_live():
    passes, joiner = _passes(0.9)  # its offset from the drift varies by 0.9 px > rigid_px
    anchors = post_edge_anchors(passes, [False] * 5, track=TrackParams())
    assert joiner not in anchors
    assert set(anchors) == set(passes) - {joiner}


def test_with_the_frame_zero_anchor_a_particle_without_frame_zero_keeps_live():
    passes, joiner = _passes(0.0)
    anchors = post_edge_anchors(passes, [False] * 5, track=TrackParams(post_edge_anchor="frame0"))
    assert joiner not in anchors
    for k in range(4):
        np.testing.assert_array_equal(anchors[k], passes[k][0][0])
