"""Every solver reaches the closed-form Stackelberg solution of the toy games (float64, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_solver, relative_error

import stackelberg as sg
from stackelberg.games import toys
from stackelberg.solvers import CG, LinearSolver, NormalCG

F64 = torch.float64
GAMES = {
    "T1": lambda: toys.QuadraticGame.instance(dtype=F64),
    "T2": lambda: toys.StackelbergVsNashGame(dtype=F64),
    "T4": lambda: toys.HyperparameterGame(dtype=F64),
    "duopoly": lambda: toys.DuopolyGame(dtype=F64),
}
# (solver options, leader lr, follower lr, steps). BOME's fixed point moves with the step
# size (an O(lr) bias) and with the inner solution's accuracy ((1 − α·μ)^T), hence the small
# outer lr and an inner loop that nearly converges.
SETTINGS = {
    "BOME": ({"inner_steps": 30, "inner_lr": 0.5}, 0.05, 0.05, 1500),
    "TotalGradient": ({}, 0.1, 0.5, 400),
    "BackGradient": ({"inner_steps": 40, "inner_lr": 0.4}, 0.1, 0.5, 400),
    "SOBA": ({}, 0.1, 0.5, 400),  # single loop: one follower, v and leader step per outer step
    "SABA": ({}, 0.1, 0.5, 400),  # without data one block: SOBA's path
    # λ grows to 1 000 by step 100: the penalty's O(1/λ) bias is then about 1e-3 of w*.
    "F2SA": (
        {"inner_steps": 10, "inner_lr": 0.5, "lambda_growth": 10.0, "lambda_max": 1000.0},
        0.1,
        0.5,
        400,
    ),
}
TOLERANCE = {
    "BOME": 1e-2,
    "TotalGradient": 1e-4,
    "BackGradient": 1e-4,
    "SOBA": 1e-4,
    "SABA": 1e-4,
    "F2SA": 1e-3,
}
#: Solvers whose runs take seconds each (BOME's 1 500 steps of 30 inner steps, BackGradient's
#: 40-step unrolls): marked slow, run by CI beside the quick set.
SLOW_SOLVERS = {"BOME", "BackGradient", "F2SA"}


def _solvers(names: list[str]) -> list[object]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SOLVERS else n for n in names]


def _solve(name: str, game: sg.Game) -> sg.Game:
    options, leader_lr, follower_lr, steps = SETTINGS[name]
    solver = make_solver(name, game, leader_lr, follower_lr, **options)
    sg.solve(game, solver, None, steps, progress=False)
    return game


@pytest.mark.parametrize("game_name", list(GAMES))
@pytest.mark.parametrize("solver_name", _solvers(list(SETTINGS)))
def test_leader_reaches_the_closed_form(solver_name: str, game_name: str) -> None:
    game = _solve(solver_name, GAMES[game_name]())
    expected = game.solution()
    tolerance = 1e-2 if game_name == "duopoly" else TOLERANCE[solver_name]
    assert relative_error(game.leader.value, expected.leader) < tolerance
    assert relative_error(game.follower.value, expected.follower) < 10 * tolerance


def test_gda_ends_at_the_nash_point_not_the_stackelberg_one() -> None:
    game = toys.StackelbergVsNashGame(beta=0.5, dtype=F64)
    sg.solve(game, make_solver("GDA", game), None, 500, progress=False)
    nash, stackelberg = game.nash(), game.solution()
    assert float(game.leader.value.detach()) == pytest.approx(1.0, abs=1e-8)
    assert float(game.follower.value.detach()) == pytest.approx(0.5, abs=1e-8)
    assert relative_error(game.leader.value, stackelberg.leader) > 0.3
    # The leader is strictly worse off at the Nash point: what the other solvers buy.
    assert nash.leader_loss > stackelberg.leader_loss + 0.2


@pytest.mark.parametrize("alternating", [False, True])
def test_gda_duopoly_ends_at_cournot(alternating: bool) -> None:
    game = toys.DuopolyGame(dtype=F64)
    solver = make_solver("GDA", game, 0.1, 0.1, alternating=alternating)
    sg.solve(game, solver, None, 500, progress=False)
    nash = game.nash()
    assert relative_error(game.leader.value, nash.leader) < 1e-6
    assert relative_error(game.follower.value, nash.follower) < 1e-6


@pytest.mark.slow
def test_bome_converges_on_the_non_singleton_game() -> None:
    game = toys.NonSingletonGame(dtype=F64)
    solver = make_solver("BOME", game, 0.05, 0.05, inner_steps=30, inner_lr=0.5)
    history = sg.solve(game, solver, None, 2000, progress=False)
    assert abs(float(game.leader.value.detach()) - 1.0) < 1e-2
    assert torch.allclose(game.follower.value, torch.ones(2, dtype=F64), atol=2e-2)
    assert history[-1]["leader_loss"] < 1e-3


@pytest.mark.parametrize("linear_solver", [CG(), NormalCG()], ids=str)
def test_total_gradient_with_damping_stays_finite_on_a_singular_hessian(
    linear_solver: LinearSolver,
) -> None:
    game = toys.NonSingletonGame(dtype=F64, follower_init=[0.0, 0.5])
    solver = make_solver("TotalGradient", game, 0.1, 0.5, linear_solver=linear_solver, damping=1e-2)
    history = sg.solve(game, solver, None, 300, progress=False)
    assert all(math.isfinite(v) for info in history for v in info.values())
    # θ₂ gets no gradient from h, so it stays put; the leader settles where its damped
    # implicit gradient (w − θ₂) + (θ₁ − 1)/(1 + μ) vanishes with θ₁ = w.
    mu, theta2 = 1e-2, 0.5
    w_fixed = (theta2 + 1 / (1 + mu)) / (1 + 1 / (1 + mu))
    assert float(game.leader.value.detach()) == pytest.approx(w_fixed, abs=1e-6)


@pytest.mark.parametrize("solver_name", _solvers(["BOME", "TotalGradient", "BackGradient"]))
def test_projected_poisoning_reaches_the_box_corner(solver_name: str) -> None:
    game = toys.BoxPoisoningGame.random(n=8, dim=3, epsilon=0.1, seed=1, dtype=F64)
    options, _, follower_lr, _ = SETTINGS[solver_name]
    solver = make_solver(solver_name, game, 0.5, follower_lr, **options)
    sg.solve(game, solver, None, 300, progress=False)
    expected = game.solution()
    assert game.leader.value.abs().max() <= 0.1 + 1e-12
    assert torch.allclose(game.leader.value, expected.leader, atol=1e-6)
