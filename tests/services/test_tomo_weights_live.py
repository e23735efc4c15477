"""Start-document weights of a tomography run (``crack_weights``, ``particle_weights``).

A named checkpoint under the data dir is used by the live crack map; a path that leaves the
data dir, a missing file or a checkpoint of another network is refused at run start: the
run's metadata says why and that the shipped weights were used, and the refusal is counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bluesky import RunEngine

from bluesky_plans.plans import tomo_scan_plan
from models.crack_unet import CrackUNet, load_crack_unet, save_crack_unet
from models.particle_unet import ParticleUNet, save_particle_unet
from services.analysis.registry import default_registry
from services.analysis.router import AnalysisRunRouter
from services.analysis.tomo_weights import run_weights
from services.core.metrics import Metrics
from services.runs.routing import RunDispatcher
from services.tiled.records import Container, Metadata
from synthetic.cathode import make_cathode_volume
from tests.services.live_tomo import finished_result, live_tomo_run, scanned_station

CPU = torch.device("cpu")


def no_crack_checkpoint(path: Path) -> Path:
    """The shipped crack U-Net with its output bias at -1000: it finds no crack anywhere, so a
    run that used it is told apart from one that used the shipped weights."""
    shipped = load_crack_unet(device=CPU)
    model = CrackUNet(base_channels=shipped.base_channels, in_channels=shipped.in_channels)
    state = {k: v.float().contiguous() for k, v in shipped.state_dict().items()}
    state["head.bias"] = torch.full_like(state["head.bias"], -1000.0)
    model.load_state_dict(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_crack_unet(model, path, {"note": "finds no crack"})
    return path


def test_checked_weights_are_loaded_and_bad_ones_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    no_crack_checkpoint(data / "weights" / "none.pt")
    save_particle_unet(ParticleUNet(base_channels=4), data / "weights" / "particles.pt")
    (tmp_path / "outside.pt").write_bytes((data / "weights" / "none.pt").read_bytes())
    refused: list[str] = []

    start = {
        "uid": "u",
        "crack_weights": "weights/none.pt",
        "particle_weights": "weights/particles.pt",
    }
    ok = run_weights(
        start,
        data_dir=data,
        on_rejected=refused.append,
    )
    assert isinstance(ok.crack_model, CrackUNet) and isinstance(ok.particle_model, ParticleUNet)
    assert ok.metadata() == {
        "crack_weights": "weights/none.pt",
        "particle_weights": "weights/particles.pt",
    }
    assert ok.paths["crack_weights"] == str((data / "weights" / "none.pt").resolve())
    assert refused == []

    cases = {
        "../outside.pt": "is not under the data dir",
        str(tmp_path / "outside.pt"): "is not under the data dir",
        "weights/missing.pt": "no file 'weights/missing.pt'",
        "weights/particles.pt": "not a crack U-Net checkpoint",
        "": "expected a file name",
    }
    for spec, reason in cases.items():
        got = run_weights(
            {"uid": "u", "crack_weights": spec}, data_dir=data, on_rejected=refused.append
        )
        assert got.crack_model is None and got.used["crack_weights"] == "shipped", spec
        assert reason in got.errors["crack_weights"], (spec, got.errors)
        assert got.errors["crack_weights"].endswith("using the shipped weights")
        # the reason names the file as given, never the data dir's own (absolute) path
        assert str(data.resolve()) not in got.errors["crack_weights"], got.errors
    assert refused == ["crack_weights"] * len(cases)
    nowhere = run_weights({"uid": "u", "particle_weights": "p.pt"}, data_dir=None)
    assert "no data dir" in nowhere.errors["particle_weights"]


def station_run(tmp_path: Path, md: dict) -> tuple[str, list[tuple[str, dict]], np.ndarray]:
    shape = (4, 64, 64)
    volume = make_cathode_volume(shape, seed=11, crack_density=2.0)
    angles = np.linspace(0.0, 180.0, 48, endpoint=False)
    station = scanned_station(volume.attenuation, angles, seed=4, detector=tmp_path / "detector")
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(tomo_scan_plan(station, angles, n_darks=2, n_flats=2, md=md))
    return uid, docs, volume.crack_mask


class RecordingSpool:
    def __init__(self) -> None:
        self.records: list[object] = []

    def put(self, record: object) -> None:
        self.records.append(record)


def test_refused_weights_run_on_the_shipped_ones_and_say_why(tmp_path: Path) -> None:
    """A real RunEngine run whose start document names weights outside the data dir and a
    particle checkpoint as crack weights: the crack map completes with the shipped weights
    (it finds cracks), the metadata carries both refusals, and both are counted."""
    data = tmp_path / "data"
    data.mkdir()
    save_particle_unet(ParticleUNet(base_channels=4), data / "p.pt")
    md = {"crack_weights": "p.pt", "particle_weights": "../../etc/passwd"}
    uid, docs, _ = station_run(tmp_path, md)
    spool, metrics = RecordingSpool(), Metrics("analysis")
    registry = default_registry(tmp_path / "figures", None, references_dir=data, metrics=metrics)
    dispatcher = RunDispatcher(
        [lambda start: AnalysisRunRouter(start, registry.select(start), spool, metrics)], metrics
    )
    for name, doc in docs:
        dispatcher(name, doc)
    final: dict = {}
    for r in spool.records:
        if isinstance(r, Container | Metadata) and tuple(r.path) == ("analysis", uid, "cracks"):
            final.update(r.metadata)
    assert final["status"] == "complete", final
    weights = final["weights"]
    assert weights["crack_weights"] == weights["particle_weights"] == "shipped"
    assert "not a crack U-Net checkpoint" in weights["errors"]["crack_weights"]
    assert "not under the data dir" in weights["errors"]["particle_weights"]
    assert final["parameters"]["weights"] == weights  # said from the start of the run
    assert final["crack_fraction"] > 0  # the shipped network found the cracks
    for option in ("crack_weights", "particle_weights"):
        counted = metrics.start_options_rejected.labels("analysis", option)._value.get()
        assert counted == 1, option


@pytest.mark.timeout(900)
def test_live_crack_map_uses_the_start_documents_weights(consumer_settings, tiled_client):
    """Through the consumers and a real Tiled: the run naming a checkpoint under the data dir
    (one that finds no crack) gets an empty crack map, and its metadata names the file."""
    settings, detector = consumer_settings
    data_dir = Path(settings.data_dir)
    no_crack_checkpoint(data_dir / "weights" / "none.pt")
    shape = (4, 64, 64)
    volume = make_cathode_volume(shape, seed=11, crack_density=2.0)
    angles = np.linspace(0.0, 180.0, 48, endpoint=False)
    md = {"crack_weights": "weights/none.pt"}
    with live_tomo_run(settings, detector, volume.attenuation, angles, seed=4, md=md) as uid:
        node = finished_result(tiled_client, uid, "cracks", timeout=600)
        assert node.metadata["status"] == "complete", node.metadata
        assert node.metadata["weights"] == {
            "crack_weights": "weights/none.pt",
            "particle_weights": "shipped",
        }
        assert node["mask"].read().sum() == 0  # the named network, not the shipped one
        assert node["particle_mask"].read().sum() > 0
