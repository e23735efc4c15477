"""The three frame sources give the same frames, read back from real documents and files."""

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import det1, motor1

from bluesky_plans.plans import xanes_scan_plan
from services.runs.frames import FrameAssembler
from tests.sim import N_ENERGIES, energies, small_txm


def _frames_from(docs):
    assembler = FrameAssembler("run")
    frames = []
    for name, doc in docs:
        if name == "event":
            frames += assembler.event(doc)
        elif name == "stream_datum":
            frames += assembler.stream_datum(doc)
        elif name in ("descriptor", "resource", "datum", "stream_resource"):
            getattr(assembler, name)(doc)
    assembler.close()
    return frames


@pytest.mark.parametrize("source", ["stream", "resource", "event"])
def test_frames_in_order_with_readings(tmp_path, source):
    txm = small_txm(tmp_path, source)
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(xanes_scan_plan(txm, energies(), n_flats=2))
    names = {n for n, _ in docs}
    expected_names = {"stream": "stream_datum", "resource": "datum", "event": "event"}[source]
    assert expected_names in names
    frames = [f for f in _frames_from(docs) if f.stream == "primary"]
    assert [f.seq_num for f in frames] == list(range(1, N_ENERGIES + 1))
    np.testing.assert_allclose([f.readings["energy"] for f in frames], energies())
    key = txm.camera.image_key
    assert all(f.images[key].shape == (96, 96) and f.images[key].dtype == np.uint16 for f in frames)
    if source != "event":
        # The frames are exactly what the camera wrote to its SWMR file.
        files = sorted(tmp_path.glob("*.h5"), key=lambda p: p.stat().st_mtime)
        with h5py.File(files[-1], "r", swmr=True) as fh:
            written = fh["/entry/data/data"][()]
        np.testing.assert_array_equal(np.stack([f.images[key] for f in frames]), written)


def test_ophyd_sim_detector_scalar_run_has_readings_only():
    from bluesky.plans import scan

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(scan([det1], motor1, -1, 1, 3))
    frames = _frames_from(docs)
    assert len(frames) == 3 and all(not f.images for f in frames)
    assert {"det1", "motor1"} <= set(frames[0].readings)


def test_ophyd_sim_image_detector_with_npy_files():
    from bluesky.plans import count
    from ophyd.sim import img

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(count([img], num=2))
    frames = _frames_from(docs)
    assert len(frames) == 2
    assert frames[0].images["img"].ndim == 2


def test_ophyd_sim_image_detector_arrays_inside_events():
    from bluesky.plans import count
    from ophyd.sim import direct_img as img

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(count([img], num=2))
    frames = _frames_from(docs)
    assert len(frames) == 2
    assert frames[0].images["img"].ndim == 2
