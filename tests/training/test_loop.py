"""The one training loop: keep-best restores the best state, the budget bounds the run."""

from __future__ import annotations

import math

import pytest
import torch

from training.loop import cosine_lr, train_within_budget


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def _loss_towards(model: torch.nn.Module, target: float):
    x = torch.ones(8, 4)

    def loss() -> torch.Tensor:
        return ((model(x) - target) ** 2).mean()

    return loss


def test_keep_best_returns_the_initial_state_when_training_only_hurts() -> None:
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # the loss pulls the output to 5, the held-out score rewards an output near its start
    x = torch.ones(1, 4)
    origin = float(model(x).detach())

    def score() -> dict[str, float]:
        with torch.no_grad():
            return {"closeness": -abs(float(model(x)) - origin)}

    run = train_within_budget(
        model,
        _loss_towards(model, 5.0),
        evaluate=score,
        key="closeness",
        minutes=0.01,
        lr=0.1,
        eval_steps=2,
        log_every=0,
    )
    assert run.steps > 2 and run.best_step == 0
    assert len(run.history) >= 2 and run.history[-1]["closeness"] < run.initial["closeness"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, start[k])
    assert run.final == run.initial


def test_keep_best_keeps_an_improving_state_and_no_evaluate_keeps_the_last() -> None:
    model = _model()
    x = torch.ones(1, 4)

    def score() -> dict[str, float]:
        with torch.no_grad():
            return {"closeness": -abs(float(model(x)) - 5.0)}

    run = train_within_budget(
        model, _loss_towards(model, 5.0), evaluate=score, key="closeness", minutes=0.01, lr=0.1
    )
    assert run.best_step > 0 and run.final["closeness"] > run.initial["closeness"]

    plain = _model()
    before = float(plain(x).detach())
    last = train_within_budget(plain, _loss_towards(plain, 5.0), minutes=0.005, lr=0.1)
    assert last.initial == last.final == {} and last.best_step == last.steps > 0
    assert abs(float(plain(x).detach()) - 5.0) < abs(before - 5.0)


def test_bad_arguments_and_the_learning_rate_schedule() -> None:
    model = _model()
    with pytest.raises(ValueError, match="minutes"):
        train_within_budget(model, _loss_towards(model, 1.0), minutes=0, lr=0.1)
    with pytest.raises(ValueError, match="key"):
        train_within_budget(model, _loss_towards(model, 1.0), evaluate=dict, minutes=0.01, lr=0.1)
    assert cosine_lr(1.0, 0.0, 0.05) == pytest.approx(1.0)
    assert cosine_lr(1.0, 1.0, 0.05) == pytest.approx(0.05)
    assert cosine_lr(1.0, 2.0, 0.02) == pytest.approx(0.02)


def test_max_steps_ends_the_run_and_sets_the_schedule() -> None:
    """With ``max_steps`` and no time limit the run takes exactly that many steps, and the
    learning rate falls with the share of the steps (to the floor at the last one)."""
    model = _model()
    loss = _loss_towards(model, 3.0)
    shares: list[float] = []
    run = train_within_budget(
        model, loss, minutes=math.inf, max_steps=7, lr=0.1, progress=shares.append, log_every=0
    )
    assert run.steps == run.best_step == 7
    assert shares == pytest.approx([k / 7 for k in range(1, 8)])
    assert math.isfinite(run.final_loss) and run.final_loss > 0
    with pytest.raises(ValueError, match="max_steps"):
        train_within_budget(model, loss, minutes=math.inf, lr=0.1)
    with pytest.raises(ValueError, match="max_steps"):
        train_within_budget(model, loss, minutes=1.0, max_steps=0, lr=0.1)


def test_keep_best_scores_the_last_of_max_steps() -> None:
    model = _model()
    calls: list[int] = []

    def score() -> dict[str, float]:
        calls.append(1)
        return {"closeness": -abs(float(model(torch.ones(1, 4)).detach()) - 3.0)}

    run = train_within_budget(
        model,
        _loss_towards(model, 3.0),
        evaluate=score,
        key="closeness",
        minutes=math.inf,
        max_steps=5,
        eval_steps=2,
        lr=0.1,
        log_every=0,
    )
    # before training, at steps 2, 4 and the last (5), and once more on the kept state
    assert [h["step"] for h in run.history] == [0.0, 2.0, 4.0, 5.0] and len(calls) == 5
    assert run.best_step == 5 and run.final["closeness"] > run.initial["closeness"]
