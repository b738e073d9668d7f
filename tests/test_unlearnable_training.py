"""Generator training on the unlearnable-example game: BOME's shared generator pass and its
device reads, every solver's training step, checkpoints and exact resume, quick tests."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gue_helpers import batch, small_game
from torch.nn import functional as F

import stackelberg as sg
from stackelberg.data import ImageDataset
from stackelberg.models import ConvNet
from stackelberg.solvers import CG
from stackelberg.unlearnable import (
    UnlearnableGame,
)
from stackelberg.unlearnable.export import calibrate_batchnorm
from stackelberg.unlearnable.training import GeneratorTraining, TrainingConfig
from stackelberg.unlearnable.victim import VictimSchedule

# -- solvers on the game --------------------------------------------------------------------


def _bome(game: UnlearnableGame) -> sg.BOME:
    return sg.BOME(
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=0.01),
        inner_steps=3,
        inner_lr=1e-2,
        inner_optimizer="adam",
        eta=1.5,
    )


def _old_bome_direction(game: UnlearnableGame, data, inner_steps: int, inner_lr: float, eta: float):
    """The BOME direction as the solver computed it before the generator pass was shared
    (written out by hand): the generator runs again inside every inner step and once more for
    each of h(w, θ) and h(w, θ^T), and ∇q̂ comes from two separate generator backward passes."""
    w, theta = list(game.leader.parameters()), list(game.follower.parameters())
    generator, classifier = game.leader, game.follower
    x, y = data

    def h(params):
        return F.cross_entropy(
            torch.func.functional_call(classifier, params, (game.poison(generator, x),)), y
        )

    names = [n for n, _ in classifier.named_parameters()]
    inner = [p.detach().clone().requires_grad_(True) for p in theta]
    optimizer = torch.optim.Adam(inner, lr=inner_lr)
    for _ in range(inner_steps):
        with torch.no_grad():
            poisoned = game.poison(generator, x)
        loss = F.cross_entropy(
            torch.func.functional_call(
                classifier, dict(zip(names, inner, strict=True)), (poisoned,)
            ),
            y,
        )
        grads = torch.autograd.grad(loss, inner)
        for p, g in zip(inner, grads, strict=True):
            p.grad = g
        optimizer.step()
    theta_T = {n: p.detach() for n, p in zip(names, inner, strict=True)}
    leader_loss = game.leader_loss(generator, classifier, data)
    grad_l = torch.autograd.grad(leader_loss, w + theta, allow_unused=True)
    grad_l = [
        torch.zeros_like(p) if g is None else g for g, p in zip(grad_l, w + theta, strict=True)
    ]
    h_w = torch.autograd.grad(h(dict(zip(names, theta, strict=True))), w + theta)
    h_T_w = torch.autograd.grad(h(theta_T), w, allow_unused=True)
    grad_q = [a - b for a, b in zip(h_w[: len(w)], h_T_w, strict=True)] + list(h_w[len(w) :])
    dot = sum((a * b).sum() for a, b in zip(grad_l, grad_q, strict=True))
    norm_sq = sum((b * b).sum() for b in grad_q)
    lam = torch.clamp((eta * norm_sq - dot) / (norm_sq + 1e-12), min=0.0)
    return [a + lam * b for a, b in zip(grad_l, grad_q, strict=True)]


def test_bome_step_runs_the_generator_once_and_equals_the_old_formula() -> None:
    torch.manual_seed(0)
    game = small_game().double()
    data = batch(16)
    data = (data[0].double(), data[1])
    calls = {"forward": 0, "backward": 0}

    def forward_hook(*_):
        calls["forward"] += 1

    def backward_hook(grad):
        calls["backward"] += 1  # once per backward pass that reaches the generator's weights
        return grad

    handles = [
        game.leader.register_forward_hook(forward_hook),
        next(game.leader.parameters()).register_hook(backward_hook),
    ]
    state = {k: v.clone() for k, v in game.state_dict().items()}
    leader_d, follower_d, info = _bome(game).direction(data)
    for handle in handles:
        handle.remove()
    assert calls == {"forward": 1, "backward": 1}
    assert info["lambda"] > 0  # the barrier is active, so ∇_w q̂ reaches the generator
    game.load_state_dict(state)
    expected = _old_bome_direction(game, data, inner_steps=3, inner_lr=1e-2, eta=1.5)
    got = list(leader_d) + list(follower_d)
    assert sum(float(d.abs().sum()) for d in leader_d) > 0
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["bome", "backgradient", "total_gradient", "gda"])
def test_every_solver_takes_a_training_step(solver: str) -> None:
    game = small_game()
    x, y = batch(16)
    train = ImageDataset((x * 255).round().to(torch.uint8), y, ("a", "b", "c", "d"))
    options = {"inner_steps": 2} if solver == "bome" else {}
    config = TrainingConfig(
        epochs=1, batch_size=8, solver=solver, solver_options=options, log_every=1
    )
    training = GeneratorTraining(game, config, train)
    players = (game.leader, game.follower)
    before = [[p.detach().clone() for p in player.parameters()] for player in players]
    history = training.run(progress=False)
    assert len(history) == 2 and all(np.isfinite(h["clean_accuracy"]) for h in history)
    assert training.solver.steps_taken == 2
    moved = [
        any(not torch.equal(a, b) for a, b in zip(saved, player.parameters(), strict=True))
        for player, saved in zip(players, before, strict=True)
    ]
    # GDA's leader descends ∇_w l, and the standard game's l (the follower's loss on clean
    # data) depends on the generator only through the follower's response, which GDA ignores:
    # its generator never moves. Every bilevel solver moves both players.
    assert moved == [solver != "gda", True]


# -- training: checkpoints and resume ----------------------------------------------------------


def _training(
    run_dir: Path,
    epochs: int,
    seed: int = 0,
    solver: str = "bome",
    solver_options: dict | None = None,
) -> GeneratorTraining:
    game = small_game(seed=seed)
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (48, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(48) % 4
    train = ImageDataset(images, labels, ("a", "b", "c", "d"))
    validation = ImageDataset(images[:16], labels[:16], train.classes)
    config = TrainingConfig(
        epochs=epochs,
        batch_size=16,
        solver=solver,
        solver_options={"inner_steps": 2} if solver_options is None else solver_options,
        log_every=1,
        quick_test_every=1,
        quick_test=VictimSchedule.scaled(1, lr=0.05, batch_size=16),
    )
    return GeneratorTraining(
        game,
        config,
        train,
        validation=validation,
        victim_factory=lambda: ConvNet(3, 4, widths=(4,)),
        run_dir=run_dir,
    )


@pytest.mark.parametrize(
    ("solver", "options"),
    [("bome", None), ("total_gradient", {"linear_solver": CG(max_iterations=2)})],  # v carried
)
def test_resume_after_interrupt_reproduces_the_uninterrupted_run_exactly(
    tmp_path: Path, solver: str, options: dict | None
) -> None:
    torch.manual_seed(123)
    whole = _training(tmp_path / "whole", epochs=3, solver=solver, solver_options=options)
    whole.run(progress=False)

    torch.manual_seed(123)
    first = _training(tmp_path / "split", epochs=1, solver=solver, solver_options=options)
    first.run(progress=False)  # "interrupted" after epoch 1: only its checkpoint survives
    torch.manual_seed(999)  # the new process starts from another RNG state
    # fresh weights, overwritten
    second = _training(tmp_path / "split", epochs=3, seed=7, solver=solver, solver_options=options)
    assert second.resume() and second.epoch == 1
    second.run(progress=False)

    for a, b in zip(
        whole.game.state_dict().values(), second.game.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert whole.history == second.history
    assert whole.quick_tests == second.quick_tests
    assert whole.best_epoch == second.best_epoch


def test_each_epoch_leaves_the_generator_calibrated_on_the_training_images(
    tmp_path: Path,
) -> None:
    training = _training(tmp_path, epochs=1)
    training.run(progress=False)
    generator = training.game.leader
    expected = copy.deepcopy(generator)
    calibrate_batchnorm(expected, training.train.images)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["generator"]
    for key, value in expected.state_dict().items():
        assert torch.equal(generator.state_dict()[key], value), key
        assert torch.equal(saved[key], value), key
    assert int(generator.head[1].num_batches_tracked) == 1  # one pass of 48 images


def test_checkpoints_load_with_weights_only_and_refuse_other_settings(tmp_path: Path) -> None:
    training = _training(tmp_path, epochs=1)
    training.run(progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and "generator" in state
    assert (tmp_path / "training.json").is_file()
    other = _training(tmp_path, epochs=2)
    other.config = dataclasses.replace(other.config, generator_lr=0.5)
    with pytest.raises(ValueError, match=r"other settings: generator_lr \(0\.1 → 0\.5\)"):
        other.resume()
    other = _training(tmp_path, epochs=2, solver_options={"inner_steps": 3})
    with pytest.raises(ValueError, match=r"other settings: solver_options\.inner_steps \(2 → 3\)"):
        other.resume()
    # The same options spelled out in full are the same settings.
    spelled = {**sg.solvers.options_for("bome", inner_steps=2).to_dict(), "inner_lr": 1e-4}
    spelled |= {"inner_optimizer": "adam", "eta": 1.5}
    assert _training(tmp_path, epochs=2, solver_options=spelled).resume()


def test_checkpoints_written_before_solver_state_dicts_still_resume(tmp_path: Path) -> None:
    training = _training(tmp_path, epochs=1)
    training.run(progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    solver_state = state.pop("solver")
    torch.save({**state, "solver_steps": solver_state["steps_taken"]}, tmp_path / "checkpoint.pt")
    resumed = _training(tmp_path, epochs=2)
    assert resumed.resume() and resumed.solver.steps_taken == training.solver.steps_taken > 0


def test_quick_test_keeps_the_generator_with_the_lowest_validation_accuracy(tmp_path: Path) -> None:
    training = _training(tmp_path, epochs=3)
    training.run(progress=False)
    scores = [t["validation_accuracy"] for t in training.quick_tests]
    assert training.best_score == min(scores)
    assert training.best_epoch == 1 + scores.index(min(scores))
    assert training.use_best_generator() == training.best_epoch
    for key, value in training.game.leader.state_dict().items():
        assert torch.equal(value, training.best_generator[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bome_inner_loop_never_waits_on_the_cuda_device() -> None:
    game = small_game().to("cuda")
    solver = _bome(game)
    data = tuple(t.to("cuda") for t in batch(16))
    w = tuple(p.detach() for p in solver.leader_params())
    inner_batch = solver.fixed_leader_batch(w, data)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        theta_T = solver.inner_solution(data, inner_batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.is_cuda for t in theta_T)
    info = solver.step(data)  # the whole step, with its one read-back, still works
    assert math.isfinite(info["q"])


def test_the_training_config_holds_its_solver_option_record_built_once() -> None:
    from stackelberg.solvers import BOMEOptions
    from stackelberg.unlearnable.training import GUE_SOLVER_OPTIONS

    config = TrainingConfig(solver="bome", solver_options={"inner_steps": 2})
    assert isinstance(config.solver_options, BOMEOptions)
    assert config.options == GUE_SOLVER_OPTIONS["bome"].replace(inner_steps=2)
    # Its dict form (what checkpoints store) reads back to the same config.
    assert TrainingConfig(**config.to_dict()) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="BackGradient takes BackGradientOptions, got BOMEOptions"):
        dataclasses.replace(config, solver="backgradient")
    with pytest.raises(TypeError, match="BOME got unknown option 'inner_step'"):
        TrainingConfig(solver_options={"inner_step": 2})


def test_another_solver_keeps_the_options_that_apply_and_names_the_dropped() -> None:
    from stackelberg.unlearnable.training import GUE_SOLVER_OPTIONS

    config = TrainingConfig(solver="bome", solver_options={"inner_steps": 2, "eta": 3.0})
    moved, kept, dropped = config.with_solver("backgradient")
    assert (kept, dropped) == ({"inner_steps": 2}, ["eta"])
    assert moved.solver == "backgradient"
    assert moved.options == GUE_SOLVER_OPTIONS["backgradient"].replace(inner_steps=2)
    assert config.with_solver("bome") == (config, {}, [])
