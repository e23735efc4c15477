import json
import threading

import numpy as np
import pytest
import zmq
from bluesky import RunEngine

from bluesky_plans.devices import SimHdf5Camera, SimTomoStation
from bluesky_plans.feedback import DriftFeedback
from bluesky_plans.plans import operando_xanes_plan, tomo_scan_plan, xanes_scan_plan
from tests.conftest import free_port
from tests.sim import N_ENERGIES, energies, small_txm


def collect(RE):
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def test_operando_series_links_its_runs(tmp_path):
    RE = RunEngine({})
    docs = collect(RE)
    uids = RE(operando_xanes_plan(small_txm(tmp_path), energies(), 2, experiment="cell-7"))
    starts = [d for n, d in docs if n == "start"]
    assert [s["uid"] for s in starts] == list(uids)
    assert {s["operando_series"] for s in starts} == {starts[0]["operando_series"]}
    assert [s["scan_index"] for s in starts] == [0, 1]
    assert all(s["experiment"] == "cell-7" and s["plan_name"] == "xanes_scan_plan" for s in starts)
    stops = [d for n, d in docs if n == "stop"]
    assert all(s["num_events"] == {"flat": 6, "primary": N_ENERGIES} for s in stops)


def test_flats_are_taken_with_the_sample_out_of_the_beam(tmp_path):
    txm = small_txm(tmp_path, "event")
    RE = RunEngine({})
    docs = collect(RE)
    RE(xanes_scan_plan(txm, energies(), n_flats=2))
    descriptors = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    by_stream: dict[str, list[np.ndarray]] = {"flat": [], "primary": []}
    for name, doc in docs:
        if name == "event":
            by_stream[descriptors[doc["descriptor"]]].append(doc["data"]["txm_cam_image"])
    flat, sample = np.mean(by_stream["flat"]), np.mean(by_stream["primary"])
    assert flat > 1.1 * sample  # particles absorb: the sample-in frames are darker
    assert float(txm.sample_x.position) == 0.0  # back in the beam after the flats


def test_tomo_scan_has_darks_flats_and_projections(tmp_path):
    station = SimTomoStation(
        lambda a: np.full((8, 16), 1.0), (8, 16), tmp_path, frame_source="event"
    )
    RE = RunEngine({})
    docs = collect(RE)
    RE(tomo_scan_plan(station, np.linspace(0, 180, 5, endpoint=False), n_darks=2, n_flats=2))
    (stop,) = [d for n, d in docs if n == "stop"]
    assert stop["num_events"] == {"dark": 2, "flat": 2, "primary": 5}
    descriptors = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    means = {}
    for name, doc in docs:
        if name == "event":
            means.setdefault(descriptors[doc["descriptor"]], []).append(
                doc["data"]["tomo_cam_image"].mean()
            )
    assert np.mean(means["dark"]) < np.mean(means["primary"]) < np.mean(means["flat"])


def test_camera_rejects_unknown_frame_source(tmp_path):
    with pytest.raises(ValueError, match="frame_source"):
        SimHdf5Camera(
            name="c", render=lambda: np.zeros((2, 2)), directory=tmp_path, frame_source="ftp"
        )


def test_drift_feedback_moves_the_stage_against_the_measured_drift(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(address)
    txm = small_txm(tmp_path)
    feedback = DriftFeedback(address, txm.sample_y, txm.sample_x, pixel_size_um=0.5, wait_s=5.0)
    stop = threading.Event()

    def consumer_side():
        # Pretend to be the XANES consumer: report a drift of (2, -4) px after every point.
        seq = 0
        while not stop.is_set():
            seq = max(seq, len(feedback.corrections) + 1)
            pub.send(json.dumps({"seq_num": seq, "dy_px": 2.0, "dx_px": -4.0}).encode())
            stop.wait(0.02)

    thread = threading.Thread(target=consumer_side)
    thread.start()
    try:
        RE = RunEngine({})
        RE(xanes_scan_plan(txm, energies()[:4], n_flats=0, before_point=feedback))
    finally:
        stop.set()
        thread.join()
        pub.close(0)
        feedback.close()
    assert len(feedback.corrections) == 3
    assert float(txm.sample_y.position) == pytest.approx(-3 * 2.0 * 0.5)
    assert float(txm.sample_x.position) == pytest.approx(3 * 4.0 * 0.5)
