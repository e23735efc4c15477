"""Degree of detachment on constructed cases and on the real NREL 3-phase NMC volume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipelines.particles.detachment import (
    DetachmentParams,
    degree_of_detachment,
    estimate_phase,
    fill_from,
)
from pipelines.particles.instances import watershed_baseline
from tests.conftest import SHARED_DATA

NREL = SHARED_DATA / "nrel_nmc_3phase" / "nmc-1-cal_generatedCBD_bridge.tif"
PORE, BINDER, PARTICLE = 0, 1, 2


def cube_case() -> tuple[np.ndarray, np.ndarray]:
    """A 4^3 cube (96 faces): binder against its two x faces, a second particle on +z."""
    labels = np.zeros((10, 10, 10), dtype=np.int32)
    phase = np.full(labels.shape, PORE, dtype=np.uint8)
    labels[3:7, 3:7, 3:7] = 1
    phase[3:7, 3:7, 2] = BINDER
    phase[3:7, 3:7, 7] = BINDER
    labels[7:9, 3:7, 3:7] = 2
    phase[labels > 0] = PARTICLE
    return labels, phase


def test_cube_with_known_answer() -> None:
    labels, phase = cube_case()
    result = degree_of_detachment(labels, phase)
    # 96 faces: 16 + 16 binder (x sides), 16 contact (+z), 48 pore
    assert result.binder_faces[1] == 32
    assert result.pore_faces[1] == 48
    assert result.particle_faces[1] == 16
    assert result.detachment[1] == pytest.approx(48 / 80)
    assert np.isnan(result.detachment[0])


def test_fully_attached_and_fully_detached() -> None:
    labels, phase = cube_case()
    embedded = np.where(labels > 0, phase, BINDER).astype(np.uint8)
    assert np.allclose(degree_of_detachment(labels, embedded).detachment[1:], 0.0)
    floating = np.where(labels > 0, phase, PORE).astype(np.uint8)
    assert np.allclose(degree_of_detachment(labels, floating).detachment[1:], 1.0)


def test_phase_codes_are_parameters() -> None:
    labels, phase = cube_case()
    swapped = phase.copy()
    swapped[phase == PORE], swapped[phase == BINDER] = 7, 5
    params = DetachmentParams(pore_value=7, binder_value=5)
    assert degree_of_detachment(labels, swapped, params).detachment[1] == pytest.approx(0.6)


def test_rejects_bad_inputs() -> None:
    labels, phase = cube_case()
    with pytest.raises(ValueError, match="phase shape"):
        degree_of_detachment(labels, phase[1:])
    with pytest.raises(ValueError, match="pore_value"):
        degree_of_detachment(labels, phase, DetachmentParams(pore_value=1, binder_value=1))
    with pytest.raises(ValueError, match="phase must have an integer"):
        degree_of_detachment(labels, phase.astype(np.float32))
    with pytest.raises(ValueError, match="labels must be 3-D"):
        degree_of_detachment(labels[0], phase[0])


@settings(max_examples=30, deadline=None)
@given(
    labels=arrays(np.int32, (4, 5, 6), elements=st.integers(0, 3)),
    phase=arrays(np.uint8, (4, 5, 6), elements=st.integers(0, 2)),
)
def test_faces_add_up(labels: np.ndarray, phase: np.ndarray) -> None:
    """Every face of a particle voxel towards another voxel is counted exactly once."""
    result = degree_of_detachment(labels, phase)
    # faces towards a voxel that is neither in the same particle nor pore/binder (an
    # unlabelled voxel of another code) are the remainder
    total = 0
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        total += int(((a[1:] != a[:-1]) & (a[1:] > 0)).sum())
        total += int(((a[1:] != a[:-1]) & (a[:-1] > 0)).sum())
    counted = result.pore_faces.sum() + result.binder_faces.sum() + result.particle_faces.sum()
    assert counted <= total
    finite = result.detachment[np.isfinite(result.detachment)]
    assert np.all((finite >= 0) & (finite <= 1))


def test_estimate_phase_on_grey_levels() -> None:
    rng = np.random.default_rng(0)
    labels, phase = cube_case()
    grey = np.array([0.0, 0.3, 1.0], dtype=np.float32)[phase]
    grey += rng.normal(0, 0.03, grey.shape).astype(np.float32)
    estimated = estimate_phase(grey, labels, sigma=0.0, shell_px=0.0)
    assert estimated.dtype == np.uint8
    outside = labels == 0
    assert (estimated[outside] == phase[outside]).mean() > 0.9
    assert np.all(estimated[labels > 0] == 2)
    # with the shell correction the thin binder layers next to the cube read as what lies
    # beyond them (pore); a binder slab far from the particles keeps both phases in the sample
    grey[:, :, 9] = 0.3
    shelled = estimate_phase(grey, labels, sigma=0.0, shell_px=1.0)
    assert np.all(shelled[:, :, 9] == BINDER)
    assert np.all(shelled[3:7, 3:7, 2] == PORE)
    with pytest.raises(ValueError, match="shell_px"):
        estimate_phase(grey, labels, shell_px=-1.0)


def test_fill_from_fills_inwards_from_the_known_voxels() -> None:
    values = np.zeros((1, 1, 7), dtype=np.float32)
    values[0, 0, :2] = 5.0  # known
    values[0, 0, 6] = 9.0  # unknown, out of reach
    known = np.zeros(values.shape, dtype=bool)
    known[0, 0, :2] = True
    unknown = np.zeros(values.shape, dtype=bool)
    unknown[0, 0, 2:4] = True
    unknown[0, 0, 6] = True
    out = fill_from(values, known, unknown, steps=2)
    assert out[0, 0, 2] == pytest.approx(5.0)  # one step in
    assert out[0, 0, 3] == pytest.approx(5.0)  # two steps in, from the voxel filled first
    assert out[0, 0, 6] == pytest.approx(9.0)  # no known neighbour within 2 steps: kept
    assert out[0, 0, 4] == 0.0  # neither known nor unknown: untouched
    assert values[0, 0, 2] == 0.0  # input unchanged
    one_step = fill_from(values, known, unknown, steps=1)
    assert one_step[0, 0, 3] == 0.0


@pytest.fixture(scope="module")
def nrel() -> np.ndarray:
    tifffile = pytest.importorskip("tifffile")
    if not NREL.is_file():
        pytest.skip(f"real data not found: {NREL}")
    volume = tifffile.imread(NREL)
    assert volume.shape == (251, 301, 301)
    return volume[:80, :120, :120]


def test_detachment_on_real_nrel_volume(nrel: np.ndarray) -> None:
    """Real NMC particles (label 1) with carbon/binder (2) and pore (0)."""
    labels = watershed_baseline(nrel == 1, min_distance=6)
    assert labels.max() > 50
    params = DetachmentParams(pore_value=0, binder_value=2)
    result = degree_of_detachment(labels, nrel, params)
    values = result.detachment[1:][np.isfinite(result.detachment[1:])]
    assert len(values) > 50
    assert np.all((values >= 0) & (values <= 1))
    # measured 0.372: the generated CBD sits preferentially on particle surfaces
    assert 0.2 < values.mean() < 0.6
    # independent count on the binary particle mask: faces towards pore / towards CBD
    pore = binder = 0
    solid = labels > 0
    for axis in range(3):
        v, m = np.moveaxis(nrel, axis, 0), np.moveaxis(solid, axis, 0)
        for a, b in ((slice(0, -1), slice(1, None)), (slice(1, None), slice(0, -1))):
            pore += int((m[a] & ~m[b] & (v[b] == 0)).sum())
            binder += int((m[a] & ~m[b] & (v[b] == 2)).sum())
    assert result.pore_faces.sum() == pore
    assert result.binder_faces.sum() == binder
