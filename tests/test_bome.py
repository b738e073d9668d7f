"""BOME's q, λ, φ and direction against a hand computation on toy T2."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_solver

from stackelberg.games import toys

F64 = torch.float64


def hand_computed_bome(w: float, theta: float, beta: float, alpha: float, eta: float, phi: str):
    """One BOME step on T2 with T = 1 inner SGD step, by hand.

    h = ½(θ − βw)², l = ½(w − 1)² + ½(θ − 2)².
    """
    theta_T = theta - alpha * (theta - beta * w)
    q = 0.5 * (theta - beta * w) ** 2 - 0.5 * (theta_T - beta * w) ** 2
    grad_q = (-beta * (theta - beta * w) + beta * (theta_T - beta * w), theta - beta * w)
    grad_l = (w - 1.0, theta - 2.0)
    dot = grad_l[0] * grad_q[0] + grad_l[1] * grad_q[1]
    norm_sq = grad_q[0] ** 2 + grad_q[1] ** 2
    phi_value = eta * norm_sq if phi == "grad_norm" else eta * q
    lam = max((phi_value - dot) / norm_sq, 0.0)
    direction = (grad_l[0] + lam * grad_q[0], grad_l[1] + lam * grad_q[1])
    return {
        "q": q,
        "lambda": lam,
        "phi": phi_value,
        "grad_dot": dot,
        "grad_q_norm": math.sqrt(norm_sq),
        "leader_loss": 0.5 * (w - 1) ** 2 + 0.5 * (theta - 2) ** 2,
        "follower_loss": 0.5 * (theta - beta * w) ** 2,
        "direction": direction,
    }


@pytest.mark.parametrize("phi", ["grad_norm", "value"])
@pytest.mark.parametrize(("w", "theta"), [(0.3, 1.7), (2.0, -0.5), (1.6, 0.81)])
def test_one_step_matches_hand_computation(phi: str, w: float, theta: float) -> None:
    beta, alpha, eta, lr = 0.5, 0.3, 0.7, 0.05
    game = toys.StackelbergVsNashGame(beta=beta, dtype=F64, leader_init=w, follower_init=theta)
    solver = make_solver(
        "BOME", game, lr, lr, inner_steps=1, inner_lr=alpha, eta=eta, phi=phi, delta=1e-300
    )
    info = solver.step()
    expected = hand_computed_bome(w, theta, beta, alpha, eta, phi)
    for key in ("q", "lambda", "phi", "grad_dot", "grad_q_norm", "leader_loss", "follower_loss"):
        assert info[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    d_w, d_theta = expected["direction"]
    assert float(game.leader.value.detach()) == pytest.approx(w - lr * d_w, rel=1e-12)
    assert float(game.follower.value.detach()) == pytest.approx(theta - lr * d_theta, rel=1e-12)


def test_lambda_is_clamped_at_zero_when_the_leader_already_descends_q() -> None:
    # ∇l and ∇q aligned: ⟨∇l, ∇q⟩ > φ, so λ = 0 and d = ∇l.
    game = toys.StackelbergVsNashGame(beta=0.5, dtype=F64, leader_init=0.0, follower_init=5.0)
    solver = make_solver("BOME", game, inner_steps=1, inner_lr=0.3, eta=0.1)
    info = solver.step()
    expected = hand_computed_bome(0.0, 5.0, 0.5, 0.3, 0.1, "grad_norm")
    assert expected["lambda"] == 0.0
    assert info["lambda"] == 0.0


@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
def test_direction_decreases_q_at_rate_phi(inner_optimizer: str) -> None:
    """The barrier guarantees ⟨d, ∇q̂⟩ ≥ φ (Liu et al. 2022, eq. 6)."""
    game = toys.QuadraticGame.random(8, seed=2, dtype=F64, follower_init=torch.ones(8))
    solver = make_solver("BOME", game, inner_steps=5, inner_lr=0.1, inner_optimizer=inner_optimizer)
    leader_d, follower_d, info = solver.direction(None)
    theta_T = solver.inner_solution(None)
    w, theta = solver.leader_params(), solver.follower_params()
    q = solver.follower_loss(w, theta, None) - solver.follower_loss(w, theta_T, None)
    grad_q = torch.autograd.grad(q, w + theta)
    rate = sum(float(torch.sum(d * g)) for d, g in zip(leader_d + follower_d, grad_q, strict=True))
    assert rate >= info["phi"] * (1 - 1e-10)
    assert info["q"] > 0


def test_adam_inner_loop_reaches_a_lower_follower_loss_than_no_steps() -> None:
    game = toys.QuadraticGame.instance(dtype=F64)
    solver = make_solver("BOME", game, inner_steps=50, inner_lr=0.05, inner_optimizer="adam")
    theta_T = solver.inner_solution(None)
    w = solver.leader_params()
    after = solver.follower_loss(w, theta_T, None).detach()
    before = solver.follower_loss(w, solver.follower_params(), None).detach()
    assert after < before
