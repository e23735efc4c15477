"""The trainers' entry points: --help lists the shared and the own options of each."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from training.cli import run_metadata, save_trained, trainer_parser
from training.loop import TrainingRun

SHARED = ("--out", "--threads", "--minutes", "--batch", "--lr", "--seed")
OWN = {
    "crack_unet": ("--volumes", "--tile", "--eval-every", "--wide", "--init", "--cache"),
    "particle_unet": ("--volumes", "--tile", "--eval-every", "--damage-kinds", "--init"),
    "flaw_cnn": ("--volumes", "--size", "--depth", "--eval-every"),
    "phase_net": ("--volumes", "--steps", "--hidden", "--unet-mask-share"),
    "txm_particle_net": ("--steps", "--pool", "--held-out", "--min-area", "--no-progress"),
}


@pytest.mark.parametrize("name", sorted(OWN))
def test_help_lists_the_options(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(f"training.{name}").main
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in SHARED + OWN[name]:
        assert option in text, option


def test_sidecar_next_to_the_weights(tmp_path: Path) -> None:
    args = trainer_parser(
        "x", out=tmp_path / "w.pt", threads=1, minutes=None, batch=2, lr=0.1, seed=3
    ).parse_args([])
    assert args.minutes is None and args.out == tmp_path / "w.pt"
    run = TrainingRun({}, {"iou": 0.5}, steps=9, best_step=4, train_seconds=1.26)
    meta = run_metadata(args, run, data_seconds=2.04, kept="iou")
    assert meta["config"]["out"] == str(tmp_path / "w.pt")
    assert (meta["steps"], meta["best_step"], meta["kept"]) == (9, 4, "best held-out iou")
    assert (meta["data_seconds"], meta["train_seconds"]) == (2.0, 1.3)
    assert run_metadata(args, run, data_seconds=0.0, kept=None)["kept"] == "last step"

    def save(model: torch.nn.Module, path: Path, metadata: dict) -> None:
        torch.save({"state_dict": model.state_dict(), "metadata": metadata}, path)

    out = tmp_path / "sub" / "w.pt"
    save_trained(save, torch.nn.Linear(2, 1), out, meta)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["torch"] == torch.__version__ and sidecar["steps"] == 9
    assert torch.load(out, weights_only=True)["metadata"] == sidecar
