"""Contract of ``beamwatch xanes align --detector {classical,learned}``."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from pipelines.xanes import detect_learned
from tests.services.test_cli_xanes import _parser, _run, write_scan


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    return write_scan(tmp_path_factory.mktemp("xanes_detector") / "scan.h5", 20)


@pytest.fixture
def learned_calls(monkeypatch):
    """Count calls of the learned detector (the tracker imports it when it is chosen)."""
    calls = []
    original = detect_learned.detect_particles_learned

    def spy(*args, **kwargs):
        calls.append(kwargs.get("params"))
        return original(*args, **kwargs)

    monkeypatch.setattr(detect_learned, "detect_particles_learned", spy)
    return calls


def test_learned_detector_contract(scan_file, tmp_path, learned_calls):
    path, scene, energies = scan_file
    out = tmp_path / "out.h5"
    code = _run(
        "xanes", "align", str(path), "-o", str(out), "--detector", "learned", "--no-progress"
    )
    assert code == 0
    # frame 0 and the re-detections when the edge raises the contrast: all by the network
    assert learned_calls and all(params.method == "learned" for params in learned_calls)
    with h5py.File(out, "r") as h5:
        labels = h5["/xanes/labels"][()]
        shift = h5["/xanes/particle_shift"][()]
    assert labels.dtype == np.int32 and labels.shape == (128, 128)
    p = int(labels.max())
    assert p == scene.n_particles and shift.shape == (p, energies.size, 2)
    truth_labels = scene.truth_labels()
    which = [np.bincount(truth_labels[labels == k + 1]).argmax() - 1 for k in range(p)]
    assert sorted(which) == list(range(p))
    truth = np.stack([scene.truth_shift(0, i) for i in range(energies.size)], axis=1)[which]
    assert np.sqrt(np.nanmean(np.sum((shift - truth) ** 2, axis=-1))) < 0.3


def test_classical_is_the_default_and_the_option_overrides_the_params_file(
    scan_file, tmp_path, learned_calls
):
    path, _, _ = scan_file
    out = tmp_path / "out.h5"
    assert _run("xanes", "align", str(path), "-o", str(out), "--no-progress") == 0
    assert learned_calls == []
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"detect": {"method": "learned"}}))
    argv = ["xanes", "align", str(path), "-o", str(out), "--params", str(params), "--no-progress"]
    assert _run(*argv) == 0
    used = len(learned_calls)
    assert used >= 1
    assert _run(*argv, "--detector", "classical") == 0
    assert len(learned_calls) == used


def test_unknown_detector_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["xanes", "align", "in.h5", "-o", "o.h5", "--detector", "magic"])
    assert exc.value.code == 2
    assert "--detector" in capsys.readouterr().err


def test_help_documents_the_detector_option(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["xanes", "align", "--help"])
    text = capsys.readouterr().out
    assert "--detector {classical,learned}" in text
