"""The toy games' closed forms, checked independently of the solvers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.optimize
import torch

from stackelberg.games import toys

F64 = torch.float64


def reduced_objective(game, w: torch.Tensor, best_response) -> torch.Tensor:
    theta = best_response(w)
    return game.leader_loss(lambda: w, lambda: theta, None)


def test_t1_instance_matches_design_and_is_stationary() -> None:
    game = toys.QuadraticGame.instance(dtype=F64)
    solution = game.solution()
    assert solution.leader.tolist() == pytest.approx([0.150846, 1.557518], abs=1e-6)
    w = solution.leader.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(reduced_objective(game, w, game.best_response), w)
    assert torch.linalg.norm(grad) < 1e-12
    # The follower's gradient vanishes at its best response.
    theta = solution.follower.clone().requires_grad_(True)
    h = game.follower_loss(lambda: solution.leader, lambda: theta, None)
    assert torch.linalg.norm(torch.autograd.grad(h, theta)[0]) < 1e-12


def test_t1_random_family_has_the_requested_conditioning_and_a_minimum() -> None:
    game = toys.QuadraticGame.random(30, condition_number=50.0, seed=4, dtype=F64)
    eigenvalues = torch.linalg.eigvalsh(game.A)
    assert float(eigenvalues.max() / eigenvalues.min()) == pytest.approx(50.0, rel=1e-8)
    solution = game.solution()

    def objective(w: np.ndarray) -> float:
        return float(reduced_objective(game, torch.from_numpy(w), game.best_response))

    result = scipy.optimize.minimize(
        objective, np.zeros(30), method="BFGS", options={"gtol": 1e-10}
    )
    assert np.allclose(result.x, solution.leader.numpy(), atol=1e-5)
    assert objective(solution.leader.numpy()) <= result.fun + 1e-12
    same = toys.QuadraticGame.random(30, condition_number=50.0, seed=4, dtype=F64)
    assert torch.equal(same.B, game.B)


@pytest.mark.parametrize("beta", [0.5, 2.0, -1.0])
def test_t2_stackelberg_and_nash_points(beta: float) -> None:
    game = toys.StackelbergVsNashGame(beta=beta, dtype=F64)
    solution = game.solution()
    result = scipy.optimize.minimize_scalar(
        lambda w: 0.5 * (w - 1) ** 2 + 0.5 * (beta * w - 2) ** 2
    )
    assert float(solution.leader) == pytest.approx(result.x, abs=1e-6)
    assert float(solution.follower) == pytest.approx(beta * result.x, abs=1e-6)
    if beta == 0.5:
        assert (float(solution.leader), float(solution.follower)) == pytest.approx((1.6, 0.8))
        assert solution.leader_loss == pytest.approx(0.9)
    nash = game.nash()
    assert (float(nash.leader), float(nash.follower)) == pytest.approx((1.0, beta))


def test_t3_solution_is_feasible_and_optimal() -> None:
    game = toys.NonSingletonGame(dtype=F64)
    solution = game.solution()
    theta = solution.follower
    assert float(game.leader_loss(lambda: solution.leader, lambda: theta, None)) == 0.0
    # θ₁ = w minimizes h(w, ·) whatever θ₂ is.
    theta_var = theta.clone().requires_grad_(True)
    h = game.follower_loss(lambda: solution.leader, lambda: theta_var, None)
    assert torch.linalg.norm(torch.autograd.grad(h, theta_var)[0]) == 0.0


def test_t4_solution_reaches_zero_leader_loss() -> None:
    game = toys.HyperparameterGame(dtype=F64)
    solution = game.solution()
    assert solution.leader.tolist() == pytest.approx([0.0, np.log(2.0)])
    best = game.u / (1 + torch.exp(solution.leader))
    assert torch.allclose(best, game.v)


def test_t5_solution_beats_every_corner_of_the_box() -> None:
    game = toys.BoxPoisoningGame.random(n=6, dim=4, epsilon=0.2, seed=5, dtype=F64)
    solution = game.solution()
    mean = game.x.mean(dim=0)

    def value(delta_mean: torch.Tensor) -> float:
        theta = (mean + delta_mean) / (1 + game.ridge)
        return float(0.5 * torch.sum((theta - game.mu) ** 2))

    best = max(
        value(0.2 * torch.tensor(signs, dtype=F64))
        for signs in itertools.product((-1.0, 1.0), repeat=4)
    )
    assert -solution.leader_loss == pytest.approx(best)
    assert solution.leader.abs().max() == pytest.approx(0.2)


def test_duopoly_best_response_and_equilibria() -> None:
    a, b, c = 12.0, 2.0, 2.0
    game = toys.DuopolyGame(a, b, c, dtype=F64)
    solution = game.solution()

    def best_response(q1: float) -> float:
        return scipy.optimize.minimize_scalar(lambda q2: -q2 * (a - b * (q1 + q2) - c), tol=1e-12).x

    assert float(solution.follower) == pytest.approx(
        best_response(float(solution.leader)), abs=1e-6
    )
    for q1 in (0.0, 1.0, 3.0):  # the best response the closed form rests on
        assert best_response(q1) == pytest.approx((a - c - b * q1) / (2 * b), abs=1e-6)
    leader = scipy.optimize.minimize_scalar(
        lambda q1: -q1 * (a - b * (q1 + (a - c - b * q1) / (2 * b)) - c)
    )
    assert float(solution.leader) == pytest.approx(leader.x, abs=1e-6)
    nash = game.nash()
    assert float(nash.follower) == pytest.approx(best_response(float(nash.leader)), abs=1e-6)
    # The leader earns more at the Stackelberg point than at Cournot–Nash.
    assert solution.leader_loss < nash.leader_loss
