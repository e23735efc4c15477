"""The tomography run's two stages end with the run's own status, never ``complete`` early.

The crack map declares itself final before the particle stage runs (minutes at 512^3), and the
particle stage ends later in its own container. Both used to write ``complete`` whatever the run
had lost; the router set ``incomplete`` on ``cracks`` only afterwards (a watcher saw
``complete`` first) and never on ``particles``. Real RunEngine documents, the real pipeline and
networks, fed in process through the dispatcher and the spool.
"""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_plans.devices import SimTomoStation
from bluesky_plans.plans import tomo_scan_plan
from services.analysis.router import AnalysisRunRouter, RegistryEntry
from services.analysis.tomo_live import CracksPipeline, select
from services.core.metrics import Metrics
from services.core.serialization import UndecodableField
from services.runs.routing import RunDispatcher
from services.tiled.records import ArrayWrite, Metadata, Record
from services.tiled.spool import Spool
from synthetic.cathode import make_cathode_volume
from synthetic.scan import simulate_scan

GARBLED = 5  # the projection whose angle cannot be decoded


def _run(tmp_path, garble: int | None, md: dict | None = None) -> list[Record]:
    volume = make_cathode_volume((4, 48, 48), seed=11)
    angles = np.linspace(0.0, 180.0, 36, endpoint=False)
    frames = simulate_scan(volume.attenuation, angles, seed=4)
    station = SimTomoStation.from_frames(
        angles, frames.projections, frames.flat, frames.dark, tmp_path / "detector"
    )
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(tomo_scan_plan(station, angles, n_darks=1, n_flats=1, md=md))
    primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")

    applied: list[Record] = []
    metrics = Metrics("analysis")
    spool = Spool(tmp_path / "spool", applied.append, metrics)
    entries = [
        RegistryEntry(
            "cracks", select, lambda start: CracksPipeline(start, figures_dir=tmp_path / "fig")
        )
    ]
    dispatcher = RunDispatcher(
        [lambda start: AnalysisRunRouter(start, entries, spool, metrics)], metrics
    )
    for name, doc in docs:
        if name == "event" and (doc["descriptor"], doc["seq_num"]) == (primary, garble):
            doc = {**doc, "data": {**doc["data"], "rotation": UndecodableField("truncated")}}
        dispatcher(name, doc)
    spool.start()
    assert spool.wait_empty(120)
    spool.stop()
    return applied


def _statuses(applied: list[Record], pipeline: str) -> list[str]:
    return [
        r.metadata["status"]
        for r in applied
        if isinstance(r, Metadata) and r.path[-1] == pipeline and "status" in r.metadata
    ]


@pytest.mark.parametrize("garble", [None, GARBLED])
def test_both_stages_end_with_the_runs_status(tmp_path, garble):
    applied = _run(tmp_path, garble)
    cracks, particles = _statuses(applied, "cracks"), _statuses(applied, "particles")
    if garble is None:
        assert cracks[-1] == "complete" and particles[-1] == "complete", (cracks, particles)
        return
    # one projection has no angle: left out of the reconstruction and named; neither stage
    # ever says complete, not even for a moment
    assert "complete" not in cracks, cracks
    assert "complete" not in particles, particles
    assert cracks[-1] == "incomplete" and particles[-1] == "incomplete", (cracks, particles)
    finals = [
        r.metadata
        for r in applied
        if isinstance(r, Metadata)
        and r.path[-1] in ("cracks", "particles")
        and r.metadata.get("status") == "incomplete"
    ]
    assert all(md["missing_seq_nums"] == {"primary": [GARBLED]} for md in finals), finals


def _array(applied: list[Record], key: str) -> np.ndarray:
    (array,) = [
        r.array
        for r in applied
        if isinstance(r, ArrayWrite) and r.key == key and r.path[-1] == "cracks"
    ]
    return np.asarray(array)


def test_separator_last_puts_the_separator_at_z0_of_every_result(tmp_path):
    # issue 16 part 2: which end is the separator comes from the start document; depths (the
    # depth profile, the layer fit, the top/bottom figures) count from it
    first = _run(tmp_path / "first", None)
    last = _run(tmp_path / "last", None, md={"separator": "last"})
    np.testing.assert_allclose(
        _array(last, "reconstruction"), _array(first, "reconstruction")[::-1], atol=1e-5
    )
    np.testing.assert_allclose(
        _array(last, "depth_profile"), _array(first, "depth_profile")[::-1], atol=1e-6
    )
    md = [r.metadata for r in last if isinstance(r, Metadata) and "separator" in r.metadata]
    assert md and md[-1]["separator"] == "last", md
    assert "flipped" in md[-1]["z_convention"]


def test_a_separator_value_that_is_not_an_end_is_refused_and_said(tmp_path):
    applied = _run(tmp_path, None, md={"separator": "../top"})
    containers = [
        r.metadata for r in applied if getattr(r, "metadata", None) and "parameters" in r.metadata
    ]
    params = containers[0]["parameters"]
    assert params["separator"] == "first"
    assert "'../top'" in params["separator_error"]
    assert _statuses(applied, "cracks")[-1] == "complete"
