"""The trainers' entry points: --help lists the shared and the own options of each."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from training.cli import (
    add_keep_best_option,
    run_metadata,
    save_trained,
    train_with_options,
    trainer_parser,
)
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
    history = [{"step": 0.0, "iou": 0.4}, {"step": 4.0, "iou": 0.5}]
    run = TrainingRun({"iou": 0.4}, {"iou": 0.5}, 9, 4, train_seconds=1.26, history=history)
    meta = run_metadata(args, run, data_seconds=2.04, key="iou")
    assert meta["config"]["out"] == str(tmp_path / "w.pt")
    assert (meta["steps"], meta["best_step"], meta["kept"]) == (9, 4, "best held-out iou")
    assert (meta["data_seconds"], meta["train_seconds"]) == (2.0, 1.3)
    last = TrainingRun({}, {}, steps=9, best_step=9, train_seconds=1.0)
    assert run_metadata(args, last, data_seconds=0.0, key="iou")["kept"] == "last step"

    def save(model: torch.nn.Module, path: Path, metadata: dict) -> None:
        torch.save({"state_dict": model.state_dict(), "metadata": metadata}, path)

    out = tmp_path / "sub" / "w.pt"
    save_trained(save, torch.nn.Linear(2, 1), out, meta)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["torch"] == torch.__version__ and sidecar["steps"] == 9
    assert torch.load(out, weights_only=True)["metadata"] == sidecar


def test_options_drive_the_loop() -> None:
    """--eval-every 0 keeps the last state without scoring; > 0 scores and keeps the best;
    --minutes None runs to max_steps."""
    parser = trainer_parser("x", out=Path("w.pt"), threads=1, minutes=None, batch=2, lr=0.1, seed=0)
    add_keep_best_option(parser, default=0, scored="nothing")
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x = torch.ones(4, 2)
    calls: list[int] = []

    def loss() -> torch.Tensor:
        return ((model(x) - 2.0) ** 2).mean()

    def evaluate() -> dict[str, float]:
        calls.append(1)
        return {"score": -float(loss().detach())}

    last = train_with_options(
        model, loss, parser.parse_args([]), evaluate=evaluate, key="score", max_steps=4
    )
    assert (last.steps, last.best_step, last.history, calls) == (4, 4, [], [])
    best = train_with_options(
        model,
        loss,
        parser.parse_args(["--eval-every", "2"]),
        evaluate=evaluate,
        key="score",
        max_steps=4,
    )
    assert [h["step"] for h in best.history] == [0.0, 2.0, 4.0] and best.best_step == 4
